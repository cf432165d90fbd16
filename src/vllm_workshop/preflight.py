"""Preflight: is this machine ready to deploy an overlay? Each check says what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_workshop.errors import LabError
from vllm_workshop.kubetools import MIN_KUBECTL, client_version, find_kubectl

DEVICE_RESOURCES = {"nvidia": "nvidia.com/gpu", "neuron": "aws.amazon.com/neuroncore"}
PLUGIN_FIX = {
    "nvidia": "infra/eks/install-nvidia-device-plugin.sh",
    "neuron": "infra/eks/install-neuron-device-plugin.sh",
}


@dataclass(frozen=True)
class Check:
    """One preflight result."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


def allocatable_by_resource(nodes: list[dict]) -> dict[str, int]:
    """Sum of allocatable extended resources over Ready nodes (``{"nvidia.com/gpu": 2, ...}``)."""
    totals: dict[str, int] = {}
    for node in nodes:
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        if not ready:
            continue
        for key, value in node.get("status", {}).get("allocatable", {}).items():
            if key in DEVICE_RESOURCES.values():
                totals[key] = totals.get(key, 0) + int(value)
    return totals


def device_check(accelerator: str, nodes: list[dict]) -> Check:
    """Whether Ready nodes advertise the accelerator's device-plugin resource."""
    if accelerator == "cpu":
        return Check("devices", True, "CPU overlay: no device plugin needed")
    resource = DEVICE_RESOURCES[accelerator]
    count = allocatable_by_resource(nodes).get(resource, 0)
    if count:
        return Check("devices", True, f"{count} x {resource} allocatable")
    return Check(
        "devices",
        False,
        f"no Ready node advertises {resource}. Fix: create the node group (infra/eks/cluster.yaml) "
        f"and install the device plugin ({PLUGIN_FIX[accelerator]})",
    )


def run_preflight(accelerator: str = "cpu") -> list[Check]:
    """kubectl present and new enough, a context, reachable API, Ready nodes, device plugin resources."""
    if accelerator not in ("cpu", *DEVICE_RESOURCES):
        raise LabError(f"accelerator must be cpu, nvidia or neuron, not {accelerator!r}")
    checks: list[Check] = []
    try:
        kubectl = find_kubectl()
        version = client_version(kubectl)
        checks.append(
            Check("kubectl", True, f"{kubectl} (client {version[0]}.{version[1]})" if version else kubectl)
        )
    except LabError as exc:
        checks.append(Check("kubectl", False, f"{exc} (need >= {MIN_KUBECTL[0]}.{MIN_KUBECTL[1]})"))
        return checks

    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        contexts, active = config.list_kube_config_contexts()
        config.load_kube_config()
    except (ConfigException, FileNotFoundError, TypeError) as exc:
        checks.append(
            Check(
                "context",
                False,
                f"no usable kubeconfig ({exc}). Fix: set KUBECONFIG, or create a cluster with "
                "infra/kind/create-cluster.sh (laptop) or infra/eks/create-cluster.sh (EKS)",
            )
        )
        return checks
    checks.append(Check("context", True, f"{active['name']} ({len(contexts)} contexts in kubeconfig)"))
    try:
        nodes = client.CoreV1Api().list_node(_request_timeout=10).to_dict()["items"]
    except Exception as exc:  # the client raises urllib3, API and socket errors alike
        checks.append(Check("api server", False, f"not reachable: {str(exc).splitlines()[0][:200]}"))
        return checks
    checks.append(Check("api server", True, "reachable"))
    shaped = _camel_nodes(nodes)
    ready = [
        n
        for n in shaped
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    ]
    checks.append(Check("nodes", bool(ready), f"{len(ready)} of {len(nodes)} nodes Ready"))
    checks.append(device_check(accelerator, shaped))
    return checks


def _camel_nodes(nodes: list[dict]) -> list[dict]:
    """The client's snake_case node dicts in the API's shape (status.conditions/allocatable)."""
    shaped = []
    for node in nodes:
        status = node.get("status") or {}
        shaped.append(
            {
                "status": {
                    "conditions": [
                        {"type": c.get("type"), "status": c.get("status")}
                        for c in status.get("conditions") or []
                    ],
                    "allocatable": status.get("allocatable") or {},
                }
            }
        )
    return shaped
