"""The nodes ``infra/`` creates, and whether a pod template fits one, decided offline like the scheduler.

Node groups come from ``infra/eks/cluster.yaml`` (eksctl) and ``infra/kind/kind-config.yaml``; what an
instance offers and what the kubelet and per-node add-ons take from it come from ``infra/node-facts.yaml``
(with sources). A pod fits a group when its scheduler exists, its node selector and required node affinity
match the group's labels, it tolerates the group's taints, its images run on the group's CPU architecture,
and its requests (containers, init containers, pod overhead) fit what is allocatable after the add-ons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from vllm_workshop.paths import project_root

Obj = dict[str, Any]
GIB = 2**30
MIB = 2**20
_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
EKSCTL_DEFAULT_VOLUME_GIB = 80  # eksctl's default node volume size


def quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity as an exact number (``"500m"`` -> 1/2, ``"2Gi"`` -> 2147483648)."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, suffix = Fraction(match.group(1)), match.group(2)
    if suffix == "m":
        return number / 1000
    return number * _SUFFIX.get(suffix or "", 1)


def facts_path() -> Path:
    """``infra/node-facts.yaml``."""
    return project_root() / "infra" / "node-facts.yaml"


@lru_cache(maxsize=4)
def _facts(path: str) -> Obj:
    return yaml.safe_load(Path(path).read_text())


def node_facts() -> Obj:
    """The parsed node facts table."""
    return _facts(str(facts_path()))


@dataclass(frozen=True)
class NodeGroup:
    """A group of identical nodes, as the scheduler and the cluster autoscaler see them."""

    name: str
    cluster: str  # "eks" or "kind"
    instance_type: str
    labels: dict[str, str]
    taints: tuple[Obj, ...]
    max_size: int
    allocatable: dict[str, Fraction]
    arch: tuple[str, ...]
    schedulers: frozenset[str] = field(default_factory=lambda: frozenset({"default-scheduler"}))

    def free(self) -> dict[str, Fraction]:
        """Allocatable resources left once the per-node add-ons have theirs."""
        left = dict(self.allocatable)
        daemons = node_facts()["daemonsets"].get(self.cluster, [])
        left["pods"] = left["pods"] - len(daemons)
        for daemon in daemons:
            for key in ("cpu", "memory"):
                left[key] = left.get(key, Fraction(0)) - quantity(daemon.get(key, "0"))
        return left


def allocatable(instance: Obj, kubelet: Obj, disk_gib: float) -> dict[str, Fraction]:
    """Node allocatable = capacity - kube-reserved - hard eviction thresholds (per the node facts)."""
    cores = Fraction(instance["vcpu"])
    cpu_reserved, start = Fraction(0), Fraction(0)
    for size, share in kubelet["cpu_tiers"]:
        tier = cores - start if size is None else min(Fraction(size), max(cores - start, Fraction(0)))
        cpu_reserved += max(tier, Fraction(0)) * Fraction(str(share))
        start += tier if size is None else Fraction(size)
    memory = Fraction(instance["memory_gib"]) * GIB * Fraction(str(kubelet["memory_capacity_fraction"]))
    memory -= (kubelet["memory_mib_per_pod"] * instance["max_pods"] + kubelet["memory_mib_base"]) * MIB
    memory -= kubelet["eviction_memory_mib"] * MIB
    disk = Fraction(str(disk_gib)) * GIB
    ephemeral = disk * (1 - Fraction(str(kubelet["eviction_nodefs_fraction"])))
    ephemeral -= Fraction(str(kubelet["ephemeral_reserved_gib"])) * GIB
    totals = {
        "cpu": cores - cpu_reserved,
        "memory": memory,
        "ephemeral-storage": ephemeral,
        "pods": instance["max_pods"],
    }
    totals.update({key: Fraction(count) for key, count in instance.get("devices", {}).items()})
    return {key: Fraction(value) for key, value in totals.items()}


def _group(
    name: str, cluster: str, instance_type: str, labels: dict, taints: list, max_size: int, disk: float
) -> NodeGroup:
    facts = node_facts()
    if instance_type not in facts["instance_types"]:
        raise KeyError(f"node group {name}: instance type {instance_type} is not in {facts_path().name}")
    instance = facts["instance_types"][instance_type]
    arch = tuple(instance["arch"])
    well_known = {"kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": instance_type}
    if len(arch) == 1:
        well_known["kubernetes.io/arch"] = arch[0]
    if cluster == "eks":
        well_known["eks.amazonaws.com/nodegroup"] = name
    schedulers = frozenset(facts["schedulers"]) if cluster == "eks" else frozenset({"default-scheduler"})
    return NodeGroup(
        name=name,
        cluster=cluster,
        instance_type=instance_type,
        labels={**well_known, **{k: str(v) for k, v in (labels or {}).items()}},
        taints=tuple(taints or ()),
        max_size=max_size,
        allocatable=allocatable(instance, facts["kubelet"][cluster], disk),
        arch=arch,
        schedulers=schedulers,
    )


def eks_groups(cluster_yaml: Obj) -> list[NodeGroup]:
    """The managed node groups of an eksctl ClusterConfig."""
    return [
        _group(
            ng["name"],
            "eks",
            ng["instanceType"],
            ng.get("labels", {}),
            ng.get("taints", []),
            int(ng.get("maxSize", ng.get("desiredCapacity", 1))),
            ng.get("volumeSize", EKSCTL_DEFAULT_VOLUME_GIB),
        )
        for ng in cluster_yaml.get("managedNodeGroups", [])
    ]


def kind_groups(kind_yaml: Obj) -> list[NodeGroup]:
    """The nodes of a kind cluster config (workers as one group; the control plane keeps its taint)."""
    disk = node_facts()["instance_types"]["kind-node"]["disk_gib"]
    nodes = kind_yaml.get("nodes", [])
    workers = [n for n in nodes if n.get("role") == "worker"]
    groups = []
    if workers:
        groups.append(
            _group("kind-worker", "kind", "kind-node", workers[0].get("labels", {}), [], len(workers), disk)
        )
    if any(n.get("role") == "control-plane" for n in nodes):
        taint = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
        groups.append(_group("kind-control-plane", "kind", "kind-node", {}, [taint], 1, disk))
    return groups


def infra_node_groups(root: Path | None = None) -> list[NodeGroup]:
    """Every node group defined under ``infra/``."""
    root = root or project_root()
    eks = yaml.safe_load((root / "infra" / "eks" / "cluster.yaml").read_text())
    kind = yaml.safe_load((root / "infra" / "kind" / "kind-config.yaml").read_text())
    return eks_groups(eks) + kind_groups(kind)


# ------------------------------------------------------------------------------------------------ pod fit


def pod_requests(spec: Obj) -> dict[str, Fraction]:
    """Effective pod requests: max(sum of containers, largest init container) plus pod overhead."""

    def requests(container: Obj) -> dict[str, Fraction]:
        resources = container.get("resources", {})
        # A container that sets only a limit for a resource requests that much.
        merged = {**resources.get("limits", {}), **resources.get("requests", {})}
        return {key: quantity(value) for key, value in merged.items()}

    total: dict[str, Fraction] = {}
    for container in spec.get("containers", []):
        for key, value in requests(container).items():
            total[key] = total.get(key, Fraction(0)) + value
    for container in spec.get("initContainers", []):
        for key, value in requests(container).items():
            total[key] = max(total.get(key, Fraction(0)), value)
    for key, value in spec.get("overhead", {}).items():
        total[key] = total.get(key, Fraction(0)) + quantity(value)
    return total


def _tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        if toleration.get("operator") == "Exists" and toleration.get("key") in (None, "", taint["key"]):
            return True
        if toleration.get("key") == taint["key"] and str(toleration.get("value", "")) == str(
            taint.get("value", "")
        ):
            return True
    return False


def _expression_matches(expression: Obj, labels: dict[str, str], arch: tuple[str, ...]) -> bool:
    key, operator, wanted = expression["key"], expression["operator"], expression.get("values", [])
    have = list(arch) if key == "kubernetes.io/arch" else ([labels[key]] if key in labels else [])
    if operator == "In":
        return any(v in wanted for v in have)
    if operator == "NotIn":
        return not have or any(v not in wanted for v in have)
    if operator == "Exists":
        return bool(have)
    if operator == "DoesNotExist":
        return not have
    return False


def _fmt(key: str, value: Fraction) -> str:
    if key == "cpu":
        return f"{float(value):.2f} CPU"
    if key in ("memory", "ephemeral-storage"):
        return f"{float(value) / GIB:.1f}Gi"
    return f"{float(value):g}"


def image_arches(image: str) -> tuple[str, ...] | None:
    """CPU architectures an image is published for, when the node facts know it (None: any)."""
    repository = image.rsplit("@", 1)[0]
    repository = repository.rsplit(":", 1)[0] if ":" in repository.split("/")[-1] else repository
    entry = node_facts()["images"].get(repository)
    return tuple(entry["arch"]) if entry else None


def _selected_arch(spec: Obj, group: NodeGroup) -> tuple[str, ...]:
    """The CPU architectures of the group's nodes that the pod's node selector still admits."""
    wanted = spec.get("nodeSelector", {}).get("kubernetes.io/arch")
    return tuple(a for a in group.arch if wanted in (None, a))


def arch_problems(spec: Obj, group: NodeGroup) -> list[str]:
    """Images of the pod that cannot run on some node of the group it may land on."""
    arch, problems = _selected_arch(spec, group), []
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        runs_on = image_arches(container.get("image", ""))
        if runs_on and arch and not set(arch) <= set(runs_on):
            problems.append(
                f"image {container['image']} runs on {'/'.join(runs_on)} only, but {group.name} nodes may be "
                f"{'/'.join(arch)} (select kubernetes.io/arch)"
            )
    return problems


def misfit(spec: Obj, group: NodeGroup, check_arch: bool = True) -> list[str]:
    """Why a pod spec does not fit one node of a group (empty: it fits)."""
    reasons = []
    scheduler = spec.get("schedulerName", "default-scheduler")
    if scheduler not in group.schedulers:
        reasons.append(f"scheduler {scheduler} is not installed on this cluster")
    arch = _selected_arch(spec, group)
    for key, value in spec.get("nodeSelector", {}).items():
        if key == "kubernetes.io/arch":
            if not arch:
                reasons.append(
                    f"nodeSelector {key}={value} matches no {group.name} node ({'/'.join(group.arch)})"
                )
        elif group.labels.get(key) != str(value):
            reasons.append(f"nodeSelector {key}={value} (node label: {group.labels.get(key, 'none')})")
    required = (
        spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if required and not any(
        all(_expression_matches(e, group.labels, arch) for e in term.get("matchExpressions", []))
        for term in required.get("nodeSelectorTerms", [])
    ):
        reasons.append("required node affinity matches no node label")
    for taint in group.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            spec.get("tolerations", []), taint
        ):
            reasons.append(f"taint {taint['key']}:{taint['effect']} is not tolerated")
    if check_arch:
        reasons += arch_problems(spec, group)
    free = group.free()
    for key, wanted in sorted(pod_requests(spec).items()):
        if key not in free:
            reasons.append(f"{key}: {group.instance_type} has none")
        elif wanted > free[key]:
            reasons.append(
                f"{key} {_fmt(key, wanted)} > {_fmt(key, free[key])} allocatable on {group.instance_type}"
            )
    return reasons


def pods_per_node(spec: Obj, group: NodeGroup) -> int:
    """How many such pods one node of the group holds (0 when it does not fit)."""
    if misfit(spec, group):
        return 0
    free, wanted = group.free(), pod_requests(spec)
    counts = [int(free[key] // value) for key, value in wanted.items() if value > 0]
    return min([*counts, int(free["pods"])])
