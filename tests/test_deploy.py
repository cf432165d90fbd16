"""``k8s.deploy``/``undeploy`` and ``run_preflight`` against a fake ``kubectl`` that answers like a cluster.

The fake (written to ``tmp_path/bin``, first on PATH) logs every call with its stdin, renders with the real
kubectl, and for ``rollout status`` / ``wait`` blocks until the workload's ready time or its ``--timeout``, as
the real commands do.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from rendered import kubectl as real_kubectl

from vllm_workshop import k8s, kubetools
from vllm_workshop.errors import ClusterNotConfiguredError, LabError
from vllm_workshop.preflight import run_preflight

FAKE = """#!{python}
import json, os, sys, time
import yaml
state = json.load(open(os.environ["FAKE_KUBECTL_STATE"]))
args = sys.argv[1:]
stdin = sys.stdin.read() if "-f" in args else ""
with open(state["log"], "a") as log:
    log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")

def out(text, code=0, err=""):
    sys.stdout.write(text); sys.stderr.write(err); sys.exit(code)

if args[:2] == ["version", "--client"]:
    out(json.dumps({{"clientVersion": {{"major": "1", "minor": "33"}}}}))
if args[0] == "version":
    if state.get("unreachable"):
        out("", 1, "Unable to connect to the server: dial tcp 10.0.0.1:443: i/o timeout\\n")
    server = {{"gitVersion": "v1.33.4"}}
    out(json.dumps({{"clientVersion": {{"major": "1", "minor": "33"}}, "serverVersion": server}}))
if args[:2] == ["config", "current-context"]:
    if state.get("no_context"):
        out("", 1, "error: current-context is not set\\n")
    out("fake-eks\\n")
if args[0] == "kustomize":
    os.execv(state["real_kubectl"], [state["real_kubectl"], *args])
if args[0] == "-n":
    args = args[2:]
if args[0] == "apply":
    if state.get("deny"):
        out("", 1, state["deny"])
    docs = [d for d in yaml.safe_load_all(stdin) if d]
    out("".join(f"{{d['kind'].lower()}}/{{d['metadata']['name']}} serverside-applied\\n" for d in docs))
if args[:2] == ["get", "secret"]:
    out(f"secret/{{args[2]}}\\n" if args[2] in state.get("secrets", []) else "")
if args[:2] == ["get", "nodes"]:
    if state.get("api_down"):
        out("", 1, "The connection to the server was refused - did you specify the right host or port?\\n")
    out(json.dumps({{"items": state.get("nodes", [])}}))
if args[:2] == ["get", "deployments"]:
    out(json.dumps({{"items": [{{"metadata": {{"name": n}}}} for n in state.get("deployments", [])]}}))
if args[0] in ("rollout", "wait"):
    names = [a for a in args[1:] if "/" in a and not a.startswith("-")]
    target = args[2] if args[0] == "rollout" else names[0]
    timeout = float(next(a for a in args if a.startswith("--timeout=")).split("=")[1].rstrip("s"))
    ready_at, start = state.get("ready_at", {{}}).get(target, 0), time.time()
    while ready_at is None or time.time() < ready_at:
        if time.time() - start >= timeout:
            out("", 1, f"error: timed out waiting for the condition on {{target}}\\n")
        time.sleep(0.05)
    if args[0] == "rollout":
        out(f"{{target.replace('/', ' ')}} successfully rolled out\\n")
    out(f"{{target}} condition met\\n")
if args[0] == "delete":
    docs = [d for d in yaml.safe_load_all(stdin) if d]
    out("".join(f"{{d['kind'].lower()}}/{{d['metadata']['name']}} deleted\\n" for d in docs))
out("", 1, f"fake kubectl: unexpected call {{args}}\\n")
"""

GPU_NODE = {
    "status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "allocatable": {"cpu": "3920m", "nvidia.com/gpu": "1"},
    }
}
CPU_NODE = {"status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"cpu": "3920m"}}}


class FakeCluster:
    """The fake kubectl's state (what the cluster answers) and its call log."""

    def __init__(self, root: Path) -> None:
        self.path, self.log = root / "state.json", root / "calls.jsonl"
        self.state: dict = {"log": str(self.log), "real_kubectl": real_kubectl()}
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.state))

    def set(self, **values) -> None:
        self.state.update(values)
        self.save()

    def calls(self, verb: str | None = None) -> list[dict]:
        rows = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        for row in rows:
            row["verb"] = row["args"][2] if row["args"][0] == "-n" else row["args"][0]
        return [row for row in rows if verb is None or row["verb"] == verb]

    def applied(self) -> list[list[dict]]:
        return [[d for d in yaml.safe_load_all(row["stdin"]) if d] for row in self.calls("apply")]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch) -> FakeCluster:
    fake = FakeCluster(tmp_path)  # finds the real kubectl before the fake is on PATH
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(0o755)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("FAKE_KUBECTL_STATE", str(fake.path))
    for key in ("HF_TOKEN", "LITELLM_MASTER_KEY", "WEBUI_SECRET_KEY"):
        monkeypatch.delenv(key, raising=False)
    return fake


# ------------------------------------------------------------------------------------------------- deploy


def test_deploy_waits_for_the_leaderworkerset_to_become_available(cluster: FakeCluster) -> None:
    cluster.set(ready_at={"leaderworkerset/vllm-multinode": time.time() + 0.5})
    start = time.monotonic()
    out = k8s.deploy("lws-gpu-llama70b", timeout_s=60)
    assert time.monotonic() - start >= 0.5  # it waited until the group was ready
    assert "leaderworkerset/vllm-multinode condition met" in out
    waits = [row["args"] for row in cluster.calls() if "wait" in row["args"] or "rollout" in row["args"]]
    assert len(waits) == 1
    assert waits[0][:5] == [
        "-n",
        "vllm-workshop",
        "wait",
        "--for=condition=Available",
        "leaderworkerset/vllm-multinode",
    ]


def test_deploy_waits_for_the_rayservice_to_be_ready(cluster: FakeCluster) -> None:
    cluster.set(ready_at={"rayservice/llm-serve": time.time() + 0.3})
    out = k8s.deploy("kuberay-gpu-qwen", timeout_s=60)
    assert "rayservice/llm-serve condition met" in out
    (wait,) = [row["args"] for row in cluster.calls("wait")]
    assert wait[3:5] == ["--for=condition=Ready", "rayservice/llm-serve"]


def test_deploy_waits_for_every_deployment_and_creates_the_gateway_secrets(cluster: FakeCluster) -> None:
    out = k8s.deploy("gateway-cpu", timeout_s=60)
    rollouts = sorted(row["args"][4] for row in cluster.calls("rollout"))
    assert rollouts == [
        "deployment/litellm",
        "deployment/open-webui",
        "deployment/vllm",
        "statefulset/postgres",
        "statefulset/redis",
    ]
    (job,) = [row["args"] for row in cluster.calls("wait")]  # the Job that registers Open WebUI's key
    assert job[3:5] == ["--for=condition=Complete", "job/open-webui-key"]
    namespaces, *secrets, everything = cluster.applied()
    assert [o["kind"] for o in namespaces] == ["Namespace"]  # first, so the Secrets have a namespace
    created = {s[0]["metadata"]["name"]: s[0]["stringData"] for s in secrets}
    assert set(created) == {
        "litellm-master-key",
        "litellm-salt-key",
        "litellm-postgres",
        "redis-auth",
        "open-webui-secret",
        "open-webui-litellm-key",
    }
    assert created["open-webui-litellm-key"]["WEBUI_LITELLM_KEY"].startswith("sk-webui-")
    assert (
        created["open-webui-litellm-key"]["WEBUI_LITELLM_KEY"]
        != created["litellm-master-key"]["LITELLM_MASTER_KEY"]
    )
    assert created["litellm-master-key"]["LITELLM_MASTER_KEY"].startswith("sk-")
    assert len(created["open-webui-secret"]["WEBUI_SECRET_KEY"]) == 32
    assert {o["kind"] for o in everything} >= {"Deployment", "Service", "NetworkPolicy"}
    assert "secret/litellm-master-key: created" in out


def test_deploy_keeps_an_existing_secret_and_takes_values_from_the_environment(
    cluster: FakeCluster, monkeypatch
) -> None:
    cluster.set(
        secrets=[
            "open-webui-secret",
            "open-webui-litellm-key",
            "litellm-salt-key",
            "litellm-postgres",
            "redis-auth",
        ]
    )
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-mine")
    out = k8s.deploy("gateway-cpu", wait=False)
    applied = [docs[0] for docs in cluster.applied() if docs[0]["kind"] == "Secret"]
    assert [(s["metadata"]["name"], s["stringData"]) for s in applied] == [
        ("litellm-master-key", {"LITELLM_MASTER_KEY": "sk-mine"})
    ]
    assert (
        "secret/open-webui-secret: kept" in out
        and "secret/litellm-master-key: from $LITELLM_MASTER_KEY" in out
    )
    assert not cluster.calls("rollout")


def test_hf_token_goes_to_the_cluster_only(cluster: FakeCluster, monkeypatch) -> None:
    out = k8s.deploy("gpu-llama31-8b", wait=False)
    assert "secret/hf-token: not created" in out  # optional: public models need none
    assert not [d for docs in cluster.applied() for d in docs if d["kind"] == "Secret"]
    token = "hf_" + "t" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    k8s.deploy("gpu-llama31-8b", wait=False)
    (secret,) = [d for docs in cluster.applied() for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"] == {
        "name": "hf-token",
        "namespace": "vllm-workshop",
        "labels": {"app.kubernetes.io/part-of": "vllm-workshop"},
    }
    assert secret["stringData"] == {"HF_TOKEN": token}


def test_deploy_fails_when_a_workload_never_becomes_ready(cluster: FakeCluster) -> None:
    cluster.set(ready_at={"deployment/vllm": None})
    with pytest.raises(LabError, match="timed out waiting for the condition on deployment/vllm"):
        k8s.deploy("cpu-lab", timeout_s=1)


def test_deploy_reports_what_the_api_server_rejected(cluster: FakeCluster) -> None:
    denial = (
        'Error from server (Forbidden): pods "x" is forbidden: violates PodSecurity "restricted:latest"\n'
    )
    cluster.set(deny=denial)
    with pytest.raises(LabError, match="violates PodSecurity"):
        k8s.deploy("cpu-lab")
    assert not cluster.calls("rollout")


def test_deploy_to_an_unreachable_cluster_applies_nothing(cluster: FakeCluster) -> None:
    cluster.set(unreachable=True)
    with pytest.raises(ClusterNotConfiguredError, match="i/o timeout"):
        k8s.deploy("cpu-lab")
    assert not cluster.calls("apply")


def test_undeploy_deletes_what_the_overlay_renders(cluster: FakeCluster) -> None:
    out = k8s.undeploy("lws-gpu-llama70b")
    (delete,) = cluster.calls("delete")
    assert delete["args"][:3] == ["delete", "--ignore-not-found", "--wait=true"]
    kinds = {d["kind"] for d in yaml.safe_load_all(delete["stdin"]) if d}
    assert {"Namespace", "LeaderWorkerSet", "PersistentVolumeClaim", "NetworkPolicy"} <= kinds
    assert "leaderworkerset/vllm-multinode deleted" in out


# ---------------------------------------------------------------------------------------------- preflight


def test_preflight_on_a_gpu_cluster(cluster: FakeCluster) -> None:
    cluster.set(nodes=[GPU_NODE, CPU_NODE])
    checks = run_preflight("nvidia")
    assert [(c.name, c.ok) for c in checks] == [
        ("kubectl", True),
        ("context", True),
        ("api server", True),
        ("nodes", True),
        ("devices", True),
    ]
    assert checks[-1].detail == "1 x nvidia.com/gpu allocatable"


def test_preflight_without_a_context(cluster: FakeCluster) -> None:
    cluster.set(no_context=True)
    *_, last = run_preflight("cpu")
    assert (last.name, last.ok) == ("context", False)
    assert "current-context is not set" in last.detail


def test_preflight_with_the_api_server_down(cluster: FakeCluster) -> None:
    cluster.set(api_down=True)
    *_, last = run_preflight("cpu")
    assert (last.name, last.ok) == (
        "api server",
        False,
    ) and "connection to the server was refused" in last.detail


def test_preflight_accepts_scale_from_zero_only_with_a_cluster_autoscaler(cluster: FakeCluster) -> None:
    cluster.set(nodes=[CPU_NODE])
    devices = run_preflight("nvidia")[-1]
    assert not devices.ok and "install-nvidia-device-plugin.sh" in devices.detail
    cluster.set(nodes=[CPU_NODE], deployments=["coredns", "cluster-autoscaler-aws-cluster-autoscaler"])
    devices = run_preflight("nvidia")[-1]
    assert devices.ok and "cluster autoscaler adds one" in devices.detail


def test_preflight_needs_the_neuron_scheduler_for_neuron(cluster: FakeCluster) -> None:
    cluster.set(nodes=[CPU_NODE], deployments=["cluster-autoscaler"])
    scheduler = run_preflight("neuron")[-1]
    assert (scheduler.name, scheduler.ok) == (
        "neuron scheduler",
        False,
    ) and "my-scheduler" in scheduler.detail
    cluster.set(nodes=[CPU_NODE], deployments=["cluster-autoscaler", "my-scheduler", "k8s-neuron-scheduler"])
    assert all(check.ok for check in run_preflight("neuron"))


def test_preflight_without_kubectl_says_make_tools(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kubetools.shutil, "which", lambda name: None)
    monkeypatch.setattr(kubetools, "tools_dir", lambda: tmp_path / "empty")
    (check,) = run_preflight("cpu")
    assert (check.name, check.ok) == ("kubectl", False) and "make tools" in check.detail
