"""Streaming through the gateway when a backend dies: the cut stream, and the client-side retry that mends it.

A gateway can move a request to another backend only until the first token has gone out. LiteLLM's router
falls back in the middle of a stream only while nothing has been generated (``stream_with_fallbacks`` in its
``router.py`` re-raises once the stream carried content): the tokens already sent are on the user's screen,
and another backend would not continue them, it would start its own answer (its own KV cache, its own
sampling). So the gateway ends the stream with an error event and no ``[DONE]``, and the client must notice.

The remedy lives in the client: a stream that ends without a ``finish_reason`` is incomplete. Throw the
partial text away and send the whole request again; the gateway routes the retry to a healthy backend.
:func:`stream_with_retry` does that, :func:`stream_failover` measures it with a backend killed mid-stream.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from openai import APIConnectionError, APIError, APIStatusError, OpenAI

MODEL = "lab-model"
RETRYABLE_STATUS = {500, 502, 503, 504}  # the gateway or its backends failed; 4xx are the caller's to fix


@dataclass(frozen=True)
class Attempt:
    """One streamed request: what arrived, how it ended, and which deployment served it."""

    text: str
    finish_reason: str | None
    backend: str
    cut: str = ""  # why it ended without a finish_reason ('' when it finished)

    @property
    def finished(self) -> bool:
        """True when the stream ended with a finish_reason (the model's own end, or max_tokens)."""
        return self.finish_reason is not None


@dataclass(frozen=True)
class StreamResult:
    """A streamed request with client-side retries: every attempt, the last one first in meaning."""

    attempts: tuple[Attempt, ...]

    @property
    def finished(self) -> bool:
        """True when some attempt ended with a finish_reason."""
        return self.attempts[-1].finished

    @property
    def text(self) -> str:
        """The answer of the last attempt (complete when :attr:`finished`)."""
        return self.attempts[-1].text

    @property
    def cut(self) -> bool:
        """True when the first attempt broke off: what a client without a retry would have shown."""
        return not self.attempts[0].finished

    @property
    def recovered(self) -> bool:
        """True when the first attempt broke off and a retry completed the answer."""
        return self.cut and self.finished


def stream_once(
    client: OpenAI,
    messages: list[dict[str, str]],
    max_tokens: int = 32,
    model: str = MODEL,
    on_chunk: Callable[[str], None] | None = None,
) -> Attempt:
    """Stream one chat completion; an error event, a dropped connection or an early end is a cut, not a raise.

    ``on_chunk`` is called with the serving deployment's id on every content chunk. Errors before the stream
    starts (HTTP status, refused connection) are raised.
    """
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
    )
    backend = raw.headers.get("x-litellm-model-id", "?")
    parts: list[str] = []
    finish: str | None = None
    cut = ""
    try:
        for chunk in raw.parse():
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    if on_chunk is not None:
                        on_chunk(backend)
                finish = choice.finish_reason or finish
    except (APIConnectionError, httpx.HTTPError) as exc:  # the connection dropped mid-body
        cut = f"connection dropped: {exc}"
    except APIError as exc:  # the gateway's in-stream error event
        cut = f"error event: {exc.message[:160]}"
    if finish is None and not cut:
        cut = "the stream ended without a finish_reason"
    return Attempt("".join(parts), finish, backend, cut)


def stream_with_retry(
    client: OpenAI,
    messages: list[dict[str, str]],
    max_tokens: int = 32,
    model: str = MODEL,
    retries: int = 2,
    backoff_s: float = 0.5,
    on_chunk: Callable[[int, str], None] | None = None,
) -> StreamResult:
    """Stream a chat completion; when a stream breaks off, discard it and send the whole request again.

    At most ``retries`` more attempts, ``backoff_s`` apart (doubling). ``on_chunk(attempt, backend)`` sees
    every content chunk. A 4xx answer (key, limit, bad request) is raised: retrying cannot fix it.
    """
    attempts: list[Attempt] = []
    for number in range(retries + 1):
        if number:
            time.sleep(backoff_s * 2 ** (number - 1))
        try:
            attempt = stream_once(
                client,
                messages,
                max_tokens,
                model,
                on_chunk=None if on_chunk is None else (lambda backend, n=number: on_chunk(n, backend)),
            )
        except APIStatusError as exc:
            if exc.status_code not in RETRYABLE_STATUS:
                raise
            attempt = Attempt("", None, "?", f"HTTP {exc.status_code} before the stream started")
        except APIConnectionError as exc:
            attempt = Attempt("", None, "?", f"no connection to the gateway: {exc}")
        attempts.append(attempt)
        if attempt.finished:
            break
    return StreamResult(tuple(attempts))


@dataclass(frozen=True)
class StreamFailoverResult:
    """Streams during which the backend serving most of them was SIGKILLed."""

    killed: str  # the deployment killed ('' when the run never reached the kill)
    results: list[StreamResult] = field(default_factory=list)

    @property
    def sent(self) -> int:
        """Streams sent."""
        return len(self.results)

    @property
    def cut_without_retry(self) -> int:
        """Streams whose first attempt broke off: lost answers for a client that does not retry."""
        return sum(r.cut for r in self.results)

    @property
    def recovered_with_retry(self) -> int:
        """Cut streams that the client's retry completed."""
        return sum(r.recovered for r in self.results)

    @property
    def lost(self) -> int:
        """Streams that no attempt completed."""
        return sum(not r.finished for r in self.results)

    def cut_reasons(self) -> Counter[str]:
        """How the cut first attempts ended."""
        return Counter(r.attempts[0].cut.split(":")[0] for r in self.results if r.cut)


def stream_failover(
    base_url: str,
    api_key: str,
    backends: dict[str, Any],
    streams: int = 8,
    kill_after: int = 4,
    concurrency: int = 4,
    max_tokens: int = 48,
    retries: int = 2,
) -> StreamFailoverResult:
    """Stream ``streams`` requests, ``concurrency`` at a time, through the gateway at ``base_url``; once
    ``kill_after`` of them are receiving tokens, SIGKILL the backend (``backends``: deployment id -> server)
    that serves most of the streams then in flight. Every stream retries when cut.

    Killing the busiest backend guarantees streams in flight on it, whatever the router chose.
    """
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    lock = threading.Lock()
    live: dict[int, str] = {}  # stream -> deployment, first attempts receiving tokens and not yet over
    receiving = 0
    killed: list[str] = []

    def seen(index: int, attempt: int, backend: str) -> None:
        nonlocal receiving
        if attempt or index in live:
            return
        with lock:
            live[index] = backend
            receiving += 1
            if receiving == kill_after and not killed:
                target, _ = Counter(live.values()).most_common(1)[0]
                if target in backends:
                    backends[target].kill()
                    killed.append(target)

    run = f"{time.time():.3f}"  # distinct prompts in every run: a cached answer would stream from Redis

    def one(index: int) -> StreamResult:
        prompt = f"Count from one to twenty in words. (stream {index}, {run})"
        messages = [{"role": "user", "content": prompt}]
        result = stream_with_retry(
            client,
            messages,
            max_tokens,
            retries=retries,
            on_chunk=lambda attempt, backend: seen(index, attempt, backend),
        )
        with lock:
            live.pop(index, None)
        return result

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(streams)))
    return StreamFailoverResult(killed[0] if killed else "", results)
