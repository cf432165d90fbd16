"""Lane settings: one place that turns the environment into vLLM engine and server arguments.

The same notebooks run on the CPU lane (default, CI) and on a GPU box; these variables switch them:

- ``LAB_DEVICE``: ``cpu`` or ``cuda`` (default: detected from the installed vLLM build).
- ``LAB_MODEL``: a local folder or a Hugging Face hub id (default: the prepared SmolLM2-135M-Instruct).
- ``LAB_DTYPE``, ``LAB_MAX_MODEL_LEN``: override the lane defaults.
- ``LAB_SCALE``: multiplies experiment sizes (1 on the CPU lane, 8 on a GPU by default).
- ``VLLM_CPU_KVCACHE_SPACE``: GiB of KV cache on the CPU lane (default 2).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from vllm_workshop.paths import default_model_dir

DEVICES = ("cpu", "cuda")


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def detect_device(env: Mapping[str, str] | None = None) -> str:
    """Return the lane's device: ``LAB_DEVICE`` if set, else what the installed vLLM build targets."""
    env = os.environ if env is None else env
    asked = env.get("LAB_DEVICE", "").strip().lower()
    if asked:
        if asked not in DEVICES:
            raise ValueError(f"LAB_DEVICE={asked!r} is not one of {', '.join(DEVICES)}")
        return asked
    if _installed("vllm-cpu"):
        return "cpu"
    if _installed("vllm") and shutil.which("nvidia-smi"):
        return "cuda"
    return "cpu"


@dataclass(frozen=True)
class LabSettings:
    """Everything a notebook needs to start vLLM the same way on either lane."""

    device: str
    model: str
    dtype: str
    max_model_len: int
    enforce_eager: bool
    seed: int = 0
    scale: int = 1
    kv_cache_gib: int = 2
    gpu_memory_utilization: float = 0.85
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def model_is_local(self) -> bool:
        """True when the model is a folder on disk rather than a hub id."""
        return Path(self.model).expanduser().exists() or self.model.startswith(("/", ".", "~"))

    def engine_kwargs(self, **overrides: object) -> dict[str, object]:
        """Keyword arguments for ``vllm.LLM(...)``; ``overrides`` win."""
        kwargs: dict[str, object] = {
            "model": self.model,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
        }
        if self.device == "cuda":
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        kwargs.update(overrides)
        return kwargs

    def serve_args(self, **overrides: object) -> list[str]:
        """Command-line flags for ``vllm serve MODEL ...`` built from the same settings."""
        args: list[str] = []
        for key, value in self.engine_kwargs(**overrides).items():
            if key == "model" or value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            args.extend([flag] if value is True else [flag, str(value)])
        return args

    def process_env(self) -> dict[str, str]:
        """Environment for vLLM processes on this lane (KV cache size on the CPU)."""
        env = dict(os.environ)
        env["VLLM_LOGGING_LEVEL"] = env.get("LAB_SERVER_LOG_LEVEL", "INFO")  # servers log their start-up
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.update(self.extra_env)
        return env

    def apply_env(self) -> None:
        """Export the lane's vLLM variables into this process (for in-kernel ``LLM`` engines).

        In-kernel engines log at WARNING unless ``VLLM_LOGGING_LEVEL`` says otherwise, so notebook cells show
        results rather than pages of start-up lines (servers keep INFO in their log files).
        """
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        for key, value in self.process_env().items():
            if key != "VLLM_LOGGING_LEVEL" and os.environ.get(key) != value:
                os.environ[key] = value

    def describe(self) -> str:
        """A short human summary for notebooks."""
        return (
            f"lane={self.device} model={self.model} dtype={self.dtype} "
            f"max_model_len={self.max_model_len} enforce_eager={self.enforce_eager} scale={self.scale}"
        )


def lab_settings(env: Mapping[str, str] | None = None) -> LabSettings:
    """Build the lane settings from the environment (``os.environ`` by default)."""
    env = os.environ if env is None else env
    device = detect_device(env)
    cpu = device == "cpu"
    model = env.get("LAB_MODEL") or str(default_model_dir(env))
    kv = int(env.get("VLLM_CPU_KVCACHE_SPACE", "2"))  # vLLM reads whole GiB
    return LabSettings(
        device=device,
        model=model,
        # float32 on the CPU: without AVX512-BF16, bfloat16 crawls (see FINDINGS).
        dtype=env.get("LAB_DTYPE", "float32" if cpu else "auto"),
        max_model_len=int(env.get("LAB_MAX_MODEL_LEN", "2048" if cpu else "4096")),
        # CUDA graphs and torch.compile pay off on a GPU; on the CPU they cost minutes of start-up.
        enforce_eager=cpu,
        seed=int(env.get("LAB_SEED", "0")),
        scale=int(env.get("LAB_SCALE", "1" if cpu else "8")),
        kv_cache_gib=kv,
    )
