"""The gateway experiments of module 6, as functions that return what they measured (notebook and tests)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from openai import APIStatusError, OpenAI

from vllm_workshop import streaming
from vllm_workshop.errors import LabError
from vllm_workshop.gateway import (
    BACKEND_NAMES,
    LAB_USER_EMAIL,
    MODEL_GROUP,
    GatewayStack,
    ensure_keys,
    key_for,
    read_request_log,
)


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
    """Send distinct prompts one by one; count which backend answered each (from the request log).

    The prompts are new in every run: the response cache lives in Redis and outlasts the stack.
    """
    client, start = client_for(stack), time.time()
    for i in range(requests):
        ask(
            client,
            f"Name an animal that starts with the letter {chr(65 + i % 26)}. (request {i}, {start:.0f})",
            8,
        )
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


def refused(
    stack: GatewayStack,
    alias: str | None,
    attempts: int,
    api_key: str | None = None,
    model: str = MODEL_GROUP,
) -> list[str]:
    """Send ``attempts`` distinct requests with a key; ``"ok"`` or ``"<status>: <message>"`` per request.

    The proxy adds an answer's cost to the key's spend just after sending the answer; with an alias, each
    answered request waits (up to 5 s) until its spend is recorded, so the next request is checked against it.
    """
    client = OpenAI(
        base_url=stack.openai_base_url,
        api_key=api_key or key_for(alias or "learner"),
        max_retries=0,
        timeout=60,
    )
    outcomes = []
    for i in range(attempts):
        before = _spent(stack, alias)
        try:
            ask(client, f"Give me one word that rhymes with cat. (attempt {i} {time.time()})", 8, model)
        except APIStatusError as exc:
            message = exc.body.get("message", str(exc)) if isinstance(exc.body, dict) else str(exc)
            outcomes.append(f"{exc.status_code}: {message}")
            continue
        outcomes.append("ok")
        deadline = time.monotonic() + 5
        while before is not None and _spent(stack, alias) == before and time.monotonic() < deadline:
            time.sleep(0.05)
    return outcomes


def _spent(stack: GatewayStack, alias: str | None) -> float | None:
    """The alias's recorded spend, or None without an alias or while the key store is unreachable."""
    if alias is None:
        return None
    try:
        return stack.spend().get(alias, 0.0)
    except LabError:  # the store is down: the requests will say so; nothing to wait for
        return None


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
    client, run = client_for(stack, timeout=120), f"run {time.time():.0f}"
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
                # unique per run: a cached answer would carry the header of whichever backend first made it
                messages=[
                    {"role": "user", "content": f"Write one short sentence about the number {i}. ({run})"}
                ],
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


def routed_to_both(stack: GatewayStack, timeout: float = 90, pause_s: float = 1.0) -> Counter[str]:
    """Send a tiny request every ``pause_s`` until both backends have answered one (a restarted backend stays
    out of the rotation while the router's cooldown lasts); returns who answered. :class:`LabError` when one
    never does within ``timeout``."""
    client, seen = client_for(stack, timeout=30), Counter[str]()
    deadline = time.monotonic() + timeout
    while True:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_GROUP,
            messages=[{"role": "user", "content": f"Say hi. ({time.time()})"}],
            max_tokens=1,
        )
        seen[raw.headers.get("x-litellm-model-id", "?")] += 1
        if all(seen[name] for name in BACKEND_NAMES):
            return seen
        if time.monotonic() > deadline:
            missing = sorted(set(BACKEND_NAMES) - set(seen))
            raise LabError(f"the gateway routed no request to {missing} in {timeout:.0f} s: is it running?")
        time.sleep(pause_s)


def stream_failover(
    stack: GatewayStack, streams: int = 6, kill_after: int = 3, concurrency: int = 3, max_tokens: int = 32
) -> streaming.StreamFailoverResult:
    """Streams through the gateway; the backend serving most of them is SIGKILLed mid-stream once
    ``kill_after`` are receiving tokens. Each client retries a cut stream (:mod:`vllm_workshop.streaming`)."""
    routed_to_both(stack)
    a, b = stack.backends
    return streaming.stream_failover(
        stack.openai_base_url,
        key_for("learner"),
        {"vllm-a": a, "vllm-b": b, "vllm-b-fallback": b},
        streams=streams,
        kill_after=kill_after,
        concurrency=concurrency,
        max_tokens=max_tokens,
    )


def all_backends_down(stack: GatewayStack, attempts: int = 2) -> list[str]:
    """SIGKILL every backend still running, then send ``attempts`` requests: what a client sees."""
    for backend in stack.backends:
        backend.kill()
    return refused(stack, "learner", attempts)


def webui_chat(webui_url: str, text: str = "Hello?", model: str = MODEL_GROUP) -> tuple[int, str]:
    """Log in to Open WebUI as the lab user and send one chat message through its API (as its page does):
    ``(status, what the user sees)``, the answer or the error. A time stamp keeps the gateway's cache out."""
    login = requests.post(
        webui_url + "/api/v1/auths/signin",
        json={"email": LAB_USER_EMAIL, "password": ensure_keys()["webui_password"]},
        timeout=30,
    )
    login.raise_for_status()
    reply = requests.post(
        webui_url + "/api/chat/completions",
        headers={"Authorization": f"Bearer {login.json()['token']}"},
        json={
            "model": model,
            "stream": False,
            "messages": [{"role": "user", "content": f"{text} ({time.time():.3f})"}],
        },
        timeout=120,
    )
    try:
        body = reply.json()
    except ValueError:
        return reply.status_code, reply.text
    if not isinstance(body, dict):
        return reply.status_code, str(body)
    if body.get("choices"):
        return reply.status_code, str(body["choices"][0]["message"]["content"])
    error = body.get("error")
    return reply.status_code, str(
        error.get("message") if isinstance(error, dict) else error or body.get("detail")
    )
