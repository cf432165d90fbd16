"""Run one vLLM measurement in a fresh Python process that writes its result as JSON.

A configuration that vLLM refuses or that crashes comes back as an error (the telling lines of its log)
instead of taking the caller down; per-run environment (thread binding, log level) does not leak.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_isolated(
    command_for: Callable[[Path], list[str]], env: dict[str, str], timeout_s: float
) -> tuple[dict[str, Any] | None, str]:
    """Run ``command_for(result_path)``; return ``(parsed result, "")`` or ``(None, reason)``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        try:
            done = subprocess.run(
                command_for(out), env=env, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout_s:.0f} s"
        if done.returncode == 0 and out.exists():
            return json.loads(out.read_text()), ""
        return None, root_cause(done.stderr + done.stdout)


def root_cause(log: str) -> str:
    """The most telling error lines of a failed vLLM run (the assertion or validation message)."""
    lines = [line.split("] ", 1)[-1].strip() for line in log.splitlines()]
    markers = ("Error", "error:", "assert", "must be divisible", "Not enough")
    hits = [line for line in lines if any(m in line for m in markers) and not line.startswith("File ")]
    unique = list(dict.fromkeys(hits))
    return "\n".join(unique[-6:]) or "\n".join(lines[-10:])
