"""Code that runs inside the LiteLLM proxy process (``.venv-gateway``): lab API keys and the request log.

Loaded by ``modules/06-gateway/litellm/config.yaml``:

- ``custom_auth``: ``vllm_workshop.gateway_hooks.user_api_key_auth`` checks the key against the lab keys in
  ``$LAB_GATEWAY_KEYS`` (JSON written by ``vllm_workshop.gateway``), and returns LiteLLM's ``UserAPIKeyAuth``
  with the key's ``rpm_limit``, so LiteLLM's own parallel-request limiter enforces it. Budgets are enforced
  here from the spend the request log has counted (the proxy runs without a database, so LiteLLM's own spend
  tracking is off).
- ``callbacks``: ``vllm_workshop.gateway_hooks.request_log`` appends one JSON line per request to
  ``$LAB_GATEWAY_LOG``: key alias, model group, the vLLM backend that answered, tokens, cost, latency and
  cache hit.

Only the standard library and litellm are imported: the gateway's environment has no vLLM.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from fastapi import Request
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyErrorTypes, ProxyException, UserAPIKeyAuth

_SPEND: dict[str, float] = {}
_LOCK = threading.Lock()


def lab_keys() -> dict[str, dict[str, Any]]:
    """``{key: {"alias", "rpm_limit", "max_budget"}}`` from ``$LAB_GATEWAY_KEYS``."""
    return {entry["key"]: entry for entry in json.loads(os.environ.get("LAB_GATEWAY_KEYS", "[]"))}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """Accept lab keys, reject everything else with 401, and keys over budget with 429."""
    key = api_key.removeprefix("Bearer ").strip()
    entry = lab_keys().get(key)
    if entry is None:
        raise ProxyException(
            message="Invalid API key: not one of the lab keys (see .lab/gateway/keys.json).",
            type=ProxyErrorTypes.auth_error,
            param="api_key",
            code=401,
        )
    spent = _SPEND.get(entry["alias"], 0.0)
    budget = entry.get("max_budget")
    if budget is not None and spent >= budget:
        raise ProxyException(
            message=f"Budget exceeded for key '{entry['alias']}': spent ${spent:.6f} of ${budget:.6f}.",
            type=ProxyErrorTypes.budget_exceeded,
            param="api_key",
            code=429,
        )
    return UserAPIKeyAuth(
        api_key=key,
        key_alias=entry["alias"],
        rpm_limit=entry.get("rpm_limit"),
        max_budget=budget,
        spend=spent,
    )


class RequestLog(CustomLogger):
    """One JSON line per finished or failed request, and the per-key spend used for budgets."""

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
        alias = metadata.get("user_api_key_alias") or payload.get("metadata", {}).get("user_api_key_alias")
        latency = (end - start).total_seconds() if hasattr(end, "__sub__") and start else None
        return {
            "time": time.time(),
            "status": status,
            "key_alias": alias,
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
        if record["key_alias"] and not record["cache_hit"]:
            with _LOCK:
                _SPEND[record["key_alias"]] = _SPEND.get(record["key_alias"], 0.0) + float(
                    record["cost"] or 0
                )
        self._write(record)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._write(self._record(kwargs, start_time, end_time, "failure"))


request_log = RequestLog()
