"""Register Open WebUI's own key with LiteLLM: a virtual key scoped to the lab model (Job open-webui-key).

Open WebUI authenticates to the gateway with this key, never with the master key. The key's value comes from
the Secret ``open-webui-litellm-key`` (made by ``make deploy``); this script, which alone sees the master key,
creates the matching LiteLLM virtual key (``POST /key/generate`` with that value, its alias, models, rate
limit and budget) in LiteLLM's database. Idempotent: a key LiteLLM already knows is left as it is. It waits
for LiteLLM (it may still be migrating its database) until ``DEADLINE_S``; every call has a timeout.

Environment: LITELLM_URL, LITELLM_MASTER_KEY, WEBUI_LITELLM_KEY, KEY_ALIAS, KEY_MODELS (comma-separated),
KEY_RPM_LIMIT, KEY_MAX_BUDGET (dollars), DEADLINE_S. Standard library only: it runs in the Open WebUI image.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CALL_TIMEOUT_S = 10
PAUSE_S = float(os.environ.get("PAUSE_S", "5"))


def call(method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """One request to LiteLLM with the master key: ``(status, parsed body)``; OSError when unreachable."""
    request = urllib.request.Request(
        os.environ["LITELLM_URL"].rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {os.environ['LITELLM_MASTER_KEY']}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, raw.decode(errors="replace")


def wanted_key() -> dict:
    """The ``/key/generate`` body for Open WebUI's key."""
    models = [m.strip() for m in os.environ.get("KEY_MODELS", "lab-model").split(",") if m.strip()]
    return {
        "key": os.environ["WEBUI_LITELLM_KEY"],
        "key_alias": os.environ.get("KEY_ALIAS", "open-webui"),
        "models": models,
        "rpm_limit": int(os.environ.get("KEY_RPM_LIMIT", "600")),
        "max_budget": float(os.environ.get("KEY_MAX_BUDGET", "5")),
    }


def main() -> int:
    """Register the key (exit 0), or say why not: 2 for a refused master key, 1 when LiteLLM never did."""
    body = wanted_key()
    deadline = time.monotonic() + float(os.environ.get("DEADLINE_S", "900"))
    last = "no answer yet"
    while True:
        try:
            status, answer = call("GET", "/key/info?key=" + urllib.parse.quote(body["key"]))
            if status == 200:
                print(f"key '{body['key_alias']}' is already registered: nothing to do")
                return 0
            if status in (401, 403):
                print(f"LiteLLM refused the master key ({status}: {answer}); check Secret litellm-master-key")
                return 2
            status, answer = call("POST", "/key/generate", body)
            if status == 200:
                print(f"registered key '{body['key_alias']}' for models {body['models']}")
                return 0
            last = f"HTTP {status}: {answer}"
        except OSError as error:  # LiteLLM not listening yet, or a timeout
            last = f"LiteLLM unreachable: {error}"
        if time.monotonic() > deadline:
            print(f"gave up registering Open WebUI's key: {last}", file=sys.stderr)
            return 1
        print(f"waiting for LiteLLM ({last})", flush=True)
        time.sleep(PAUSE_S)


if __name__ == "__main__":
    sys.exit(main())
