"""Module 6 on the cluster, without a cluster: LiteLLM's virtual keys in PostgreSQL, limits and cache in
Redis, Open WebUI's own key (and the Job that registers it, run against a fake LiteLLM), and their wiring.

Schema, policy and schedulability of the same overlay are checked with every overlay (``test_k8s.py``,
``test_cluster_checks.py``); these tests check what is particular to the gateway.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from fake_openai import JsonHandler
from rendered import ROOT, by_kind, objects, one

from vllm_workshop import k8s

REGISTER = ROOT / "components" / "open-webui" / "register_key.py"
ENV_REF = re.compile(r"os\.environ/([A-Z_][A-Z0-9_]*)")


def litellm_config(objs: list[dict]) -> dict[str, str]:
    """The files of LiteLLM's rendered ConfigMap."""
    return next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("litellm-config"))[
        "data"
    ]


def container(objs: list[dict], kind: str, name: str) -> dict:
    return one(objs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def test_litellm_runs_the_database_image_of_the_pinned_version() -> None:
    pinned = re.search(r"LITELLM_PKG\s*\?=\s*litellm\[proxy\]==(\S+)", (ROOT / "Makefile").read_text())
    assert pinned, "LITELLM_PKG not found in the Makefile"
    image = container(objects("gateway-cpu"), "Deployment", "litellm")["image"]
    assert image == f"ghcr.io/berriai/litellm-database:v{pinned.group(1)}"  # Prisma engines baked in


def test_every_variable_the_litellm_config_reads_is_set_in_its_pod() -> None:
    objs = objects("gateway-cpu")
    config = litellm_config(objs)["config.yaml"]
    env = {e["name"] for e in container(objs, "Deployment", "litellm")["env"]}
    wanted = set(ENV_REF.findall(config))
    assert {"DATABASE_URL", "REDIS_HOST", "REDIS_PASSWORD", "LITELLM_MASTER_KEY"} <= wanted
    assert wanted <= env, f"the config reads variables the pod does not set: {sorted(wanted - env)}"
    settings = yaml.safe_load(config)
    assert settings["litellm_settings"]["cache_params"]["type"] == "redis"
    assert settings["general_settings"]["fail_closed_rate_limit_enforcement"] is True


def test_the_database_url_is_built_from_the_postgres_secret() -> None:
    env = {e["name"]: e for e in container(objects("gateway-cpu"), "Deployment", "litellm")["env"]}
    names = list(env)
    assert names.index("POSTGRES_PASSWORD") < names.index("DATABASE_URL")  # $(VAR) needs it defined first
    assert env["DATABASE_URL"]["value"] == "postgresql://litellm:$(POSTGRES_PASSWORD)@postgres:5432/litellm"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "litellm-postgres"
    postgres = {e["name"]: e for e in container(objects("gateway-cpu"), "StatefulSet", "postgres")["env"]}
    assert postgres["POSTGRES_PASSWORD"]["valueFrom"] == env["POSTGRES_PASSWORD"]["valueFrom"]


def test_the_cluster_ships_the_labs_backend_errors_callback_unchanged() -> None:
    lab = (ROOT / "src" / "vllm_workshop" / "gateway_errors.py").read_text()
    assert (ROOT / "components" / "litellm" / "gateway_errors.py").read_text() == lab, (
        "components/litellm/gateway_errors.py differs from src/vllm_workshop/gateway_errors.py: copy it over"
    )
    files = litellm_config(objects("gateway-cpu"))
    assert files["gateway_errors.py"] == lab
    assert (
        "gateway_errors.backend_errors"
        in yaml.safe_load(files["config.yaml"])["litellm_settings"]["callbacks"]
    )


def test_open_webui_never_sees_the_master_key() -> None:
    objs = objects("gateway-cpu")
    webui = one(objs, "Deployment", "open-webui")
    assert "litellm-master-key" not in k8s.secret_references(webui["spec"])
    env = {e["name"]: e for e in container(objs, "Deployment", "open-webui")["env"]}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "open-webui-litellm-key",
        "key": "WEBUI_LITELLM_KEY",
    }
    job = one(objs, "Job", "open-webui-key")
    assert {"litellm-master-key", "open-webui-litellm-key"} <= k8s.secret_references(job["spec"])


def test_every_secret_of_the_gateway_is_created_at_deploy() -> None:
    used = {name for obj in objects("gateway-cpu") for name in k8s.secret_references(obj.get("spec", {}))}
    assert used <= set(k8s.CLUSTER_SECRETS), (
        f"no deploy-time Secret for {sorted(used - set(k8s.CLUSTER_SECRETS))}"
    )
    assert not by_kind(objects("gateway-cpu"), "Secret")  # no value in the overlay


@pytest.mark.parametrize(("name", "port"), [("redis", 6379), ("postgres", 5432)])
def test_the_stores_admit_only_litellm_and_call_nothing(name: str, port: int) -> None:
    spec = one(objects("gateway-cpu"), "NetworkPolicy", name)["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["egress"] == []
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "litellm"}}}]
    assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
    litellm = one(objects("gateway-cpu"), "NetworkPolicy", "litellm")["spec"]
    assert any(
        rule.get("to") == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}]
        for rule in litellm["egress"]
    ), f"LiteLLM may not reach {name}"


def test_the_stores_keep_their_data_on_a_volume() -> None:
    objs = objects("gateway-cpu")
    for name, path in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data")):
        statefulset = one(objs, "StatefulSet", name)
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container(objs, "StatefulSet", name)["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == path
    assert "--appendonly" in container(objs, "StatefulSet", "redis")["args"]


# ------------------------------------------------------------------ the Job that registers Open WebUI's key


class FakeLiteLLM(JsonHandler):
    """/key/info and /key/generate as LiteLLM answers them; keys in memory, master key ``sk-master``."""

    keys: dict[str, dict[str, Any]] = {}
    generated: list[dict[str, Any]] = []

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self._json(body, status)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != "Bearer sk-master":
            self._answer(401, {"error": {"message": "Authentication Error, invalid master key"}})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        key = parse_qs(urlsplit(self.path).query).get("key", [""])[0]
        if key in self.keys:
            self._answer(200, {"key": key, "info": self.keys[key]})
        else:
            self._answer(404, {"error": {"message": "key not found"}})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.generated.append(body)
        self.keys[body["key"]] = body
        self._answer(200, {"key": body["key"], "key_alias": body["key_alias"]})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def litellm() -> Iterator[str]:
    FakeLiteLLM.keys, FakeLiteLLM.generated = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLiteLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def register(url: str, master: str = "sk-master", deadline: str = "20") -> subprocess.CompletedProcess[str]:
    """Run the Job's script as the Job does (its environment), against ``url``."""
    env = {
        **os.environ,
        "LITELLM_URL": url,
        "LITELLM_MASTER_KEY": master,
        "WEBUI_LITELLM_KEY": "sk-webui-abc",
        "KEY_ALIAS": "open-webui",
        "KEY_MODELS": "lab-model",
        "KEY_RPM_LIMIT": "600",
        "KEY_MAX_BUDGET": "5",
        "DEADLINE_S": deadline,
        "PAUSE_S": "0.2",
    }
    return subprocess.run(
        [sys.executable, str(REGISTER)], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_job_registers_open_webuis_key_once(litellm: str) -> None:
    first = register(litellm)
    assert first.returncode == 0 and "registered key 'open-webui'" in first.stdout, first
    assert FakeLiteLLM.generated == [
        {
            "key": "sk-webui-abc",
            "key_alias": "open-webui",
            "models": ["lab-model"],
            "rpm_limit": 600,
            "max_budget": 5.0,
        }
    ]
    again = register(litellm)
    assert again.returncode == 0 and "already registered" in again.stdout
    assert len(FakeLiteLLM.generated) == 1


def test_the_job_stops_at_once_on_a_refused_master_key(litellm: str) -> None:
    done = register(litellm, master="sk-wrong")
    assert done.returncode == 2 and "refused the master key" in done.stdout
    assert FakeLiteLLM.generated == []


def test_the_job_waits_for_litellm_then_gives_up_clearly() -> None:
    from vllm_workshop.server import free_port

    done = register(f"http://127.0.0.1:{free_port()}", deadline="1")
    assert done.returncode == 1 and "gave up registering Open WebUI's key: LiteLLM unreachable" in done.stderr


def test_the_job_runs_the_script_it_ships() -> None:
    objs = objects("gateway-cpu")
    script = next(
        o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("open-webui-key-script")
    )
    assert script["data"]["register_key.py"] == REGISTER.read_text()
    job = container(objs, "Job", "open-webui-key")
    assert job["command"] == ["python3", "/scripts/register_key.py"]
    assert Path(ROOT / "components" / "open-webui" / "job.yaml").exists()
