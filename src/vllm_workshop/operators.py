"""The pods that will exist at run time, including what the operators add to the templates we write.

Policy and schedulability checks must see the pod the API server admits, not only the template in git:

- KubeRay (``ray-operator/controllers/ray/common/pod.go``, v1.4): with ``enableInTreeAutoscaling`` it appends
  an ``autoscaler`` container to the head pod (the head's image, requests and limits 500m / 512Mi unless
  ``autoscalerOptions.resources``; its securityContext comes only from ``autoscalerOptions.securityContext``)
  and sets the head's service account to one it creates for the autoscaler, which talks to the Kubernetes
  API. Every worker gets a ``wait-gcs-ready`` init container (the Ray container's image and securityContext,
  requests and limits 200m / 256Mi).
- LeaderWorkerSet adds ``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX`` to every container.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
AUTOSCALER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}
WAIT_GCS_RESOURCES = {
    "requests": {"cpu": "200m", "memory": "256Mi"},
    "limits": {"cpu": "200m", "memory": "256Mi"},
}


@dataclass
class RuntimePod:
    """One pod template as it will run: its owner, spec, labels, how many may exist and what it talks to."""

    owner: str
    spec: Obj
    labels: dict[str, str]
    workload: Obj
    role: str = "pod"  # "pod", "leader", "worker", "head", "ray-worker"
    max_replicas: int = 1
    talks_to_api: bool = False  # a container needs the Kubernetes API (service account token)
    env: dict[str, str] = field(default_factory=dict)  # values the operator injects into every container


def _name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _ray_container_index(spec: Obj) -> int:
    for index, container in enumerate(spec["containers"]):
        if any(
            e.get("name") == "RAY" and str(e.get("value")).lower() == "true" for e in container.get("env", [])
        ):
            return index
    return 0


def kuberay_head(cluster: Obj, owner: str, workload: Obj) -> RuntimePod:
    """The head pod KubeRay builds from ``headGroupSpec``."""
    template = cluster["headGroupSpec"]["template"]
    spec = copy.deepcopy(template["spec"])
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    if autoscaling:
        options = cluster.get("autoscalerOptions", {})
        sidecar: Obj = {
            "name": "autoscaler",
            "image": options.get("image", spec["containers"][_ray_container_index(spec)]["image"]),
            "command": ["ray"],
            "args": ["kuberay-autoscaler", "--cluster-name", "$(RAY_CLUSTER_NAME)"],
            "resources": copy.deepcopy(options.get("resources", AUTOSCALER_RESOURCES)),
        }
        if "securityContext" in options:
            sidecar["securityContext"] = copy.deepcopy(options["securityContext"])
        spec["containers"].append(sidecar)
        spec.setdefault("serviceAccountName", "<raycluster name, created by KubeRay>")
    labels = dict(template.get("metadata", {}).get("labels", {}))
    return RuntimePod(f"{owner} head", spec, labels, workload, "head", 1, talks_to_api=autoscaling)


def kuberay_workers(cluster: Obj, owner: str, workload: Obj) -> Iterator[RuntimePod]:
    """The worker pods KubeRay builds from each ``workerGroupSpecs`` entry."""
    for group in cluster.get("workerGroupSpecs", []):
        template = group["template"]
        spec = copy.deepcopy(template["spec"])
        ray = spec["containers"][_ray_container_index(spec)]
        init: Obj = {
            "name": "wait-gcs-ready",
            "image": ray["image"],
            "command": ["/bin/bash", "-lc", "--"],
            "resources": copy.deepcopy(WAIT_GCS_RESOURCES),
        }
        if "securityContext" in ray:
            init["securityContext"] = copy.deepcopy(ray["securityContext"])
        spec["initContainers"] = [*spec.get("initContainers", []), init]
        labels = dict(template.get("metadata", {}).get("labels", {}))
        replicas = int(group.get("maxReplicas", group.get("replicas", 1))) * int(group.get("numOfHosts", 1))
        yield RuntimePod(
            f"{owner} worker group {group['groupName']}", spec, labels, workload, "ray-worker", replicas
        )


def lws_pods(obj: Obj) -> Iterator[RuntimePod]:
    """Leader and worker pods of a LeaderWorkerSet, with the variables LWS injects."""
    spec = obj["spec"]
    template = spec["leaderWorkerTemplate"]
    size = int(template.get("size", 1))
    replicas = int(spec.get("replicas", 1))
    name = obj["metadata"]["name"]
    leader_address = f"{name}-0.{name}.{obj['metadata'].get('namespace', 'default')}"
    worker = template["workerTemplate"]
    leader = template.get("leaderTemplate", worker)
    for role, pod, index, count in (
        ("leader", leader, "0", replicas),
        ("worker", worker, "1", replicas * (size - 1)),
    ):
        if count == 0:
            continue
        env = {"LWS_LEADER_ADDRESS": leader_address, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": index}
        spec_copy = copy.deepcopy(pod["spec"])
        for container in spec_copy.get("containers", []) + spec_copy.get("initContainers", []):
            container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in env.items())]
        labels = dict(pod.get("metadata", {}).get("labels", {}))
        yield RuntimePod(f"{_name(obj)} {role}", spec_copy, labels, obj, role, count, env=env)


# A pod template annotated with this calls the Kubernetes API (e.g. the router's service discovery), so it may
# mount its service account token; every other pod must not.
CALLS_API = "workshop.vllm.ai/calls-kubernetes-api"


def runtime_pods(objects: list[Obj]) -> list[RuntimePod]:
    """Every pod template of the rendered objects, as the pods will run."""
    pods: list[RuntimePod] = []
    for obj in objects:
        kind = obj.get("kind")
        if kind in WORKLOAD_KINDS:
            template = obj["spec"]["template"]
            labels = dict(template.get("metadata", {}).get("labels", {}))
            replicas = int(obj["spec"].get("replicas", 1))
            annotations = template.get("metadata", {}).get("annotations", {})
            api = annotations.get(CALLS_API) == "true"
            pods.append(
                RuntimePod(_name(obj), copy.deepcopy(template["spec"]), labels, obj, "pod", replicas, api)
            )
        elif kind == "LeaderWorkerSet":
            pods.extend(lws_pods(obj))
        elif kind in ("RayService", "RayCluster"):
            cluster = obj["spec"]["rayClusterConfig"] if kind == "RayService" else obj["spec"]
            pods.append(kuberay_head(cluster, _name(obj), obj))
            pods.extend(kuberay_workers(cluster, _name(obj), obj))
    return pods
