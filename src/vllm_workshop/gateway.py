"""The module 6 stack as real local processes: Redis, two vLLM servers, the LiteLLM proxy, Open WebUI.

LiteLLM and Open WebUI live in their own virtual environments (``.venv-gateway``, ``.venv-webui``, made by
``make gateway-install``): their pinned dependencies (openai 2.x, torch for Open WebUI's RAG) differ from
vLLM's. Keys and passwords are generated once into ``.lab/gateway/keys.json`` (the learner's copy of the key
values); the proxy checks keys, scopes, budgets and revocations against Redis (:mod:`vllm_workshop.store`),
where spend and rate-limit counters live too, so they survive a proxy restart and are shared by every proxy on
that Redis. Open WebUI has its own key, scoped to the lab model, and keeps its data in ``.lab/webui``.
Nothing is deleted when the stack stops.
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
from vllm_workshop.server import ManagedServer, free_port, start_replicas
from vllm_workshop.settings import LabSettings
from vllm_workshop.store import KeyStore, RedisAddress, connect, start_store
from vllm_workshop.tools import serve_args as tool_args

GATEWAY_VENV = ".venv-gateway"
WEBUI_VENV = ".venv-webui"
MODEL_GROUP = "lab-model"
SERVED_NAME = "lab-model"
LAB_USER_EMAIL = "learner@workshop.local"
BACKEND_NAMES = ("vllm-a", "vllm-b")  # model_info.id of the two deployments in the LiteLLM config


def standard_keys(master: str) -> list[dict[str, Any]]:
    """The lab's keys: the master key, a learner key, Open WebUI's own key, and two deliberately tight ones.

    ``models`` scopes a key to model groups (None: all of them); ``rpm_limit`` is requests per minute;
    ``max_budget`` is dollars at the lab prices of the LiteLLM config.
    """

    def key(
        alias: str, prefix: str, rpm: int | None, budget: float | None, models: list[str] | None = None
    ) -> dict[str, Any]:
        return {
            "alias": alias,
            "key": f"sk-{prefix}-{secrets.token_hex(12)}",
            "rpm_limit": rpm,
            "max_budget": budget,
            "models": models,
        }

    return [
        {"alias": "admin", "key": master, "rpm_limit": None, "max_budget": None, "models": None},
        key("learner", "learner", 600, 5.0),
        key("webui", "webui", 600, 5.0, [MODEL_GROUP]),  # Open WebUI's key: the lab model only
        key("ratelimited", "rl", 3, None),
        key("budgeted", "bud", None, 1e-4),
    ]


def gateway_dir() -> Path:
    """``.lab/gateway``: keys, request log and logs of the gateway processes."""
    path = state_dir() / "gateway"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_path() -> Path:
    """The LiteLLM proxy config in the repository."""
    return project_root() / "modules" / "06-gateway" / "litellm" / "config.yaml"


def config_with_metrics(path: Path | None = None) -> Path:
    """The lab's LiteLLM config with LiteLLM's ``prometheus`` callback added (``/metrics`` on the proxy's
    port, behind the master key); written to ``.lab/gateway/`` and returned."""
    import yaml

    config = yaml.safe_load(config_path().read_text())
    callbacks = config.setdefault("litellm_settings", {}).setdefault("callbacks", [])
    if "prometheus" not in callbacks:
        callbacks.append("prometheus")
    out = path or gateway_dir() / "config-metrics.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def config_with_models(models: dict[str, str], path: Path | None = None) -> Path:
    """The lab's LiteLLM config plus one model group per ``{gateway name: "provider/served name"}`` on backend
    A (e.g. ``"hosted_vllm/persona"``, a LoRA adapter the backend serves under its own name); written to
    ``.lab/gateway/`` and returned."""
    import yaml

    config = yaml.safe_load(config_path().read_text())
    template = next(m for m in config["model_list"] if m["model_info"]["id"] == "vllm-a")
    for name, model in models.items():
        if "/" not in model:
            raise LabError(f"{name}: give the LiteLLM provider too, e.g. hosted_vllm/{model}")
        params = {**template["litellm_params"], "model": model}
        group = {"model_name": name, "litellm_params": params, "model_info": {"id": name}}
        config["model_list"].append(group)
    path = path or gateway_dir() / f"config-{'-'.join(models)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def executable(venv: str, name: str) -> Path:
    """A console script of one of the side environments, with the command that installs it when missing."""
    path = project_root() / venv / "bin" / name
    if not path.exists():
        raise LabError(f"{path} is missing. Fix: run `make gateway-install` in the workshop folder.")
    return path


def _write_keys(path: Path, keys: dict[str, Any]) -> None:
    path.write_text(json.dumps(keys, indent=2) + "\n")
    path.chmod(0o600)


def ensure_keys() -> dict[str, Any]:
    """Lab keys and the Open WebUI password, generated once (``.lab/gateway/keys.json``, mode 600).

    A file from an earlier version of the lab gets the keys it lacks (Open WebUI's own key) added.
    """
    path = gateway_dir() / "keys.json"
    if not path.exists():
        master = f"sk-master-{secrets.token_hex(12)}"
        keys = {
            "master": master,
            "keys": standard_keys(master),
            "webui_password": secrets.token_urlsafe(12),
            "webui_secret": secrets.token_hex(16),
        }
        _write_keys(path, keys)
        return keys
    try:
        keys = json.loads(path.read_text())
        if not all(entry["alias"] and entry["key"] for entry in keys["keys"]):
            raise ValueError("a key without alias or value")
        aliases = {entry["alias"] for entry in keys["keys"]}
        missing = [entry for entry in standard_keys(keys["master"]) if entry["alias"] not in aliases]
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(
            f"{path} is not a valid lab key file ({exc}). Fix: delete it (`rm {path}`) and restart the "
            "gateway; new keys are generated, and clients holding old keys must take the new ones."
        ) from None
    if missing:
        keys["keys"] += missing
        _write_keys(path, keys)
    return keys


def rotate_key(alias: str) -> str:
    """Give a lab key a new value (same alias and limits) in ``keys.json``; returns it. The old value stops
    working once the store is synced (:meth:`GatewayStack.rotate_key`), and the new one starts with no spend
    and no rate-limit history."""
    keys = ensure_keys()
    if alias == "admin":
        raise LabError("the master key is fixed when the proxy starts: delete keys.json to replace all keys")
    for entry in keys["keys"]:
        if entry["alias"] == alias:
            entry["key"] = f"{entry['key'].rsplit('-', 1)[0]}-{secrets.token_hex(12)}"
            _write_keys(gateway_dir() / "keys.json", keys)
            return str(entry["key"])
    raise LabError(f"no lab key named {alias!r}")


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


def litellm_server(
    backends: list[str], store: RedisAddress, port: int | None = None, config: Path | None = None
) -> ManagedServer:
    """The LiteLLM proxy for two backend base URLs (``http://host:port/v1``), keys and limits in ``store``;
    ``config`` replaces the lab's config file (see :func:`config_with_models`)."""
    keys = ensure_keys()
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}  # only the store given here
    env.update(
        {
            "VLLM_A_API_BASE": backends[0],
            "VLLM_B_API_BASE": backends[1],
            "LITELLM_MASTER_KEY": keys["master"],
            "LAB_REDIS_URL": store.secret_url,
            "REDIS_HOST": store.host,
            "REDIS_PORT": str(store.port),
            **({"REDIS_PASSWORD": store.password} if store.password else {}),
            # After Redis was unreachable LiteLLM stops using it for this long (its default: 60 s); the lab's
            # Redis restarts in a second, so the proxy tries it again sooner.
            "REDIS_CIRCUIT_BREAKER_RECOVERY_TIMEOUT": "5",
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
        str(config or config_path()),
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
            "OPENAI_API_KEY": key_for("webui"),  # its own key, scoped to the lab model: never the master key
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


def openai_url(server: ManagedServer) -> str:
    """The OpenAI base URL (``http://host:port/v1``) of a backend server."""
    return server.base_url + "/v1"


@dataclass
class GatewayStack:
    """Redis, two vLLM backends, LiteLLM in front, optionally Open WebUI; ``start()``/``stop()`` or ``with``.

    ``redis_url`` (default ``$LAB_REDIS_URL``) points at a Redis you run; without one the stack starts
    Debian's ``redis-server`` with its files in ``redis_dir`` (default ``.lab/redis``), or reuses the one
    another stack started there. ``backends`` given before ``start()`` are used instead of two vLLM servers
    (tests use small fake servers).
    """

    settings: LabSettings
    with_webui: bool = False
    gateway_port: int | None = None
    webui_port: int | None = None
    redis_url: str | None = None
    redis_dir: Path | None = None
    backends: list[ManagedServer] = field(default_factory=list)
    gateway: ManagedServer | None = None
    webui: ManagedServer | None = None
    store: ManagedServer | None = None  # the Redis this stack started (None when it uses another's)
    store_address: RedisAddress | None = None
    config: Path | None = None  # another LiteLLM config (default: the lab's)

    def start(self, timeout: float = 600) -> GatewayStack:
        """Start the store, the backends, the proxy (and Open WebUI); on a failure stop them all, re-raise."""
        try:
            self.store_address = self.start_store()
            self.keys().sync(ensure_keys()["keys"])
            if self.backends:
                for backend in self.backends:
                    backend.start(timeout)
            else:
                self.start_backends(timeout)
            self.gateway = litellm_server(
                [openai_url(b) for b in self.backends], self.store_address, self.gateway_port, self.config
            )
            self.gateway.start(timeout)
            if self.with_webui:
                self.webui = webui_server(self.gateway.base_url, self.webui_port)
                self.webui.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_store(self) -> RedisAddress:
        """The Redis to use: ``redis_url`` / ``$LAB_REDIS_URL`` if set (checked now), else the lab's own."""
        url = self.redis_url or os.environ.get("LAB_REDIS_URL")
        if url:
            return connect(url)
        address, self.store = start_store(self.redis_dir or state_dir() / "redis")
        return address

    def start_backends(self, timeout: float) -> None:
        """Two vLLM servers as the planner says: own cores each on the CPU, a memory share each on one GPU."""
        try:
            tools = tool_args(self.settings.model)  # the gateway passes tools through: vLLM must parse calls
        except LabError as exc:  # a model whose tool format the lab does not know: serve it without tools
            print(f"note: {exc}", flush=True)
            tools = []
        start_replicas(
            self.settings, 2, timeout, self.backends, served_model_name=SERVED_NAME, extra_args=tools
        )

    def replica_plan(self) -> ReplicaPlan:
        """Cores (CPU lane) or GPU memory share (GPU lane) of the two backends, from the planner."""
        return replica_plan(self.settings, replicas=2)

    def stop(self) -> None:
        """Stop every process (Open WebUI, the gateway, the backends, then the Redis this stack started)."""
        for server in [self.webui, self.gateway, *self.backends, self.store]:
            if server is not None:
                server.stop()

    def restart_gateway(self, timeout: float = 120) -> None:
        """Stop the proxy and start it again on the same port: its memory is gone, Redis is not."""
        assert self.gateway is not None, "start() the stack first"
        self.gateway.stop()
        self.gateway.start(timeout)

    def restart_backend(self, index: int, timeout: float = 600) -> ManagedServer:
        """Start a (crashed) backend again on its port; its log keeps the earlier run above a banner."""
        backend = self.backends[index]
        backend.stop()
        return backend.start(timeout)

    def keys(self) -> KeyStore:
        """The key registry, spend and revocations in this stack's Redis."""
        assert self.store_address is not None, "start() the stack first"
        return KeyStore(self.store_address)

    def rotate_key(self, alias: str) -> str:
        """A new value for a lab key, effective at once: the old one is refused, the new one starts afresh."""
        key = rotate_key(alias)
        self.keys().sync(ensure_keys()["keys"])
        return key

    def revoke_key(self, alias: str) -> None:
        """Refuse a lab key from now on (on every proxy that uses this Redis)."""
        self.keys().revoke(key_for(alias))

    def spend(self) -> dict[str, float]:
        """Dollars spent per key alias, as the store holds them."""
        return self.keys().spend()

    @property
    def openai_base_url(self) -> str:
        """The gateway's OpenAI base URL."""
        assert self.gateway is not None, "start() the stack first"
        return self.gateway.base_url + "/v1"

    def backend_ids(self) -> dict[str, str]:
        """``{api_base: "vllm-a" | "vllm-b"}`` as named in the LiteLLM config."""
        return {openai_url(b): name for b, name in zip(self.backends, BACKEND_NAMES, strict=True)}

    def __enter__(self) -> GatewayStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
