"""The gateway experiments of module 6, as functions that return what they measured (notebook and tests)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from openai import APIStatusError, OpenAI

from vllm_workshop.gateway import MODEL_GROUP, GatewayStack, key_for, read_request_log


def client_for(stack: GatewayStack, alias: str = "learner", **options: Any) -> OpenAI:
    """An ``openai`` client for the gateway with one of the lab keys (no client-side retries)."""
    return OpenAI(base_url=stack.openai_base_url, api_key=key_for(alias), max_retries=0, **options)


def ask(client: OpenAI, text: str, max_tokens: int = 16, model: str = MODEL_GROUP) -> str:
    """One greedy chat completion; returns the answer."""
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].message.content or ""


def log_since(start: float) -> list[dict[str, Any]]:
    """Request-log records written after ``start`` (a ``time.time()``), waiting briefly for the last one."""
    time.sleep(0.5)  # the proxy writes its log after the response has been sent
    return [r for r in read_request_log() if r["time"] >= start]


def backend_name(stack: GatewayStack, record: dict[str, Any]) -> str:
    """``vllm-a`` / ``vllm-b`` for a log record (by its model id, else its api_base)."""
    if record.get("model_id") in ("vllm-a", "vllm-b", "vllm-b-fallback"):
        return str(record["model_id"])
    for base, name in stack.backend_ids().items():
        if record.get("api_base", "").startswith(base):
            return name
    return "?"


def routing(stack: GatewayStack, requests: int = 12) -> Counter[str]:
    """Send distinct prompts one by one; count which backend answered each (from the request log)."""
    client, start = client_for(stack), time.time()
    for i in range(requests):
        ask(client, f"Name an animal whose name starts with the letter {chr(65 + i % 26)}. (request {i})", 8)
    return Counter(backend_name(stack, r) for r in log_since(start) if r["status"] == "success")


@dataclass(frozen=True)
class CacheResult:
    """The same request twice: answers, client-side latencies and what the log says."""

    answers: tuple[str, str]
    seconds: tuple[float, float]
    cache_hits: tuple[bool, ...]


def cache_hit(stack: GatewayStack, text: str = "What is the capital of France?") -> CacheResult:
    """Ask the same question twice; the second answer should come from LiteLLM's response cache."""
    client, start, answers, seconds = client_for(stack), time.time(), [], []
    unique = f"{text} (cache demo {start:.0f})"  # a question the cache has not seen in earlier runs
    for _ in range(2):
        t0 = time.perf_counter()
        answers.append(ask(client, unique, 24))
        seconds.append(time.perf_counter() - t0)
    hits = tuple(r["cache_hit"] for r in log_since(start) if r["status"] == "success")
    return CacheResult((answers[0], answers[1]), (seconds[0], seconds[1]), hits)


def refused(stack: GatewayStack, alias: str | None, attempts: int, api_key: str | None = None) -> list[str]:
    """Send ``attempts`` distinct requests with a key; ``"ok"`` or ``"<status>: <message>"`` per request."""
    client = OpenAI(
        base_url=stack.openai_base_url, api_key=api_key or key_for(alias or "learner"), max_retries=0
    )
    outcomes = []
    for i in range(attempts):
        try:
            ask(client, f"Give me one word that rhymes with cat. (attempt {i} {time.time()})", 8)
            outcomes.append("ok")
        except APIStatusError as exc:
            message = exc.body.get("message", str(exc)) if isinstance(exc.body, dict) else str(exc)
            outcomes.append(f"{exc.status_code}: {message}")
    return outcomes


@dataclass(frozen=True)
class FailoverResult:
    """A bounded run of N requests during which one backend was killed.

    ``served`` lists, per request in the order sent, whether it started after the kill and which deployment
    answered it (LiteLLM's ``x-litellm-model-id`` response header), or the error it got.
    """

    sent: int
    killed: str
    kill_happened: bool
    served: list[tuple[bool, str]]
    errors: list[str]

    @property
    def succeeded(self) -> int:
        """Requests that got an answer."""
        return self.sent - len(self.errors)

    @property
    def started_after_kill(self) -> int:
        """Requests sent once the backend was dead."""
        return sum(1 for after, _ in self.served if after)

    def served_by(self, after_kill: bool) -> Counter[str]:
        """Which deployment answered the requests sent before (False) or after (True) the kill."""
        return Counter(who for after, who in self.served if after == after_kill)


def failover(
    stack: GatewayStack, requests: int = 16, kill_after: int = 4, concurrency: int = 4
) -> FailoverResult:
    """Kill backend A (SIGKILL, as in a crash) once ``kill_after`` requests finished; none may be lost."""
    client = client_for(stack, timeout=120)
    lock = threading.Lock()
    finished = 0
    killed = threading.Event()
    served: list[tuple[bool, str]] = [(False, "")] * requests
    errors: list[str] = []

    def one(i: int) -> None:
        nonlocal finished
        after = killed.is_set()
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL_GROUP,
                messages=[{"role": "user", "content": f"Write one short sentence about the number {i}."}],
                max_tokens=24,
                temperature=0,
            )
            served[i] = (after, raw.headers.get("x-litellm-model-id", "?"))
        except Exception as exc:  # counted, then reported: the point is that there are none
            served[i] = (after, "error")
            with lock:
                errors.append(f"request {i}: {type(exc).__name__}: {exc}")
        with lock:  # count and kill under one lock: exactly one thread sees the threshold
            finished += 1
            if finished == kill_after:
                stack.backends[0].kill()
                killed.set()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return FailoverResult(
        sent=requests, killed="vllm-a", kill_happened=killed.is_set(), served=served, errors=errors
    )
