"""Kustomize overlays: render, validate offline, check policy, and apply only when a cluster is configured.

Built-in kinds are validated against the Kubernetes OpenAPI schema of a pinned version
(``kubernetes-validate``); custom resources against the CRD schemas shipped in ``@kubernetes-models``
npm packages (``tests/crd-validator``). Nothing here pretends to have applied: without a reachable
cluster the apply functions raise :class:`ClusterNotConfiguredError`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllm_workshop.errors import ClusterNotConfiguredError, LabError
from vllm_workshop.kubetools import find_kubectl
from vllm_workshop.paths import project_root

KUBERNETES_VERSION = "1.33.0"  # schema version the manifests must satisfy (EKS standard support)
CRD_VALIDATOR = Path("tests/crd-validator")


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


def _local_value(key: str) -> str:
    """Value for a local secret file: the environment's, else empty (HF token) or a fresh random one."""
    if os.environ.get(key):
        return os.environ[key]
    if key == "HF_TOKEN":
        return ""  # public models need none; gated ones fail with the hub's 401 until you set it
    prefix = "sk-" if key.endswith("MASTER_KEY") else ""
    return prefix + secrets.token_hex(16)


def ensure_local_env_files() -> list[Path]:
    """Create missing git-ignored ``components/*/*.env`` files from their templates (never overwrites)."""
    created = []
    for example in sorted((project_root() / "components").glob("*/*.env.example")):
        target = example.with_name(example.name.removesuffix(".example"))
        if target.exists():
            continue
        keys = [line.split("=", 1)[0] for line in example.read_text().splitlines() if "=" in line]
        target.write_text("".join(f"{key}={_local_value(key)}\n" for key in keys))
        target.chmod(0o600)
        created.append(target)
    return created


def render(overlay: str | os.PathLike[str]) -> str:
    """``kubectl kustomize`` of an overlay, as YAML text."""
    ensure_local_env_files()
    path = overlay_path(overlay)
    done = subprocess.run([find_kubectl(), "kustomize", str(path)], capture_output=True, text=True)
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


def validate_custom(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """CRD-schema results (``status``, ``error``) for custom resources, keyed by ``Kind/name``."""
    folder = project_root() / CRD_VALIDATOR
    node = shutil.which("node")
    if not objects:
        return {}
    if node is None or not (folder / "node_modules").exists():
        raise LabError(
            "Custom resources need the CRD validator: Node.js and `npm ci --prefix tests/crd-validator` "
            "(run by `make install`)."
        )
    done = subprocess.run(
        [node, str(folder / "validate.mjs")], input=json.dumps(objects), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise LabError(f"CRD validator failed: {done.stderr.strip()}")
    return {f"{row['kind']}/{row['name']}": row for row in json.loads(done.stdout)}


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
    """Validate every object: built-ins against the pinned Kubernetes schema, the rest against CRD schemas."""
    report = ValidationReport(overlay=name)
    custom = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in OPERATOR_SCHEMAS:
            error = validate_operator_resource(obj)
        else:
            try:
                error = validate_builtin(obj)
            except KeyError:
                custom.append(obj)
                continue
        if error:
            report.errors[object_id(obj)] = error
        else:
            report.valid.append(object_id(obj))
    for key, row in validate_custom(custom).items():
        if row["status"] == "valid":
            report.valid.append(key)
        elif row["status"] == "unknown":
            report.errors[key] = f"no schema for {row['apiVersion']} {row['kind']}"
        else:
            report.errors[key] = row.get("error", "invalid")
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
    except LabError as exc:
        return False, str(exc)
    done = subprocess.run(
        [kubectl, "version", "-o", "json", "--request-timeout=10s"], capture_output=True, text=True
    )
    try:
        server = json.loads(done.stdout)["serverVersion"]["gitVersion"]
    except (ValueError, KeyError):
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, f"the cluster in {kubeconfig} is not reachable: {reason}"
    context = subprocess.run([kubectl, "config", "current-context"], capture_output=True, text=True)
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


def kubectl_run(args: list[str], stdin: str | None = None, timeout: float = 900) -> str:
    """Run kubectl against the configured cluster and return stdout (raises with stderr on failure)."""
    kubectl = require_cluster()
    done = subprocess.run([kubectl, *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LabError(f"kubectl {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


def deploy(overlay: str | os.PathLike[str], wait: bool = True, timeout_s: int = 1800) -> str:
    """Apply an overlay and wait for the vLLM rollout; returns kubectl's output."""
    text = render(overlay)
    out = kubectl_run(["apply", "--server-side", "-f", "-"], stdin=text)
    if wait:
        namespaces = {o["metadata"].get("namespace") for o in load_objects(text) if o["kind"] == "Deployment"}
        for namespace in sorted(n for n in namespaces if n):
            out += kubectl_run(
                ["-n", namespace, "rollout", "status", "deployment/vllm", f"--timeout={timeout_s}s"],
                timeout=timeout_s + 60,
            )
    return out


def undeploy(overlay: str | os.PathLike[str]) -> str:
    """Delete what an overlay created (the namespace last, PVCs included)."""
    return kubectl_run(["delete", "--ignore-not-found", "--wait=true", "-f", "-"], stdin=render(overlay))


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
