"""Preflight: is this machine ready to deploy an overlay? Each check says what is wrong and how to fix it.

Everything goes through ``kubectl`` (the one ``make tools`` provides), with a timeout on every call, so the
checks ask the cluster exactly what a learner's own ``kubectl`` would see.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from vllm_workshop.errors import LabError
from vllm_workshop.kubetools import MIN_KUBECTL, client_version, find_kubectl

DEVICE_RESOURCES = {"nvidia": "nvidia.com/gpu", "neuron": "aws.amazon.com/neuroncore"}
PLUGIN_FIX = {
    "nvidia": "infra/eks/install-nvidia-device-plugin.sh",
    "neuron": "infra/eks/install-neuron-device-plugin.sh",
}
NEURON_SCHEDULER = "my-scheduler"  # components/neuron-inf2 schedules with it
KUBECTL_TIMEOUT_S = 30


@dataclass(frozen=True)
class Check:
    """One preflight result."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


def _ready(node: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


def allocatable_by_resource(nodes: list[dict]) -> dict[str, int]:
    """Sum of allocatable extended resources over Ready nodes (``{"nvidia.com/gpu": 2, ...}``)."""
    totals: dict[str, int] = {}
    for node in filter(_ready, nodes):
        for key, value in node.get("status", {}).get("allocatable", {}).items():
            if key in DEVICE_RESOURCES.values():
                totals[key] = totals.get(key, 0) + int(value)
    return totals


def device_check(accelerator: str, nodes: list[dict], autoscaler: bool = False) -> Check:
    """Whether Ready nodes advertise the accelerator's device-plugin resource (or can be added for it)."""
    if accelerator == "cpu":
        return Check("devices", True, "CPU overlay: no device plugin needed")
    resource = DEVICE_RESOURCES[accelerator]
    count = allocatable_by_resource(nodes).get(resource, 0)
    if count:
        return Check("devices", True, f"{count} x {resource} allocatable")
    if autoscaler:
        return Check(
            "devices",
            True,
            f"no node advertises {resource} now; the cluster autoscaler adds one when a pod asks for it "
            "(the accelerator node groups scale from zero)",
        )
    return Check(
        "devices",
        False,
        f"no Ready node advertises {resource}. Fix: create the node group (infra/eks/cluster.yaml) "
        f"and install the device plugin ({PLUGIN_FIX[accelerator]})",
    )


def _kubectl(kubectl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl, *args], capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no answer"])[-1][:200]


def run_preflight(accelerator: str = "cpu") -> list[Check]:
    """kubectl present and new enough, a context, reachable API, Ready nodes, device resources, schedulers."""
    if accelerator not in ("cpu", *DEVICE_RESOURCES):
        raise LabError(f"accelerator must be cpu, nvidia or neuron, not {accelerator!r}")
    checks: list[Check] = []
    try:
        kubectl = find_kubectl(install=False)
    except LabError as exc:
        return [Check("kubectl", False, f"{exc} (need >= {MIN_KUBECTL[0]}.{MIN_KUBECTL[1]})")]
    version = client_version(kubectl)
    checks.append(
        Check("kubectl", True, f"{kubectl} (client {version[0]}.{version[1]})" if version else kubectl)
    )
    try:
        context = _kubectl(kubectl, "config", "current-context")
        if context.returncode != 0:
            checks.append(
                Check(
                    "context",
                    False,
                    f"no usable kubeconfig ({_first_line(context.stderr)}). Fix: set KUBECONFIG, or create a "
                    "cluster with infra/kind/create-cluster.sh (laptop) or infra/eks/create-cluster.sh (EKS)",
                )
            )
            return checks
        checks.append(Check("context", True, context.stdout.strip()))
        listing = _kubectl(kubectl, "get", "nodes", "-o", "json", "--request-timeout=10s")
        if listing.returncode != 0:
            checks.append(Check("api server", False, f"not reachable: {_first_line(listing.stderr)}"))
            return checks
        nodes = json.loads(listing.stdout).get("items", [])
    except subprocess.TimeoutExpired:
        checks.append(Check("api server", False, f"kubectl did not answer within {KUBECTL_TIMEOUT_S} s"))
        return checks
    checks.append(Check("api server", True, "reachable"))
    ready = [n for n in nodes if _ready(n)]
    checks.append(Check("nodes", bool(ready), f"{len(ready)} of {len(nodes)} nodes Ready"))
    deployments = _kubectl(kubectl, "get", "deployments", "-A", "-o", "json", "--request-timeout=10s")
    names = [d["metadata"]["name"] for d in json.loads(deployments.stdout or "{}").get("items", [])]
    autoscaler = any("cluster-autoscaler" in name for name in names)
    checks.append(device_check(accelerator, nodes, autoscaler))
    if accelerator == "neuron":
        found = NEURON_SCHEDULER in names
        missing = (
            f"no {NEURON_SCHEDULER} deployment: Neuron pods would stay Pending. Fix: {PLUGIN_FIX['neuron']}"
        )
        detail = f"{NEURON_SCHEDULER} runs" if found else missing
        checks.append(Check("neuron scheduler", found, detail))
    return checks
