"""The gateway experiments of module 6, as functions that return what they measured (notebook and tests)."""

from __future__ import annotations

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
    """A bounded run of N requests during which one backend was killed."""

    sent: int
    succeeded: int
    errors: list[str]
    served_before_kill: Counter[str]
    served_after_kill: Counter[str]
    killed: str


def failover(
    stack: GatewayStack, requests: int = 16, kill_after: int = 4, concurrency: int = 4
) -> FailoverResult:
    """Kill backend A (SIGKILL, as in a crash) once ``kill_after`` requests finished; none may be lost."""
    client, start = client_for(stack, timeout=120), time.time()
    done: list[tuple[float, str | None]] = []
    kill_time: list[float] = []

    def one(i: int) -> None:
        try:
            ask(client, f"Write one short sentence about the number {i}.", 24)
            done.append((time.time(), None))
        except Exception as exc:  # counted, then reported: the point is that there are none
            done.append((time.time(), f"{type(exc).__name__}: {exc}"))
        if len(done) == kill_after and not kill_time:
            kill_time.append(time.time())
            stack.backends[0].kill()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    records = [r for r in log_since(start) if r["status"] == "success"]
    cut = kill_time[0] if kill_time else float("inf")
    return FailoverResult(
        sent=requests,
        succeeded=sum(1 for _, error in done if error is None),
        errors=[error for _, error in done if error],
        served_before_kill=Counter(backend_name(stack, r) for r in records if r["time"] < cut),
        served_after_kill=Counter(backend_name(stack, r) for r in records if r["time"] >= cut + 1),
        killed="vllm-a",
    )
