"""A LiteLLM callback: when no backend of a model group can answer, say so (503), not "rate limit" (429).

LiteLLM answers a request whose deployments are all in cooldown with 429 "No deployments available ... in
cooldown", which a client reads as its own key's rate limit, and the requests just before that with a 500
carrying a connection error. :data:`backend_errors` (``async_post_call_failure_hook``, which may replace the
error sent to the client) turns both into a 503 that names the model group's backends, says why they are
unavailable and how long the cooldown lasts, with ``Retry-After``.

Standalone on purpose (only the standard library, fastapi and litellm): the lab's proxy loads it as
``vllm_workshop.gateway_errors.backend_errors``, and ``components/litellm`` ships an identical copy next to
the cluster's config (LiteLLM loads ``gateway_errors.backend_errors`` from the config's folder).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth


def unavailable_reason(exc: BaseException) -> str | None:
    """Why no backend could answer, in words, or None when the error is something else."""
    import litellm
    from litellm.types.router import RouterRateLimitError

    text = str(exc)
    if isinstance(exc, RouterRateLimitError) or ("No deployments available" in text and "cooldown" in text):
        cooldown = math.ceil(getattr(exc, "cooldown_time", None) or router_cooldown())
        return (
            f"every backend failed recently and is cooling down for {cooldown} s (router_settings."
            "cooldown_time: the gateway sends nothing to a backend that failed allowed_fails times)"
        )
    if isinstance(exc, litellm.APIConnectionError | litellm.ServiceUnavailableError) or (
        isinstance(exc, litellm.InternalServerError) and "connect" in text.lower()
    ):
        return "the backends refused or dropped the connection: their servers are down or restarting"
    return None


def deployments(group: str | None) -> str:
    """``vllm-a (http://...), vllm-b (...)`` for a model group, from the proxy's router."""
    from litellm.proxy.proxy_server import llm_router

    if llm_router is None or not group:
        return "its backends"
    found = [
        f"{d.get('model_info', {}).get('id')} ({d.get('litellm_params', {}).get('api_base')})"
        for d in llm_router.model_list
        if d.get("model_name") == group
    ]
    return ", ".join(found) or "its backends"


def router_cooldown() -> float:
    """The router's ``cooldown_time``: how long a failed backend gets no requests."""
    from litellm.proxy.proxy_server import llm_router

    return float(getattr(llm_router, "cooldown_time", None) or 5)


class BackendErrors(CustomLogger):
    """Answer 503 "backends unavailable", not LiteLLM's 429/500, when no backend of a group can answer."""

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: UserAPIKeyAuth,
        traceback_str: str | None = None,
    ) -> HTTPException | None:
        reason = unavailable_reason(original_exception)
        if reason is None:
            return None
        group = request_data.get("model")
        wait = math.ceil(getattr(original_exception, "cooldown_time", None) or router_cooldown())
        message = (
            f"The backends of model group '{group}' are unavailable: {reason}. Backends: "
            f"{deployments(group)}. This is not your key's rate limit or budget. Retry in {wait} s, or start "
            "the vLLM servers again."
        )
        return HTTPException(status_code=503, detail=message, headers={"retry-after": str(wait)})


backend_errors = BackendErrors()
