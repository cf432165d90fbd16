"""Where the workshop keeps its files: models, logs and state live under the project folder."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

LAB_MODEL_NAME = "SmolLM2-135M-Instruct"


def project_root(env: Mapping[str, str] | None = None) -> Path:
    """The repository root (``LAB_HOME`` overrides it)."""
    env = os.environ if env is None else env
    if env.get("LAB_HOME"):
        return Path(env["LAB_HOME"]).expanduser().resolve()
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    """Folder holding prepared models (``LAB_MODELS_DIR`` overrides it)."""
    env = os.environ if env is None else env
    if env.get("LAB_MODELS_DIR"):
        return Path(env["LAB_MODELS_DIR"]).expanduser().resolve()
    return project_root(env) / "models"


def default_model_dir(env: Mapping[str, str] | None = None) -> Path:
    """The CPU lane's model folder."""
    return models_dir(env) / LAB_MODEL_NAME


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Folder for logs and run state (server logs, gateway data); created on demand."""
    path = project_root(env) / ".lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_log(kind: str) -> Path:
    """A new log file for one run of ``kind`` (``engine``, ``parallel``, ...): ``.lab/logs/KIND-TIME-PID.log``
    under the project folder."""
    return state_dir() / "logs" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
