"""Code that runs inside the LiteLLM proxy process (``.venv-gateway``): the lab's keys, scopes, spend and
budgets kept in Redis, and the request log.

Loaded by ``modules/06-gateway/litellm/config.yaml``:

- ``custom_auth``: :func:`user_api_key_auth` looks the key up in Redis (``$LAB_REDIS_URL``; the layout is
  in :mod:`vllm_workshop.store`). Unknown or revoked keys get 401, a model outside the key's scope 401, a key
  whose spend reached its budget 429. It returns LiteLLM's ``UserAPIKeyAuth`` with the key's ``rpm_limit``,
  which LiteLLM's own limiter enforces with its counters in the same Redis (``coordination_redis``), so every
  proxy on that Redis shares one limit. When Redis cannot be reached the answer is 503: the gateway refuses
  requests rather than serve keys whose budgets and limits it cannot check.
- ``callbacks``: :data:`request_log` appends one JSON line per request to ``$LAB_GATEWAY_LOG`` (key alias,
  backend, tokens, cost, latency, cache hit) and adds the cost to the key's spend in Redis. (The other
  callback, for "every backend is down", is :mod:`vllm_workshop.gateway_errors`.)

Only the standard library, litellm (with its redis client) and :mod:`vllm_workshop.store` are imported: the
gateway's environment has no vLLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

from fastapi import Request
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyErrorTypes, ProxyException, UserAPIKeyAuth
from redis.asyncio import Redis
from redis.exceptions import RedisError

from vllm_workshop.store import KEYS, REVOKED, SPEND, StoreError, key_hash, parse_redis_url

REDIS_TIMEOUT_S = 2.0
_LOCK = threading.Lock()
_CLIENTS: dict[int, Redis] = {}  # one client per event loop (the proxy runs one)


def redis_client() -> Redis:
    """The proxy's Redis client for ``$LAB_REDIS_URL`` (bounded connect and read timeouts)."""
    loop = id(asyncio.get_running_loop())
    if loop not in _CLIENTS:
        address = parse_redis_url(os.environ.get("LAB_REDIS_URL", ""))
        _CLIENTS[loop] = Redis.from_url(
            address.secret_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            decode_responses=True,
        )
    return _CLIENTS[loop]


def store_unavailable(exc: BaseException) -> ProxyException:
    """503 for a key store the proxy cannot reach: refuse, never let keys through unchecked."""
    try:
        url = parse_redis_url(os.environ.get("LAB_REDIS_URL", "")).url  # the password masked
    except StoreError as bad:
        url = f"? ({bad})"
    return ProxyException(
        message=(
            f"The gateway's key store (Redis at {url}) is unreachable: {exc}. Requests are refused until it "
            "is back, so that no key runs without its budget and rate limit. Fix: start Redis again (the lab "
            "stack starts it; see .lab/logs/redis-*.log)."
        ),
        type=ProxyErrorTypes.auth_provider_unavailable,
        param=None,
        code=503,
    )


async def lookup(key: str) -> tuple[dict[str, Any] | None, bool, float]:
    """``(record or None, revoked, spend)`` of a key in Redis."""
    digest = key_hash(key)
    async with redis_client().pipeline(transaction=False) as pipe:
        pipe.hget(KEYS, digest).sismember(REVOKED, digest).hget(SPEND, digest)
        record, revoked, spent = await pipe.execute()
    return (json.loads(record) if record else None), bool(revoked), float(spent or 0)


async def requested_model(request: Request) -> str | None:
    """The ``model`` of a JSON request body (None for GET requests and bodies without one)."""
    if request.method != "POST":
        return None
    from litellm.proxy.common_utils.http_parsing_utils import read_request_body

    body = await read_request_body(request=request)
    return body.get("model") if isinstance(body, dict) else None


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """Accept registered keys; 401 unknown, revoked or out-of-scope, 429 over budget, 503 without Redis."""
    key = api_key.removeprefix("Bearer ").strip()
    try:
        entry, revoked, spent = await lookup(key)
    except (RedisError, OSError, StoreError) as exc:
        raise store_unavailable(exc) from None
    if entry is None:
        raise ProxyException(
            message="Invalid API key: not a key of this gateway (lab keys: .lab/gateway/keys.json).",
            type=ProxyErrorTypes.auth_error,
            param="api_key",
            code=401,
        )
    alias = entry["alias"]
    if revoked:
        raise ProxyException(
            message=f"API key '{alias}' has been revoked. Ask for a new key.",
            type=ProxyErrorTypes.auth_error,
            param="api_key",
            code=401,
        )
    allowed = entry.get("models") or []
    model = await requested_model(request) if allowed else None
    if model is not None and model not in allowed:
        raise ProxyException(
            message=f"Key '{alias}' may only use {', '.join(allowed)}, not {model!r}.",
            type=ProxyErrorTypes.key_model_access_denied,
            param="model",
            code=401,
        )
    budget = entry.get("max_budget")
    if budget is not None and spent >= budget:
        raise ProxyException(
            message=f"Budget exceeded for key '{alias}': spent ${spent:.6f} of ${budget:.6f}.",
            type=ProxyErrorTypes.budget_exceeded,
            param="api_key",
            code=429,
        )
    return UserAPIKeyAuth(
        api_key=key, key_alias=alias, rpm_limit=entry.get("rpm_limit"), max_budget=budget, spend=spent
    )


class RequestLog(CustomLogger):
    """One JSON line per finished or failed request; the cost of each answered one goes to its key's spend."""

    def _write(self, record: dict[str, Any]) -> None:
        path = os.environ.get("LAB_GATEWAY_LOG")
        if not path:
            return
        with _LOCK, open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _record(self, kwargs: dict[str, Any], start: Any, end: Any, status: str) -> dict[str, Any]:
        payload = kwargs.get("standard_logging_object") or {}
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or {}
        logged = payload.get("metadata") or {}
        alias = metadata.get("user_api_key_alias") or logged.get("user_api_key_alias")
        latency = (end - start).total_seconds() if hasattr(end, "__sub__") and start else None
        return {
            "time": time.time(),
            "status": status,
            "key_alias": alias,
            "key_hash": metadata.get("user_api_key_hash") or logged.get("user_api_key_hash"),
            "model_group": payload.get("model_group") or kwargs.get("model"),
            "api_base": payload.get("api_base") or params.get("api_base"),
            "model_id": payload.get("model_id"),
            "prompt_tokens": payload.get("prompt_tokens"),
            "completion_tokens": payload.get("completion_tokens"),
            "cost": payload.get("response_cost") or kwargs.get("response_cost") or 0.0,
            "latency_s": latency,
            "cache_hit": bool(payload.get("cache_hit") or kwargs.get("cache_hit")),
            "error": payload.get("error_str") if status != "success" else None,
        }

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        record = self._record(kwargs, start_time, end_time, "success")
        if record["key_hash"] and record["cost"] and not record["cache_hit"]:
            try:
                await redis_client().hincrbyfloat(SPEND, record["key_hash"], float(record["cost"]))
            except (
                RedisError,
                OSError,
                StoreError,
            ) as exc:  # the answer is already sent; say it was not counted
                record["spend_error"] = f"spend not recorded, Redis unreachable: {exc}"
                print(f"lab gateway: {record['spend_error']}", file=sys.stderr, flush=True)
        self._write(record)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._write(self._record(kwargs, start_time, end_time, "failure"))


request_log = RequestLog()
