"""Concurrent load against an OpenAI-compatible endpoint, measured per request from the client side.

Each request streams, so we see when its first token arrives (TTFT), the gaps between tokens (inter-token
latency, ITL) and when it ends. ``run_load`` works from scripts and from notebooks (it runs its own event
loop in a worker thread, so it does not clash with Jupyter's).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LoadRequest:
    """One request of a workload."""

    label: str
    messages: list[dict[str, Any]]
    max_tokens: int
    ignore_eos: bool = True
    delay_s: float = 0.0  # sent this long after the load starts (arrivals after a long prompt, say)


@dataclass
class RequestRecord:
    """Client-side timings of one request (seconds since the load started)."""

    label: str
    sent: float
    first_token: float | None = None
    done: float | None = None
    tokens: int = 0
    token_times: list[float] = field(default_factory=list)
    error: str | None = None
    text: str = ""

    @property
    def ttft(self) -> float | None:
        """Time to first token."""
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def latency(self) -> float | None:
        """Time from send to the last token."""
        return None if self.done is None else self.done - self.sent

    @property
    def inter_token(self) -> list[float]:
        """Gaps between consecutive streamed tokens."""
        return list(np.diff(self.token_times)) if len(self.token_times) > 1 else []


async def _one(
    client: Any,
    model: str,
    request: LoadRequest,
    t0: float,
    gate: asyncio.Semaphore,
    extra_body: dict[str, Any] | None = None,
) -> RequestRecord:
    if request.delay_s:
        await asyncio.sleep(request.delay_s)
    async with gate:
        record = RequestRecord(request.label, sent=time.perf_counter() - t0)
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=request.messages,
                max_tokens=request.max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": request.ignore_eos, **(extra_body or {})},
            )
            async for chunk in stream:
                now = time.perf_counter() - t0
                if chunk.choices and chunk.choices[0].delta.content:
                    record.first_token = record.first_token or now
                    record.token_times.append(now)
                    record.text += chunk.choices[0].delta.content
                if chunk.usage:
                    record.tokens = chunk.usage.completion_tokens
            record.done = time.perf_counter() - t0
        except Exception as exc:  # a load test records failures instead of stopping at the first one
            record.error = f"{type(exc).__name__}: {exc}"
        return record


async def run_load_async(
    base_url: str, model: str, requests: list[LoadRequest], concurrency: int, api_key: str = "none"
) -> tuple[list[RequestRecord], float]:
    """Send ``requests`` with at most ``concurrency`` in flight; returns the records and the wall time."""
    from openai import AsyncOpenAI

    gate = asyncio.Semaphore(concurrency)
    async with AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600) as client:
        t0 = time.perf_counter()
        records = await asyncio.gather(*(_one(client, model, r, t0, gate) for r in requests))
        return list(records), time.perf_counter() - t0


def _blocking(work: Any) -> Any:
    """Run a coroutine to completion on its own event loop in a worker thread (safe inside Jupyter, whose
    kernel already runs a loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result()


def run_load(
    base_url: str, model: str, requests: list[LoadRequest], concurrency: int, api_key: str = "none"
) -> tuple[list[RequestRecord], float]:
    """Blocking wrapper of :func:`run_load_async` that is safe inside Jupyter."""
    return _blocking(run_load_async(base_url, model, requests, concurrency, api_key))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (NaN for no values)."""
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(records: list[RequestRecord], wall_s: float, label: str = "") -> dict[str, Any]:
    """TTFT p50/p99, inter-token latency, throughput and errors of one load run."""
    ok = [r for r in records if r.error is None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [gap for r in ok for gap in r.inter_token]
    tokens = sum(r.tokens for r in ok)
    return {
        "run": label,
        "requests": len(records),
        "errors": len(records) - len(ok),
        "ttft_p50_s": round(percentile(ttfts, 50), 3),
        "ttft_p99_s": round(percentile(ttfts, 99), 3),
        "itl_p50_ms": round(1000 * percentile(gaps, 50), 1),
        "itl_p99_ms": round(1000 * percentile(gaps, 99), 1),
        "tok/s": round(tokens / wall_s, 1) if wall_s else 0.0,
        "req/s": round(len(ok) / wall_s, 2) if wall_s else 0.0,
    }


def knee(concurrency: Sequence[float], throughput: Sequence[float], latency: Sequence[float]) -> int:
    """Index of the knee of a throughput-latency curve: the point of highest throughput / latency ("power").

    Before it, more concurrency buys throughput almost for free; after it, latency grows faster than
    throughput.
    """
    if not concurrency or not len(concurrency) == len(throughput) == len(latency):
        raise ValueError("one throughput and one latency per concurrency level")
    power = [t / lat for t, lat in zip(throughput, latency, strict=True)]
    return max(range(len(power)), key=power.__getitem__)


@dataclass(frozen=True)
class Conversation:
    """A multi-turn chat: a (long) system prompt, then user turns; each answer joins the history."""

    name: str
    system: str
    turns: tuple[str, ...]
    think_s: tuple[float, ...] = ()  # the user's pause before each turn after the first (reading the answer)


async def _conversation(
    client: Any,
    model: str,
    chat: Conversation,
    max_tokens: int,
    t0: float,
    gate: asyncio.Semaphore,
    extra_body: dict[str, Any] | None,
) -> list[RequestRecord]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": chat.system}]
    records = []
    for i, turn in enumerate(chat.turns):
        if 0 < i <= len(chat.think_s):
            await asyncio.sleep(chat.think_s[i - 1])
        messages.append({"role": "user", "content": turn})
        request = LoadRequest(f"{chat.name}/turn {i + 1}", list(messages), max_tokens, ignore_eos=True)
        record = await _one(client, model, request, t0, gate, extra_body)
        records.append(record)
        if record.error:
            break  # the rest of this conversation depends on the answer
        messages.append({"role": "assistant", "content": record.text})
    return records


def run_conversations(
    base_url: str,
    model: str,
    chats: Sequence[Conversation],
    concurrency: int,
    max_tokens: int = 16,
    api_key: str = "none",
    extra_body: dict[str, Any] | None = None,
    one_at_a_time: bool = False,
) -> tuple[list[RequestRecord], float]:
    """Run the conversations side by side (each one turn after the other, as a user types), at most
    ``concurrency`` requests in flight; records labelled ``name/turn k``, and the wall time. ``extra_body``
    goes into every request (e.g. LiteLLM's ``{"cache": {"no-cache": True}}``). ``one_at_a_time`` runs
    them one after another instead (a quiet fleet: one request in flight). Safe inside Jupyter."""
    from openai import AsyncOpenAI

    async def work() -> tuple[list[RequestRecord], float]:
        gate = asyncio.Semaphore(concurrency)
        async with AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600) as client:
            t0 = time.perf_counter()
            if one_at_a_time:
                runs = [
                    await _conversation(client, model, c, max_tokens, t0, gate, extra_body) for c in chats
                ]
            else:
                runs = await asyncio.gather(
                    *(_conversation(client, model, c, max_tokens, t0, gate, extra_body) for c in chats)
                )
            return [r for run in runs for r in run], time.perf_counter() - t0

    return _blocking(work())
