"""Lane settings: one place that turns the environment into vLLM engine and server arguments.

The same notebooks run on the CPU lane (default, CI) and on a GPU box; these variables switch them:

- ``LAB_DEVICE``: ``cpu`` or ``cuda`` (default: detected from the installed vLLM build).
- ``LAB_MODEL``: a local folder or a Hugging Face hub id (default: the prepared SmolLM2-135M-Instruct).
- ``LAB_DTYPE``, ``LAB_MAX_MODEL_LEN``: override the lane defaults.
- ``LAB_SCALE``: multiplies experiment sizes (1 on the CPU lane, 8 on a GPU by default).
- ``VLLM_CPU_KVCACHE_SPACE``: GiB of KV cache on the CPU lane (default 2).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from vllm_workshop.errors import SettingsError
from vllm_workshop.paths import default_model_dir

DEVICES = ("cpu", "cuda")
# A core binding the learner set before the lab was imported wins over the lab's plan (apply_env() later
# exports the lab's own binding into os.environ, which must not then count as the learner's choice).
USER_BINDING = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def installed_build() -> str:
    """Which vLLM build this environment holds, in words (``vllm-cpu 0.32.0``, ``vllm 0.32.0``, ``none``)."""
    found = []
    for dist in ("vllm-cpu", "vllm"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return " + ".join(found) or "none"


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    """An integer lab variable, with an error that names the variable when its value is not one."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not a whole number. Fix: unset {name} or set e.g. {default}."
        ) from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below {minimum}. Fix: unset {name} or set e.g. {default}.")
    return value


def usable_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity), in order."""
    return (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )


# vLLM's own default CPU binding (it keeps a core for its scheduler), which the lane's binding beats.
VLLM_DEFAULT_BINDING = {"VLLM_CPU_OMP_THREADS_BIND": "auto"}


def cpu_binding(replica: int = 0, replicas: int = 1, cores: list[int] | None = None) -> dict[str, str]:
    """vLLM CPU core binding for one of ``replicas`` engines sharing this machine.

    vLLM's default (``VLLM_CPU_OMP_THREADS_BIND=auto``) keeps a core for its scheduler, which on a 2-core
    machine is half of it; and two default servers both bind core 0. Here each replica gets its own share of
    the cores, all of them for compute (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``).
    """
    cores = cores if cores is not None else usable_cores()
    if not 0 <= replica < replicas:
        raise SettingsError(f"replica {replica} of {replicas}: the index must be in 0..{replicas - 1}")
    if replicas > len(cores):
        raise SettingsError(
            f"{replicas} CPU replicas need at least one core each; this machine gives the lab {len(cores)}."
        )
    share = len(cores) // replicas
    mine = cores[replica * share : (replica + 1) * share]
    contiguous = mine == list(range(mine[0], mine[-1] + 1))
    bind = (
        (f"{mine[0]}-{mine[-1]}" if len(mine) > 1 else str(mine[0]))
        if contiguous
        else ",".join(map(str, mine))
    )
    return {"VLLM_CPU_OMP_THREADS_BIND": bind, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def detect_device(env: Mapping[str, str] | None = None) -> str:
    """Return the lane's device: ``LAB_DEVICE`` if set, else what the installed vLLM build targets."""
    env = os.environ if env is None else env
    asked = env.get("LAB_DEVICE", "").strip().lower()
    if asked:
        if asked not in DEVICES:
            raise SettingsError(f"LAB_DEVICE={asked!r} is not one of {', '.join(DEVICES)}")
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
        """Command-line flags for ``vllm serve MODEL ...`` built from the same settings.

        ``True`` becomes ``--flag`` and ``False`` becomes ``--no-flag`` (vLLM's boolean options accept both),
        so switching a default off is never silently dropped.
        """
        args: list[str] = []
        for key, value in self.engine_kwargs(**overrides).items():
            if key == "model" or value is None:
                continue
            name = key.replace("_", "-")
            if isinstance(value, bool):
                args.append(f"--{name}" if value else f"--no-{name}")
            elif isinstance(value, dict):
                args.extend([f"--{name}", json.dumps(value)])
            else:
                args.extend([f"--{name}", str(value)])
        return args

    def check_build(self) -> None:
        """Refuse to start an engine of one lane with the other lane's vLLM build (planning needs neither)."""
        if self.device == "cuda" and _installed("vllm-cpu"):
            raise SettingsError(
                f"LAB_DEVICE=cuda, but this environment holds the CPU build ({installed_build()}). "
                "Fix: `make lab GPU=1`, which installs the CUDA build into its own venv (.venv-gpu)."
            )

    def process_env(self, binding: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for vLLM processes on this lane: KV cache size and core binding on the CPU.

        ``binding`` defaults to :func:`cpu_binding` (all cores, none reserved); pass another replica's share,
        or ``{}`` for vLLM's own ``auto`` binding (tensor-parallel ranks). A binding the learner set wins.
        """
        self.check_build()
        env = dict(os.environ)
        env["VLLM_LOGGING_LEVEL"] = env.get("LAB_SERVER_LOG_LEVEL", "INFO")  # servers log their start-up
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
            env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
            env.pop("VLLM_CPU_NUM_OF_RESERVED_CPU", None)
            if USER_BINDING is not None:
                env["VLLM_CPU_OMP_THREADS_BIND"] = USER_BINDING
                if "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
                    env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"]
            else:
                env.update(cpu_binding() if binding is None else binding)
        env.update(self.extra_env)
        return env

    def apply_env(self, binding: Mapping[str, str] | None = None) -> None:
        """Export the lane's vLLM variables into this process (for in-kernel ``LLM`` engines).

        ``binding`` as in :meth:`process_env` (the engine process reads it when it starts).

        In-kernel engines log at WARNING unless ``VLLM_LOGGING_LEVEL`` says otherwise, so notebook cells show
        results rather than pages of start-up lines (servers keep INFO in their log files).
        """
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env = self.process_env(binding)
        for key in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
            if key not in env:  # a binding left by an earlier engine must not leak into this one
                os.environ.pop(key, None)
        for key, value in env.items():
            if key != "VLLM_LOGGING_LEVEL" and os.environ.get(key) != value:
                os.environ[key] = value

    def model_in_one_process(
        self, binding: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None
    ) -> bool:
        """Whether vLLM may run the model in the process that schedules it (no worker process of its own).

        Only on the CPU lane, with the lane's own all-core binding and one rank: vLLM then binds the OpenMP
        threads of that process, and bound to one core (a replica's share, or vLLM's ``auto``, which keeps a
        core for its scheduler) the scheduler, its I/O threads and the model share it: two one-core replicas
        ran module 9's routing 4x slower that way (418 s against 108 s). ``overrides``: the engine arguments
        (``tensor_parallel_size``, ``pipeline_parallel_size``).
        """
        overrides = overrides or {}
        ranks = int(str(overrides.get("tensor_parallel_size", 1))) * int(
            str(overrides.get("pipeline_parallel_size", 1))
        )
        return self.device == "cpu" and binding is None and USER_BINDING is None and ranks == 1

    def binding_summary(self, binding: Mapping[str, str] | None = None) -> str:
        """The core binding vLLM gets on this lane, in words (notebooks print it next to their numbers)."""
        if self.device != "cpu":
            return "GPU lane: no CPU binding"
        env = self.process_env(binding)
        bind = env.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
        reserved = env.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "vLLM's default")
        return f"cores {bind} for compute, {reserved} reserved (of {len(usable_cores())} usable)"

    def describe(self) -> str:
        """A short human summary for notebooks."""
        return (
            f"lane={self.device} (vLLM build: {installed_build()}) model={self.model} dtype={self.dtype} "
            f"max_model_len={self.max_model_len} enforce_eager={self.enforce_eager} scale={self.scale}"
        )


def lab_settings(env: Mapping[str, str] | None = None) -> LabSettings:
    """Build the lane settings from the environment (``os.environ`` by default)."""
    env = os.environ if env is None else env
    device = detect_device(env)
    cpu = device == "cpu"
    model = env.get("LAB_MODEL") or str(default_model_dir(env))
    kv = env_int(env, "VLLM_CPU_KVCACHE_SPACE", 2)  # vLLM reads whole GiB
    return LabSettings(
        device=device,
        model=model,
        # float32 on the CPU: without AVX512-BF16, bfloat16 crawls (see FINDINGS).
        dtype=env.get("LAB_DTYPE", "float32" if cpu else "auto"),
        max_model_len=env_int(env, "LAB_MAX_MODEL_LEN", 2048 if cpu else 4096, minimum=16),
        # CUDA graphs and torch.compile pay off on a GPU; on the CPU they cost minutes of start-up.
        enforce_eager=cpu,
        seed=env_int(env, "LAB_SEED", 0, minimum=0),
        scale=env_int(env, "LAB_SCALE", 1 if cpu else 8),
        kv_cache_gib=kv,
    )
