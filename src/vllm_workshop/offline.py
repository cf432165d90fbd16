"""Offline inference helpers: start an in-process ``vllm.LLM`` for the lane and read per-request stats."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import asdict, dataclass
from typing import Any

from vllm_workshop.model import resolve_model
from vllm_workshop.settings import LabSettings


def start_llm(settings: LabSettings, binding: dict[str, str] | None = None, **overrides: Any) -> Any:
    """A ``vllm.LLM`` built from the lane settings, with per-request stats switched on.

    ``binding``: the CPU core binding for this engine (default: the lane's, see ``settings.cpu_binding``).
    """
    from vllm import LLM

    settings.apply_env(binding)
    kwargs = settings.engine_kwargs(**overrides)
    kwargs["model"] = resolve_model(str(kwargs["model"]))
    kwargs.setdefault("disable_log_stats", False)  # needed for RequestOutput.metrics
    return LLM(**kwargs)


def close_llm(llm: Any) -> None:
    """Shut the engine down so its memory (KV cache, workers) is freed before the next experiment."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        with contextlib.suppress(Exception):
            core.shutdown()
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
    cells = [[str(row.get(h, "")) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join([line, "-" * len(line), *body])
