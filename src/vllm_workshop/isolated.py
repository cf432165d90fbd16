"""Run vLLM measurements in a fresh Python process that writes its results as JSON.

A configuration that vLLM refuses or that crashes comes back as an error (the telling lines of its log)
instead of taking the caller down; per-run environment (thread binding, log level) does not leak.
:func:`run_isolated` runs one measurement per process; :func:`run_isolated_each` runs several in one process
(importing vLLM costs about 13 s per process here), each with its own engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

PROGRESS = "[lab] "  # a child's progress lines start with this; the rest of its output goes to its log
SPEC_START = "[lab-spec] "  # the child starts the spec named after this (its clock starts)


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
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log)  # vLLM colours its log lines even into a pipe
    lines = [line.split("] ", 1)[-1].strip() for line in plain.splitlines()]
    markers = ("Error", "error:", "assert", "must be divisible", "Not enough")
    hits = [line for line in lines if any(m in line for m in markers) and not line.startswith("File ")]
    unique = list(dict.fromkeys(hits))
    return "\n".join(unique[-6:]) or "\n".join(lines[-10:])


def run_isolated_each(
    command_for: Callable[[Path, Path], list[str]],
    env: dict[str, str],
    specs: Sequence[dict[str, Any]],
    timeout_s: float,
    log: Path,
) -> list[dict[str, Any] | None]:
    """Run ``command_for(spec_path, out_path)`` once for all ``specs`` (dicts with a unique ``name``; the
    child runs :func:`each_spec`). Its progress lines are printed, the rest of its output goes to ``log``.

    Returns one entry per spec: ``{"result": ...}``, ``{"error": reason}`` (a spec past ``timeout_s`` gets
    ``timed out``: its process group is killed), or None for a spec the child never started. Whatever way
    the call ends (an interrupt included), no process of the child's group is left running.
    """
    names = [spec["name"] for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"spec names must be unique: {names}")
    if not specs:
        return []
    log.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, Any] = {"name": None, "at": time.monotonic()}  # the spec running, and since when
    timed_out = False
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "specs.json", Path(tmp) / "results.jsonl"
        spec_path.write_text(json.dumps(list(specs)))
        with log.open("w") as sink:
            process = subprocess.Popen(
                command_for(spec_path, out_path),
                env=env,
                stdout=subprocess.PIPE,
                stderr=sink,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            reader = threading.Thread(target=_relay, args=(process.stdout, sink, current), daemon=True)
            reader.start()
            try:
                while process.poll() is None:
                    if time.monotonic() - current["at"] > timeout_s:
                        timed_out = True
                        break
                    time.sleep(0.2)
            finally:  # the child's engines too, and on an interrupt the child itself
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                reader.join(timeout=10)
        done: dict[str, dict[str, Any]] = {}
        if out_path.exists():
            for line in out_path.read_text().splitlines():
                entry = json.loads(line)
                done[entry.pop("name")] = entry
    if timed_out:
        what = current["name"] or "starting up"
        print(f"... {what}: no result after {timeout_s:.0f} s, stopped (log: {log})", flush=True)
        if current["name"] is not None and current["name"] not in done:
            done[current["name"]] = {"error": f"timed out after {timeout_s:.0f} s"}
    return [done.get(name) for name in names]


def _relay(stream: IO[str], sink: IO[str], current: dict[str, Any]) -> None:
    """Note each spec's start, print the child's progress lines, write the rest (vLLM logs to stdout) to its
    log; it reads to the end whatever happens, so the child never blocks on a full pipe."""
    for line in stream:
        if line.startswith(SPEC_START):
            current.update(name=line[len(SPEC_START) :].rstrip("\n"), at=time.monotonic())
        elif line.startswith(PROGRESS):
            print(line[len(PROGRESS) :], end="", flush=True)
        elif not sink.closed:
            with contextlib.suppress(ValueError):  # closed under a straggler's last line
                sink.write(line)
                sink.flush()


def each_spec(
    spec_path: str, out_path: str, log_path: str, measure: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """(child of :func:`run_isolated_each`) ``measure`` each spec in turn, one JSON line per spec appended
    to ``out_path``; a spec that raised gets the telling lines of what it logged, and the next one runs."""
    log = Path(log_path)
    for spec in json.loads(Path(spec_path).read_text()):
        print(f"{SPEC_START}{spec['name']}", flush=True)
        if spec.get("progress"):
            print(f"{PROGRESS}{spec['progress']}", flush=True)
        start = log.stat().st_size if log.exists() else 0
        entry: dict[str, Any] = {"name": spec["name"]}
        try:
            entry["result"] = measure(spec)
        except Exception as exc:  # refused or failed: keep why, go on with the next
            time.sleep(1)  # the engine's last lines reach the log through the parent's relay
            with log.open(errors="replace") as f:
                f.seek(start)
                entry["error"] = root_cause(f.read() + f"\n{type(exc).__name__}: {exc}")
        with open(out_path, "a") as out:
            out.write(json.dumps(entry) + "\n")
