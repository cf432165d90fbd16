"""Policy checks a platform team runs on rendered manifests before they reach a cluster.

Each check takes the rendered objects and returns human-readable violations (empty list: compliant).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from typing import Any

Obj = dict[str, Any]
ACCELERATORS = ("nvidia.com/gpu", "aws.amazon.com/neuroncore", "aws.amazon.com/neuron", "amd.com/gpu")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
MIN_STARTUP_BUDGET_S = 600  # a model load on a cold node takes minutes
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")


def _name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_specs(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """``(owner, pod spec)`` for every workload, including pod templates nested in custom resources."""
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            yield _name(obj), obj["spec"]["template"]["spec"]
        else:
            yield from (
                (f"{_name(obj)}{path}", spec) for path, spec in _nested_templates(obj.get("spec", {}))
            )


def _nested_templates(node: Any, path: str = "") -> Iterator[tuple[str, Obj]]:
    if isinstance(node, dict):
        if "containers" in node and isinstance(node["containers"], list):
            yield path, node
            return
        for key, value in node.items():
            yield from _nested_templates(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _nested_templates(value, f"{path}[{index}]")


def containers(objects: list[Obj]) -> Iterator[tuple[str, Obj, Obj]]:
    """``(owner/container, container, pod spec)`` for every container of every pod template."""
    for owner, spec in pod_specs(objects):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{owner}:{container['name']}", container, spec


def accelerator_limits_equal_requests(objects: list[Obj]) -> list[str]:
    """Extended resources cannot be overcommitted: limits must equal requests."""
    problems = []
    for name, container, _ in containers(objects):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for key in ACCELERATORS:
            if (key in requests or key in limits) and str(requests.get(key)) != str(limits.get(key)):
                problems.append(f"{name}: {key} request {requests.get(key)} != limit {limits.get(key)}")
    return problems


def resource_requests_set(objects: list[Obj]) -> list[str]:
    """Every container asks for CPU and memory, so the scheduler can place it."""
    problems = []
    for name, container, _ in containers(objects):
        requests = container.get("resources", {}).get("requests", {})
        missing = [key for key in ("cpu", "memory") if key not in requests]
        if missing:
            problems.append(f"{name}: no {' / '.join(missing)} request")
    return problems


def serves_vllm(container: Obj) -> bool:
    """True for a container that runs the vLLM HTTP server (not a Ray worker that only joins a cluster)."""
    line = " ".join(str(part) for part in container.get("command", []) + container.get("args", []))
    return "vllm serve" in line or "vllm.entrypoints" in line


def probes_on_health(objects: list[Obj]) -> list[str]:
    """vLLM containers have startup, readiness and liveness probes on /health; startup allows a slow load."""
    problems = []
    for name, container, _ in containers(objects):
        if not serves_vllm(container):
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container.get(probe)
            if not spec:
                problems.append(f"{name}: no {probe}")
            elif spec.get("httpGet", {}).get("path") != "/health":
                problems.append(f"{name}: {probe} does not check /health")
        startup = container.get("startupProbe") or {}
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        if startup and budget < MIN_STARTUP_BUDGET_S:
            problems.append(f"{name}: startupProbe allows only {budget} s for the model load")
    return problems


def restricted_security_context(objects: list[Obj]) -> list[str]:
    """The Pod Security Standard "restricted" profile, plus no service account token."""
    problems = []
    for owner, spec in pod_specs(objects):
        pod = spec.get("securityContext", {})
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{owner}: uses host namespaces")
        if any("hostPath" in volume for volume in spec.get("volumes", [])):
            problems.append(f"{owner}: mounts a hostPath volume")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{owner}: service account token is mounted")
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container.get("securityContext", {})
            name = f"{owner}:{container['name']}"
            if not (ctx.get("runAsNonRoot") or pod.get("runAsNonRoot")):
                problems.append(f"{name}: runAsNonRoot is not set")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if ctx.get("privileged"):
                problems.append(f"{name}: privileged")
            if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                problems.append(f"{name}: capabilities are not dropped (drop: [ALL])")
            seccomp = (ctx.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{name}: seccompProfile is {seccomp}, not RuntimeDefault")
    for obj in objects:
        if obj["kind"] == "ServiceAccount" and obj.get("automountServiceAccountToken") is not False:
            problems.append(f"{_name(obj)}: automountServiceAccountToken is not false")
    return problems


def images_pinned(objects: list[Obj]) -> list[str]:
    """Every image has an explicit tag or digest, never ``latest``."""
    problems = []
    for name, container, _ in containers(objects):
        image = container.get("image", "")
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        if not repository or "/" in tag or not tag or tag == "latest":
            problems.append(f"{name}: image {image!r} is not pinned to a tag")
    return problems


def no_secret_values(objects: list[Obj]) -> list[str]:
    """Secrets in the rendered output carry no literal token (only what the local env file provides)."""
    problems = []
    for obj in objects:
        if obj["kind"] != "Secret":
            continue
        for key, value in {**obj.get("data", {}), **obj.get("stringData", {})}.items():
            text = (
                value
                if key in obj.get("stringData", {})
                else base64.b64decode(value).decode(errors="replace")
            )
            if TOKEN_PATTERN.search(text):
                problems.append(f"{_name(obj)}: key {key} holds a Hugging Face token")
    return problems


CHECKS: dict[str, Callable[[list[Obj]], list[str]]] = {
    "accelerator limits equal requests": accelerator_limits_equal_requests,
    "cpu and memory requests": resource_requests_set,
    "probes on /health": probes_on_health,
    "restricted security context": restricted_security_context,
    "images pinned": images_pinned,
    "no secret values": no_secret_values,
}


def check_all(objects: list[Obj]) -> dict[str, list[str]]:
    """Every check's violations, by check name."""
    return {title: check(objects) for title, check in CHECKS.items()}
