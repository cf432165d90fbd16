"""Policy checks a platform team runs on rendered manifests before they reach a cluster.

Each check takes the rendered objects and returns human-readable violations (empty list: compliant). Checks
on pods look at the pods as they will run (:func:`vllm_workshop.operators.runtime_pods`), so a container an
operator injects (KubeRay's autoscaler sidecar, its ``wait-gcs-ready`` init container) is checked too.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from typing import Any

from vllm_workshop.operators import RuntimePod, runtime_pods

Obj = dict[str, Any]
ACCELERATORS = ("nvidia.com/gpu", "aws.amazon.com/neuroncore", "aws.amazon.com/neuron", "amd.com/gpu")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
MIN_STARTUP_BUDGET_S = 600  # a model load on a cold node takes minutes
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")
# Pod Security Standards, "restricted" profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def _name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_specs(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """``(owner, pod spec)`` for every pod template as written, including those nested in custom resources."""
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
    """``(owner:container, container, pod spec)`` for every container of every pod as it will run."""
    for pod in runtime_pods(objects):
        for container in pod.spec.get("initContainers", []) + pod.spec["containers"]:
            yield f"{pod.owner}:{container['name']}", container, pod.spec


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


def command_line(container: Obj) -> list[str]:
    """A container's command followed by its args."""
    return [str(part) for part in container.get("command", []) + container.get("args", [])]


def serves_vllm(container: Obj) -> bool:
    """True for a container that runs vLLM's HTTP server (not a headless worker or a Ray worker)."""
    line = " ".join(command_line(container))
    return ("vllm serve" in line or "vllm.entrypoints" in line) and "--headless" not in line


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


def _restricted_pod(pod: RuntimePod) -> list[str]:
    """Violations of the "restricted" Pod Security Standard by one pod as it will run."""
    spec, owner, problems = pod.spec, pod.owner, []
    pod_ctx = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{owner}: {field} is true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"{owner}: volume {volume['name']} is {'/'.join(sorted(kinds))}")
    for sysctl in pod_ctx.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"{owner}: sysctl {sysctl.get('name')} is not in the safe set")
    if pod_ctx.get("runAsUser") == 0:
        problems.append(f"{owner}: runAsUser is 0")
    for container in spec.get("initContainers", []) + spec["containers"]:
        ctx = container.get("securityContext") or {}
        name = f"{owner}:{container['name']}"
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser is 0")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities are not dropped (drop: [ALL])")
        added = set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{name}: adds capabilities {sorted(added)}")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}, not RuntimeDefault")
        if ctx.get("procMount") not in (None, "Default"):
            problems.append(f"{name}: procMount {ctx['procMount']}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: uses a hostPort")
        apparmor = (ctx.get("appArmorProfile") or pod_ctx.get("appArmorProfile") or {}).get("type")
        if apparmor == "Unconfined":
            problems.append(f"{name}: AppArmor is Unconfined")
    return problems


def restricted_security_context(objects: list[Obj]) -> list[str]:
    """The Pod Security Standard "restricted" profile, for every container that will exist at run time."""
    return [problem for pod in runtime_pods(objects) for problem in _restricted_pod(pod)]


def service_account_tokens(objects: list[Obj]) -> list[str]:
    """A service account token only in pods that call the Kubernetes API (KubeRay's autoscaler, pods annotated
    ``workshop.vllm.ai/calls-kubernetes-api: "true"``), and there."""
    problems = []
    for pod in runtime_pods(objects):
        mounted = pod.spec.get("automountServiceAccountToken") is not False
        if pod.talks_to_api and not mounted:
            problems.append(
                f"{pod.owner}: it calls the Kubernetes API and needs its service account token, but it is "
                "not mounted (automountServiceAccountToken: true in the pod spec)"
            )
        elif mounted and not pod.talks_to_api:
            problems.append(f"{pod.owner}: service account token is mounted")
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
    """Secrets in the rendered output carry no literal Hugging Face token."""
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


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(key) != str(value) for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def network_policy_coverage(objects: list[Obj]) -> list[str]:
    """Every pod is selected by a NetworkPolicy that restricts both its ingress and its egress."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    problems = []
    for pod in runtime_pods(objects):
        covered: set[str] = set()
        for policy in policies:
            if _selects(policy["spec"].get("podSelector", {}), pod.labels):
                covered |= set(policy["spec"].get("policyTypes", ["Ingress"]))
        missing = {"Ingress", "Egress"} - covered
        if missing:
            problems.append(f"{pod.owner}: no NetworkPolicy restricts its {' and '.join(sorted(missing))}")
    return problems


CHECKS: dict[str, Callable[[list[Obj]], list[str]]] = {
    "accelerator limits equal requests": accelerator_limits_equal_requests,
    "cpu and memory requests": resource_requests_set,
    "probes on /health": probes_on_health,
    "restricted security context": restricted_security_context,
    "service account tokens": service_account_tokens,
    "images pinned": images_pinned,
    "no secret values": no_secret_values,
    "network policy for every pod": network_policy_coverage,
}


def check_all(objects: list[Obj]) -> dict[str, list[str]]:
    """Every check's violations, by check name."""
    return {title: check(objects) for title, check in CHECKS.items()}
