"""Kustomize overlays: render, validate offline, check policy, and apply only when a cluster is configured.

Built-in kinds are validated against the Kubernetes OpenAPI schema of a pinned version
(``kubernetes-validate``); custom resources against JSON schemas kept in ``infra/operators/schemas`` (the
ServiceMonitor, PrometheusRule and PodMonitor ones converted from the prometheus-operator CRDs, the
LeaderWorkerSet and RayService ones hand-written). Rendering never writes files: Secrets are not part of any
overlay; :func:`deploy` creates the ones the pods refer to (:data:`CLUSTER_SECRETS`) in the cluster. Nothing
here pretends to have applied: without a reachable cluster the apply functions raise
:class:`ClusterNotConfiguredError`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllm_workshop.errors import ClusterNotConfiguredError, LabError
from vllm_workshop.kubetools import find_kubectl
from vllm_workshop.paths import project_root

KUBERNETES_VERSION = "1.33.0"  # schema version the manifests must satisfy (EKS standard support)
RENDER_TIMEOUT_S = 120


class RenderError(LabError):
    """kustomize could not build an overlay."""


def overlays_root() -> Path:
    """Folder holding the module 4 overlays."""
    return project_root() / "modules" / "04-kubernetes" / "overlays"


def all_overlays() -> list[Path]:
    """Every overlay folder of every module (any folder under ``modules/*/overlays/``)."""
    root = project_root() / "modules"
    return sorted(p.parent for p in root.glob("*/overlays/*/kustomization.yaml"))


def overlay_path(name: str | os.PathLike[str]) -> Path:
    """An overlay by folder path or by name (``gpu-llama31-8b``)."""
    path = Path(name)
    if (path / "kustomization.yaml").exists():
        return path.resolve()
    matches = [p for p in all_overlays() if p.name == str(name)]
    if len(matches) != 1:
        names = ", ".join(p.name for p in all_overlays())
        raise RenderError(f"No overlay named {name!r}. Known overlays: {names}")
    return matches[0]


def render(overlay: str | os.PathLike[str], kubectl: str | None = None) -> str:
    """``kubectl kustomize`` of an overlay, as YAML text (installs nothing: ``make tools`` does)."""
    path = overlay_path(overlay)
    command = [kubectl or find_kubectl(install=False), "kustomize", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    if done.returncode != 0:
        raise RenderError(f"kustomize failed for {path}:\n{done.stderr.strip()}")
    return done.stdout


def load_objects(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def object_id(obj: dict[str, Any]) -> str:
    """``Kind/name`` of an object."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


@dataclass
class ValidationReport:
    """Per-object schema results of one overlay."""

    overlay: str
    valid: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every object validated."""
        return not self.errors

    def summary(self) -> str:
        """One line per overlay, plus one per error."""
        lines = [f"{self.overlay}: {len(self.valid)} objects valid, {len(self.errors)} invalid"]
        lines += [f"  {name}: {error}" for name, error in self.errors.items()]
        return "\n".join(lines)


def validate_builtin(obj: dict[str, Any], version: str = KUBERNETES_VERSION) -> str | None:
    """Schema error for a built-in kind, None when valid; raises KeyError for kinds it has no schema for."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except SchemaNotFoundError as exc:
        raise KeyError(object_id(obj)) from exc
    except ValidationError as exc:
        return f"{exc.message} at {'/'.join(str(p) for p in exc.path)}"
    return None


CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-v1.json",
}


def validate_custom(obj: dict[str, Any]) -> str | None:
    """Schema error of a custom resource against its vendored schema (``infra/operators/schemas``)."""
    import jsonschema

    name = CUSTOM_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if name is None:
        return f"no schema for {obj.get('apiVersion')} {obj.get('kind')}"
    errors = jsonschema.Draft202012Validator(_schema(name)).iter_errors(obj)
    return "; ".join(f"{e.message} at {'/'.join(str(p) for p in e.path)}" for e in errors) or None


OPERATOR_SCHEMAS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset-v1.json",
    ("ray.io/v1", "RayService"): "rayservice-v1.json",
}


def _schema(name: str) -> dict[str, Any]:
    return json.loads((project_root() / "infra" / "operators" / "schemas" / name).read_text())


def validate_operator_resource(obj: dict[str, Any], version: str = KUBERNETES_VERSION) -> str | None:
    """LeaderWorkerSet / RayService: structure (``infra/operators/schemas``), every pod template as a core/v1
    PodTemplate against the pinned Kubernetes schema, and a RayService's ``serveConfigV2``."""
    import jsonschema

    from vllm_workshop.policy import pod_specs

    errors = [
        f"{e.message} at {'/'.join(str(p) for p in e.path)}"
        for e in jsonschema.Draft202012Validator(
            _schema(OPERATOR_SCHEMAS[(obj["apiVersion"], obj["kind"])])
        ).iter_errors(obj)
    ]
    for where, spec in pod_specs([obj]):
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "t"},
            "template": {"spec": spec},
        }
        error = validate_builtin(template, version)
        if error:
            errors.append(f"pod template {where}: {error}")
    if obj["kind"] == "RayService" and "serveConfigV2" in obj["spec"]:
        serve = yaml.safe_load(obj["spec"]["serveConfigV2"])
        validator = jsonschema.Draft202012Validator(_schema("serve-llm-config.json"))
        errors += [
            f"serveConfigV2: {e.message} at {'/'.join(str(p) for p in e.path)}"
            for e in validator.iter_errors(serve)
        ]
    return "; ".join(errors) or None


def validate_objects(name: str, objects: list[dict[str, Any]]) -> ValidationReport:
    """Validate every object: built-ins against the pinned Kubernetes schema, the rest against theirs."""
    report = ValidationReport(overlay=name)
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in OPERATOR_SCHEMAS:
            error = validate_operator_resource(obj)
        else:
            try:
                error = validate_builtin(obj)
            except KeyError:
                error = validate_custom(obj)
        if error:
            report.errors[object_id(obj)] = error
        else:
            report.valid.append(object_id(obj))
    return report


def validate_overlay(overlay: str | os.PathLike[str]) -> ValidationReport:
    """Render and validate one overlay."""
    path = overlay_path(overlay)
    return validate_objects(path.name, load_objects(render(path)))


# ---------------------------------------------------------------------------------------------- cluster


def cluster_status() -> tuple[bool, str]:
    """Whether a cluster is configured and reachable, with a sentence saying why (never raises)."""
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).exists() for p in kubeconfig.split(os.pathsep) if p):
        return False, f"no kubeconfig ({kubeconfig} does not exist; set KUBECONFIG to use a cluster)"
    try:
        kubectl = find_kubectl()
        done = subprocess.run(
            [kubectl, "version", "-o", "json", "--request-timeout=10s"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        server = json.loads(done.stdout)["serverVersion"]["gitVersion"]
    except LabError as exc:
        return False, str(exc)
    except subprocess.TimeoutExpired:
        return False, f"the cluster in {kubeconfig} is not reachable: kubectl version timed out"
    except (ValueError, KeyError):
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, f"the cluster in {kubeconfig} is not reachable: {reason}"
    context = subprocess.run(
        [kubectl, "config", "current-context"], capture_output=True, text=True, timeout=30
    )
    return True, f"context {context.stdout.strip()} (Kubernetes {server})"


def require_cluster() -> str:
    """The kubectl path, or :class:`ClusterNotConfiguredError` saying what is missing."""
    ok, why = cluster_status()
    if not ok:
        raise ClusterNotConfiguredError(
            f"No cluster to apply to: {why}. Nothing was applied. "
            "Fix: point KUBECONFIG at a cluster "
            "(infra/eks/create-cluster.sh or infra/kind/create-cluster.sh)."
        )
    return find_kubectl()


def _kubectl(kubectl: str, args: list[str], stdin: str | None = None, timeout: float = 900) -> str:
    done = subprocess.run([kubectl, *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LabError(f"kubectl {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


def kubectl_run(args: list[str], stdin: str | None = None, timeout: float = 900) -> str:
    """Run kubectl against the configured cluster and return stdout (raises with stderr on failure)."""
    return _kubectl(require_cluster(), args, stdin, timeout)


@dataclass(frozen=True)
class ClusterSecret:
    """A Secret that pods refer to but no overlay contains: ``make deploy`` creates it in the namespace."""

    key: str  # the Secret's key, and the environment variable that can provide its value
    generate: str | None  # prefix of a random value made when neither the environment nor the cluster has one


CLUSTER_SECRETS = {
    "hf-token": ClusterSecret("HF_TOKEN", None),  # optional in every pod: public models need no token
    "litellm-master-key": ClusterSecret("LITELLM_MASTER_KEY", "sk-"),
    "litellm-salt-key": ClusterSecret("LITELLM_SALT_KEY", "sk-"),  # encrypts LiteLLM's stored credentials
    "litellm-postgres": ClusterSecret("POSTGRES_PASSWORD", ""),
    "redis-auth": ClusterSecret("REDIS_PASSWORD", ""),
    "open-webui-secret": ClusterSecret("WEBUI_SECRET_KEY", ""),
    "open-webui-litellm-key": ClusterSecret("WEBUI_LITELLM_KEY", "sk-webui-"),  # Open WebUI's own gateway key
}


def secret_references(node: Any) -> set[str]:
    """Names of the Secrets a manifest refers to (``secretKeyRef``, ``secretRef``, ``secret`` volumes)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretKeyRef", "secretRef") and isinstance(value, dict) and "name" in value:
                found.add(value["name"])
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                found.add(value["secretName"])
            else:
                found |= secret_references(value)
    elif isinstance(node, list):
        for item in node:
            found |= secret_references(item)
    return found


def ensure_secrets(
    kubectl: str, objects: list[dict[str, Any]], env: dict[str, str] | None = None
) -> list[str]:
    """Create the :data:`CLUSTER_SECRETS` the objects refer to, in their namespaces; one line per Secret.

    A value in the environment (``HF_TOKEN``, ``LITELLM_MASTER_KEY``, ``WEBUI_SECRET_KEY``) is applied;
    without one an existing Secret is kept, a missing one gets a random value, and the optional ``hf-token``
    is left out.
    """
    env = dict(os.environ) if env is None else env
    wanted = {
        (obj["metadata"].get("namespace", "default"), name)
        for obj in objects
        for name in secret_references(obj.get("spec", {}))
        if name in CLUSTER_SECRETS
    }
    lines = []
    for namespace, name in sorted(wanted):
        spec = CLUSTER_SECRETS[name]
        value = env.get(spec.key, "")
        if not value:
            found = _kubectl(
                kubectl, ["-n", namespace, "get", "secret", name, "--ignore-not-found", "-o", "name"]
            )
            if found.strip():
                lines.append(f"secret/{name}: kept")
                continue
            if spec.generate is None:
                lines.append(f"secret/{name}: not created (set {spec.key} for gated models)")
                continue
            value = spec.generate + secrets.token_hex(16)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/part-of": "vllm-workshop"},
            },
            "type": "Opaque",
            "stringData": {spec.key: value},
        }
        _kubectl(kubectl, ["apply", "-f", "-"], stdin=json.dumps(secret))
        lines.append(f"secret/{name}: {'from $' + spec.key if env.get(spec.key) else 'created'}")
    return lines


def wait_commands(objects: list[dict[str, Any]], timeout_s: int) -> list[list[str]]:
    """kubectl commands that return when each workload of an overlay is ready (or fail at the timeout)."""
    commands = []
    for obj in objects:
        namespace, name = obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]
        kind = obj["kind"]
        if kind in ("Deployment", "StatefulSet"):
            commands.append(
                ["-n", namespace, "rollout", "status", f"{kind.lower()}/{name}", f"--timeout={timeout_s}s"]
            )
        elif kind == "LeaderWorkerSet":  # Available: every group's leader and workers are ready
            commands.append(
                [
                    "-n",
                    namespace,
                    "wait",
                    "--for=condition=Available",
                    f"leaderworkerset/{name}",
                    f"--timeout={timeout_s}s",
                ]
            )
        elif kind == "Job":  # Complete: it ran to success (e.g. registering Open WebUI's gateway key)
            commands.append(
                [
                    "-n",
                    namespace,
                    "wait",
                    "--for=condition=Complete",
                    f"job/{name}",
                    f"--timeout={timeout_s}s",
                ]
            )
        elif kind == "RayService":  # Ready: the Ray cluster runs and the Serve applications are healthy
            commands.append(
                [
                    "-n",
                    namespace,
                    "wait",
                    "--for=condition=Ready",
                    f"rayservice/{name}",
                    f"--timeout={timeout_s}s",
                ]
            )
    return commands


def deploy(overlay: str | os.PathLike[str], wait: bool = True, timeout_s: int = 1800) -> str:
    """Apply an overlay (namespaces, the Secrets its pods need, then the rest) and wait until it is ready.

    Waits for every Deployment and StatefulSet rollout, every Job (condition Complete), every LeaderWorkerSet
    (condition Available) and every RayService (condition Ready) the overlay creates, within ``timeout_s`` in
    total.
    """
    kubectl = require_cluster()
    text = render(overlay, kubectl)
    objects = load_objects(text)
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    out = ""
    if namespaces:
        out += _kubectl(kubectl, ["apply", "--server-side", "-f", "-"], stdin=yaml.safe_dump_all(namespaces))
    out += "".join(f"{line}\n" for line in ensure_secrets(kubectl, objects))
    out += _kubectl(kubectl, ["apply", "--server-side", "-f", "-"], stdin=text)
    if wait:
        deadline = time.monotonic() + timeout_s
        for command in wait_commands(objects, timeout_s):
            left = max(1, int(deadline - time.monotonic()))
            command = [
                part if not part.startswith("--timeout=") else f"--timeout={left}s" for part in command
            ]
            out += _kubectl(kubectl, command, timeout=left + 60)
    return out


def undeploy(overlay: str | os.PathLike[str]) -> str:
    """Delete what an overlay created (the namespace last, PVCs and the Secrets in it included)."""
    kubectl = require_cluster()
    text = render(overlay, kubectl)
    return _kubectl(kubectl, ["delete", "--ignore-not-found", "--wait=true", "-f", "-"], stdin=text)


def port_forward(namespace: str = "vllm-workshop", service: str = "vllm", remote_port: int = 8000) -> Any:
    """A started ``kubectl port-forward`` to the service, healthy when vLLM's /health answers through it."""
    from vllm_workshop.server import ManagedServer, free_port

    kubectl = require_cluster()
    port = free_port()
    command = [kubectl, "-n", namespace, "port-forward", f"svc/{service}", f"{port}:{remote_port}"]
    return ManagedServer(command, name="port-forward", port=port).start(timeout=120)


def workload_summary(objects: list[dict[str, Any]]) -> dict[str, str]:
    """What a learner compares between overlays: image, devices, node selection, args and config values."""
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    resources = container.get("resources", {})
    config = next((o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"), {})
    devices = {k: v for k, v in resources.get("limits", {}).items() if "/" in k}
    return {
        "image": container["image"],
        "model": config.get("MODEL", "?"),
        "devices": ", ".join(f"{k}={v}" for k, v in devices.items()) or "none (CPU)",
        "node selector": ", ".join(f"{k}={v}" for k, v in spec.get("nodeSelector", {}).items()) or "any node",
        "args": " ".join(container.get("args", [])[1:]),
        "requests": ", ".join(f"{k}={v}" for k, v in resources.get("requests", {}).items()),
        "objects": ", ".join(sorted({o["kind"] for o in objects})),
    }
