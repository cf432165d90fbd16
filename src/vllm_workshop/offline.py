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
    """Send output to ``path`` for the duration: file descriptors 1 and 2 (processes started meanwhile, such
    as vLLM's engine core and workers, keep writing there), Python's ``sys.stdout``/``sys.stderr`` (a
    notebook kernel's are not descriptors 1 and 2) and, from now on, the handlers of vLLM's logger (an engine
    running in this process logs while it serves, not only while it starts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with path.open("ab") as log, path.open("a", buffering=1, errors="replace") as text:
            _vllm_logs_to(path)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                    yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                _vllm_logs_to(path)  # a handler made meanwhile holds ``text``, which closes here
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def _vllm_logs_to(path: Path) -> None:
    """Point the stream handlers of the ``vllm`` logger at ``path``: each engine's log gets what follows."""
    import logging

    for handler in logging.getLogger("vllm").handlers:
        if type(handler) is logging.StreamHandler:  # vLLM's own (not files, not a test runner's capture)
            old, handler.stream = handler.stream, path.open("a", buffering=1, errors="replace")
            handler.stream.workshop_log = True
            if getattr(old, "workshop_log", False):
                old.close()  # the previous engine's log, opened here


@contextlib.contextmanager
def engine_start() -> Iterator[None]:
    """Around building a ``vllm.LLM``: what an in-process engine changes in this process, undone.

    Before: vLLM's env cache (frozen by an earlier in-process engine) is thawed, so this engine reads the
    environment as it is now. After: the heap vLLM's engine core froze is unfrozen (so a closed engine can be
    freed), and torch's ``set_num_threads`` (replaced by a no-op while vLLM binds threads) is given back.
    """
    import torch
    from vllm import envs

    envs.disable_envs_cache()
    set_threads = torch.set_num_threads
    try:
        yield
    finally:
        gc.unfreeze()
        torch.set_num_threads = set_threads


def engine_in_process(
    settings: LabSettings, binding: dict[str, str] | None, overrides: dict[str, Any]
) -> bool:
    """Whether :func:`start_llm` runs the engine inside this process by default.

    In-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), vLLM spawns no engine-core and worker processes,
    each of which imports vLLM again: on the 2-core CPU lane an engine starts in about 8 s instead of 30, at
    the same throughput. Where :meth:`LabSettings.model_in_one_process` allows it (the lane's own binding,
    one rank, the CPU lane); ``LAB_ENGINE_IN_PROCESS=0`` turns it off.
    """
    if os.environ.get("LAB_ENGINE_IN_PROCESS", "1") == "0":
        return False
    return settings.model_in_one_process(binding, overrides)


def start_llm(
    settings: LabSettings,
    binding: dict[str, str] | None = None,
    in_process: bool | None = None,
    **overrides: Any,
) -> Any:
    """A ``vllm.LLM`` built from the lane settings, with per-request stats switched on.

    ``binding``: the CPU core binding for this engine (default: the lane's, see ``settings.cpu_binding``).
    ``in_process``: run the engine inside this process (default: :func:`engine_in_process`) or in its own
    engine-core and worker processes, as ``vllm serve`` does.
    vLLM's own output (its log, warnings, and its processes' output) goes to a file under ``.lab/logs/``,
    named in one line; if the engine fails to start, the error carries the end of that file.
    """
    from vllm import LLM

    mode = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if in_process is None:  # a value the learner exported wins over the lab's default
        in_process = engine_in_process(settings, binding, overrides) if mode is None else mode == "0"
    settings.apply_env(binding)
    kwargs = settings.engine_kwargs(**overrides)
    kwargs["model"] = resolve_model(str(kwargs["model"]))
    kwargs.setdefault("disable_log_stats", False)  # needed for RequestOutput.metrics
    log = run_log("engine")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    where = "in this process" if in_process else "in its own processes"
    print(f"starting the vLLM engine {where} (vLLM's engine log: {shown(log)}) ...", flush=True)
    started = time.perf_counter()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    try:
        with engine_start(), output_to(log):
            llm = LLM(**kwargs)
    except Exception as exc:
        if in_process:  # what the half-started engine set up in this process goes, not only its frames
            _cleanup_in_process()
            exc = exc.with_traceback(None)
        raise LabError(
            f"The vLLM engine did not start: {type(exc).__name__}: {exc}\n"
            f"--- the end of vLLM's log, {log} ---\n{tail(log)}"
        ) from exc
    finally:
        if mode is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = mode
    print(f"engine ready after {time.perf_counter() - started:.0f} s", flush=True)
    llm.workshop_log = log
    llm.workshop_in_process = in_process
    llm.workshop_processes = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and not _is_resource_tracker(p)
    ]
    return llm


def _cleanup_in_process() -> None:
    """vLLM's own clean-up of its process groups and memory, after an in-process engine failed to start."""
    with contextlib.suppress(Exception):
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    gc.collect()


def _is_resource_tracker(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker: started with the first engine and shared by the later ones."""
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def close_llm(llm: Any, timeout_s: float = 30) -> None:
    """Shut the engine down and wait for its processes to exit (killing any left after ``timeout_s``), so
    its memory is freed before the next experiment and no process, running or defunct, is left behind.
    An in-process engine is shut down and dropped from ``llm`` (its model and KV cache freed here)."""
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
    if getattr(llm, "workshop_in_process", False):
        with contextlib.suppress(AttributeError):
            del llm.llm_engine  # the model, the KV cache and the scheduler live in this process
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
