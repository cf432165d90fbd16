"""Offline inference helpers: start an in-process ``vllm.LLM`` for the lane and read per-request stats."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from vllm_workshop.errors import LabError
from vllm_workshop.model import resolve_model
from vllm_workshop.paths import run_log
from vllm_workshop.server import shown, tail
from vllm_workshop.settings import LabSettings


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` for the duration: processes started meanwhile (vLLM's engine
    core and workers) keep writing there, and this process gets its own output back afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def start_llm(settings: LabSettings, binding: dict[str, str] | None = None, **overrides: Any) -> Any:
    """A ``vllm.LLM`` built from the lane settings, with per-request stats switched on.

    ``binding``: the CPU core binding for this engine (default: the lane's, see ``settings.cpu_binding``).
    vLLM's own output (its engine and worker processes) goes to a file under ``.lab/logs/``, named in one
    line; if the engine fails to start, the error carries the end of that file.
    """
    from vllm import LLM

    settings.apply_env(binding)
    kwargs = settings.engine_kwargs(**overrides)
    kwargs["model"] = resolve_model(str(kwargs["model"]))
    kwargs.setdefault("disable_log_stats", False)  # needed for RequestOutput.metrics
    log = run_log("engine")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    print(f"starting the vLLM engine (vLLM's engine log: {shown(log)}) ...", flush=True)
    started = time.perf_counter()
    try:
        with output_to(log):
            llm = LLM(**kwargs)
    except Exception as exc:
        raise LabError(
            f"The vLLM engine did not start: {type(exc).__name__}: {exc}\n"
            f"--- the end of vLLM's log, {log} ---\n{tail(log)}"
        ) from exc
    print(f"engine ready after {time.perf_counter() - started:.0f} s", flush=True)
    llm.workshop_log = log
    llm.workshop_processes = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and not _is_resource_tracker(p)
    ]
    return llm


def _is_resource_tracker(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker: started with the first engine and shared by the later ones."""
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def close_llm(llm: Any, timeout_s: float = 30) -> None:
    """Shut the engine down and wait for its processes to exit (killing any left after ``timeout_s``), so
    its memory is freed before the next experiment and no process, running or defunct, is left behind."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        with contextlib.suppress(Exception):
            core.shutdown()
    processes = getattr(llm, "workshop_processes", [])
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    multiprocessing.active_children()  # reaps the engine core in multiprocessing's own bookkeeping
    gc.collect()


@dataclass(frozen=True)
class RequestStats:
    """What vLLM measured for one finished request."""

    prompt_tokens: int
    generated_tokens: int
    queue_s: float
    ttft_s: float
    decode_s: float
    total_s: float

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens after the first, per second of decoding."""
        return (self.generated_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


def request_stats(output: Any) -> RequestStats:
    """Per-request numbers from a ``RequestOutput`` (engine built with ``disable_log_stats=False``)."""
    metrics = output.metrics
    if metrics is None:
        raise ValueError("This RequestOutput has no metrics: build the LLM with disable_log_stats=False.")
    generated = sum(len(completion.token_ids) for completion in output.outputs)
    return RequestStats(
        prompt_tokens=len(output.prompt_token_ids or []),
        generated_tokens=generated,
        queue_s=max(metrics.scheduled_ts - metrics.queued_ts, 0.0),
        ttft_s=metrics.first_token_latency,
        decode_s=max(metrics.last_token_ts - metrics.first_token_ts, 0.0),
        total_s=max(metrics.last_token_ts - metrics.queued_ts, 0.0),
    )


def stats_rows(outputs: list[Any]) -> list[dict[str, Any]]:
    """One dict per request: the prompt's start, its answer's start and the measured numbers."""
    rows = []
    for output in outputs:
        stats = request_stats(output)
        row: dict[str, Any] = {"answer": output.outputs[0].text.strip()[:40]}
        row.update({key: round(value, 3) for key, value in asdict(stats).items()})
        row["decode_tok_per_s"] = round(stats.decode_tokens_per_s, 1)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain fixed-width table (readable in notebooks, logs and CI output)."""
    if not rows:
        return "(no rows)"
    headers = list(rows[0])
    # one line per row: a multi-line value (an answer with newlines) shows ↵ where its line breaks were
    cells = [[" ↵ ".join(str(row.get(h, "")).splitlines()) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join([line, "-" * len(line), *body])
