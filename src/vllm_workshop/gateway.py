"""The module 6 stack as real local processes: two vLLM servers, the LiteLLM proxy, Open WebUI.

LiteLLM and Open WebUI live in their own virtual environments (``.venv-gateway``, ``.venv-webui``, made by
``make gateway-install``): their pinned dependencies (openai 2.x, torch for Open WebUI's RAG) differ from
vLLM's. Keys and passwords are generated once into ``.lab/gateway/keys.json`` and reused; Open WebUI keeps its
data in ``.lab/webui``. Nothing is deleted when the stack stops.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_workshop.errors import LabError
from vllm_workshop.paths import project_root, state_dir
from vllm_workshop.planning import ReplicaPlan, replica_plan
from vllm_workshop.server import ManagedServer, VllmServer, free_port
from vllm_workshop.settings import LabSettings

GATEWAY_VENV = ".venv-gateway"
WEBUI_VENV = ".venv-webui"
MODEL_GROUP = "lab-model"
SERVED_NAME = "lab-model"
LAB_USER_EMAIL = "learner@workshop.local"


def gateway_dir() -> Path:
    """``.lab/gateway``: keys, request log and logs of the gateway processes."""
    path = state_dir() / "gateway"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_path() -> Path:
    """The LiteLLM proxy config in the repository."""
    return project_root() / "modules" / "06-gateway" / "litellm" / "config.yaml"


def executable(venv: str, name: str) -> Path:
    """A console script of one of the side environments, with the command that installs it when missing."""
    path = project_root() / venv / "bin" / name
    if not path.exists():
        raise LabError(f"{path} is missing. Fix: run `make gateway-install` in the workshop folder.")
    return path


def ensure_keys() -> dict[str, Any]:
    """Lab keys and the Open WebUI password, generated once (``.lab/gateway/keys.json``, mode 600)."""
    path = gateway_dir() / "keys.json"
    if path.exists():
        try:
            keys = json.loads(path.read_text())
            if not all(entry["alias"] and entry["key"] for entry in keys["keys"]):
                raise ValueError("a key without alias or value")
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(
                f"{path} is not a valid lab key file ({exc}). Fix: delete it (`rm {path}`) and restart the "
                "gateway; new keys are generated, and clients holding old keys must take the new ones."
            ) from None
        return keys
    keys = {
        "master": f"sk-master-{secrets.token_hex(12)}",
        "keys": [
            # A learner key: generous limits. Open WebUI uses it.
            {
                "alias": "learner",
                "key": f"sk-learner-{secrets.token_hex(12)}",
                "rpm_limit": 600,
                "max_budget": 5.0,
            },
            # Deliberately tight keys for the rate-limit and the budget lessons.
            {
                "alias": "ratelimited",
                "key": f"sk-rl-{secrets.token_hex(12)}",
                "rpm_limit": 3,
                "max_budget": None,
            },
            {
                "alias": "budgeted",
                "key": f"sk-bud-{secrets.token_hex(12)}",
                "rpm_limit": None,
                "max_budget": 1e-4,
            },
        ],
        "webui_password": secrets.token_urlsafe(12),
        "webui_secret": secrets.token_hex(16),
    }
    keys["keys"].insert(0, {"alias": "admin", "key": keys["master"], "rpm_limit": None, "max_budget": None})
    path.write_text(json.dumps(keys, indent=2) + "\n")
    path.chmod(0o600)
    return keys


def key_for(alias: str) -> str:
    """The API key of a lab key alias (``admin``, ``learner``, ``ratelimited``, ``budgeted``)."""
    for entry in ensure_keys()["keys"]:
        if entry["alias"] == alias:
            return entry["key"]
    raise LabError(f"no lab key named {alias!r}")


def read_request_log(path: Path | None = None) -> list[dict[str, Any]]:
    """Every record the gateway's request log holds (oldest first)."""
    path = path or gateway_dir() / "requests.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def litellm_server(backends: list[str], port: int | None = None) -> ManagedServer:
    """The LiteLLM proxy for two backend base URLs (``http://host:port/v1``)."""
    keys = ensure_keys()
    port = port or free_port()
    env = dict(os.environ)
    env.update(
        {
            "VLLM_A_API_BASE": backends[0],
            "VLLM_B_API_BASE": backends[1],
            "LITELLM_MASTER_KEY": keys["master"],
            "LAB_GATEWAY_KEYS": json.dumps(keys["keys"]),
            "LAB_GATEWAY_LOG": str(gateway_dir() / "requests.jsonl"),
            "PYTHONPATH": str(project_root() / "src"),
            "LITELLM_LOG": "INFO",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list
            "NO_DOCKER": "1",
        }
    )
    env.pop("DATABASE_URL", None)
    command = [
        str(executable(GATEWAY_VENV, "litellm")),
        "--config",
        str(config_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    return ManagedServer(
        command, name="litellm", port=port, health_path="/health/liveliness", env=env, log_dir=gateway_dir()
    )


def webui_server(gateway_url: str, port: int | None = None) -> ManagedServer:
    """Open WebUI against the gateway, with the lab user as its admin and data in ``.lab/webui``."""
    keys = ensure_keys()
    port = port or free_port()
    data = state_dir() / "webui"
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "DATA_DIR": str(data),
            # The gateway's port changes between runs: read connections from these variables on every start
            # instead of the copy Open WebUI saves in its database on the first start.
            "ENABLE_PERSISTENT_CONFIG": "False",
            "WEBUI_AUTH": "True",
            "WEBUI_ADMIN_EMAIL": LAB_USER_EMAIL,
            "WEBUI_ADMIN_PASSWORD": keys["webui_password"],
            "WEBUI_ADMIN_NAME": "Lab Learner",
            "WEBUI_SECRET_KEY": keys["webui_secret"],
            "ENABLE_SIGNUP": "False",
            "ENABLE_OLLAMA_API": "False",
            "ENABLE_OPENAI_API": "True",
            "OPENAI_API_BASE_URL": gateway_url + "/v1",
            "OPENAI_API_KEY": key_for("learner"),
            "OFFLINE_MODE": "True",
            "HF_HUB_OFFLINE": "1",
            "BYPASS_EMBEDDING_AND_RETRIEVAL": "True",
            "ENABLE_VERSION_UPDATE_CHECK": "False",
            "ENABLE_COMMUNITY_SHARING": "False",
            "ENABLE_TITLE_GENERATION": "False",
            "ENABLE_FOLLOW_UP_GENERATION": "False",
            "ENABLE_TAGS_GENERATION": "False",
            "ENABLE_AUTOCOMPLETE_GENERATION": "False",
            "DEFAULT_MODELS": MODEL_GROUP,
            "ANONYMIZED_TELEMETRY": "False",
            "SCARF_NO_ANALYTICS": "true",
            "DO_NOT_TRACK": "true",
        }
    )
    command = [str(executable(WEBUI_VENV, "open-webui")), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return ManagedServer(
        command, name="open-webui", port=port, health_path="/health", env=env, log_dir=gateway_dir()
    )


@dataclass
class GatewayStack:
    """Two vLLM backends, LiteLLM in front, optionally Open WebUI; ``start()``/``stop()`` or ``with``."""

    settings: LabSettings
    with_webui: bool = False
    gateway_port: int | None = None
    webui_port: int | None = None
    backends: list[VllmServer] = field(default_factory=list)
    gateway: ManagedServer | None = None
    webui: ManagedServer | None = None

    def start(self, timeout: float = 600) -> GatewayStack:
        """Start everything (backends first); on any failure, stop what was started and re-raise."""
        plan = self.replica_plan()
        try:
            for overrides, binding in zip(plan.engine_overrides, plan.bindings, strict=True):
                backend = VllmServer(
                    self.settings, served_model_name=SERVED_NAME, binding=binding, **overrides
                )
                self.backends.append(backend.launch())
                if (
                    not plan.start_together
                ):  # one GPU: the second profiles memory after the first holds its share
                    backend.wait_healthy(timeout)
            for backend in self.backends:
                backend.wait_healthy(timeout)
            self.gateway = litellm_server([b.openai_base_url for b in self.backends], self.gateway_port)
            self.gateway.start(timeout)
            if self.with_webui:
                self.webui = webui_server(self.gateway.base_url, self.webui_port)
                self.webui.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def replica_plan(self) -> ReplicaPlan:
        """Cores (CPU lane) or GPU memory share (GPU lane) of the two backends, from the planner."""
        return replica_plan(self.settings, replicas=2)

    def stop(self) -> None:
        """Stop every process (Open WebUI, the gateway, then the backends)."""
        for server in [self.webui, self.gateway, *self.backends]:
            if server is not None:
                server.stop()

    @property
    def openai_base_url(self) -> str:
        """The gateway's OpenAI base URL."""
        assert self.gateway is not None, "start() the stack first"
        return self.gateway.base_url + "/v1"

    def backend_ids(self) -> dict[str, str]:
        """``{api_base: "vllm-a" | "vllm-b"}`` as named in the LiteLLM config."""
        return {b.openai_base_url: name for b, name in zip(self.backends, ("vllm-a", "vllm-b"), strict=True)}

    def __enter__(self) -> GatewayStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
