"""Checks a platform engineer runs before applying an overlay, with no cluster: ``make cluster-checks``.

Schema and policy validation (``make validate``) prove each object well-formed; these prove the overlay works
on the cluster ``infra/`` creates:

- **schedulable**: every pod as it will run (operator-injected containers included) fits one node group:
  requests vs allocatable, node selector vs labels, taints vs tolerations, devices, scheduler, CPU
  architecture (:mod:`vllm_workshop.nodegroups`).
- **vllm command lines**: every ``vllm serve`` line, after ``$(VAR)`` expansion from its ConfigMaps and the
  operator's variables, parses with the pinned vLLM's own parser (for images that run that version); the
  tensor/pipeline sizes suit the model's heads and layers (``planning.parallel_problems``) and match the
  accelerators the pod requests; Neuron pods compile into a writable working directory and key their
  compiled artifacts by the engine's static shapes.
- **pod security at run time**: the "restricted" Pod Security Standard and the service account token rule
  for every container that will exist (:mod:`vllm_workshop.policy` on :mod:`vllm_workshop.operators`).
- **autoscaling**: an HPA's targets are reachable within the engine's own limits, and maxReplicas (HPA, Ray
  worker groups, Ray Serve replicas) fits what the node groups can hold.

What none of this shows: image pulls, the device plugins advertising devices, the operators' admission
webhooks, EFS mounts, model downloads, a compile or load that runs out of device memory. Only a cluster does.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vllm_workshop import policy
from vllm_workshop.errors import LabError, VllmArgsError
from vllm_workshop.nodegroups import (
    NodeGroup,
    arch_problems,
    infra_node_groups,
    misfit,
    pod_requests,
    pods_per_node,
    quantity,
)
from vllm_workshop.operators import RuntimePod, runtime_pods

Obj = dict[str, Any]
DEVICE_RESOURCES = ("nvidia.com/gpu", "aws.amazon.com/neuroncore")
NEURON_IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx"
HPA_TOLERANCE = 0.1  # the HPA acts only when the metric is more than 10% above its target (kube default)
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


# ------------------------------------------------------------------------------------------- schedulable


def schedulability(objects: list[Obj], groups: list[NodeGroup]) -> list[str]:
    """Pods that fit no node group (with each group's reason), may land where their image cannot run, or
    ask for accelerators on more than one instance type (the autoscaler would pick one at random)."""
    problems = []
    for pod in runtime_pods(objects):
        reasons = {group.name: misfit(pod.spec, group, check_arch=False) for group in groups}
        if all(reasons.values()):
            why = "; ".join(f"{name}: {', '.join(found)}" for name, found in reasons.items())
            problems.append(f"{pod.owner} fits no node group ({why})")
        fitting = [group for group in groups if not reasons[group.name]]
        for group in fitting:
            problems += [
                f"{pod.owner} may be scheduled on {group.name}: {p}" for p in arch_problems(pod.spec, group)
            ]
        types = sorted({group.instance_type for group in fitting})
        if len(types) > 1 and set(pod_requests(pod.spec)) & set(DEVICE_RESOURCES):
            problems.append(
                f"{pod.owner} fits {' and '.join(types)} nodes: the cluster autoscaler may start either "
                "(select node.kubernetes.io/instance-type)"
            )
    return problems


# -------------------------------------------------------------------------------------- vllm command lines


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, others stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(replace, text)


def container_env(
    container: Obj, objects: list[Obj], injected: dict[str, str], override: dict[str, str] | None = None
) -> dict[str, str]:
    """The variables a container sees: ConfigMaps from envFrom, then the operator's, then env (in order).

    ``override`` replaces variables before ``env`` is expanded (to see which values depend on them)."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(
                {source.get("prefix", "") + k: str(v) for k, v in configmaps.get(ref["name"], {}).items()}
            )
    env.update(injected)
    env.update(override or {})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
    return env


def serve_argv(container: Obj) -> list[str] | None:
    """The arguments after ``vllm serve`` when the container runs it directly (None: it does not run it)."""
    line = policy.command_line(container)
    for start in range(len(line) - 1):
        if line[start].endswith("vllm") and line[start + 1] == "serve":
            return line[start + 2 :]
    return None


def runs_pinned_vllm(image: str) -> bool:
    """Whether an image runs the vLLM version this project pins (its tag is ``v<version>``)."""
    from vllm_workshop.vllm_args import PINNED_VLLM

    return image.rsplit(":", 1)[-1] == f"v{PINNED_VLLM}"


def _flag(argv: list[str], names: tuple[str, ...], default: str | None = None) -> str | None:
    """A flag's value from an argv that the pinned parser cannot read (another vLLM version)."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
    return default


def _parallel(model: str, tp: int, pp: int, where: str) -> list[str]:
    from vllm_workshop.planning import model_shape, parallel_problems

    try:
        shape = model_shape(model)
    except LabError as exc:
        return [f"{where}: {exc}"]
    return [
        f"{where}: {model} with TP={tp}, PP={pp}: {problem}" for problem in parallel_problems(shape, tp, pp)
    ]


NEURON_ENGINE_FLAGS = {
    "model": ("--model",),
    "tp": ("--tensor-parallel-size", "-tp"),
    "max-num-seqs": ("--max-num-seqs",),
    "max-model-len": ("--max-model-len",),
}


def _keyed_by(artifacts: Callable[[dict[str, str]], str], source: str, value: str) -> bool:
    """Whether the artifacts folder changes with one engine setting.

    A setting taken from variables (``$(TENSOR_PARALLEL_SIZE)``) keys the folder when changing any of them
    changes the folder; a literal setting must appear in the folder's path as a whole number or path segment
    (``tp2`` does not key ``len2048`` by ``--max-num-seqs=4``)."""
    names = re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", source)
    if names:
        base = artifacts({})
        return all(artifacts({name: "\x00changed"}) != base for name in names)
    path = artifacts({})
    if "/" in value:  # a model id: whole path segments
        return f"/{value.strip('/')}/" in f"{path.rstrip('/')}/"
    return re.search(rf"(?<![0-9.]){re.escape(value)}(?![0-9.])", path) is not None


def _neuron_problems(
    where: str, container: Obj, env_for: Callable[[dict[str, str]], dict[str, str]], engine: dict[str, Any]
) -> list[str]:
    """Neuron pods compile into the working directory and load artifacts from NEURON_COMPILED_ARTIFACTS.

    ``env_for(override)`` gives the container's variables with some replaced; ``engine`` the settings the
    compiled artifacts are specific to (None: not set on the command line)."""
    problems = []
    workdir = container.get("workingDir")
    writable = [m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")]
    if not workdir or not any(workdir == p or workdir.startswith(p.rstrip("/") + "/") for p in writable):
        problems.append(
            f"{where}: workingDir {workdir or '(image default)'} is not on a writable volume; the Neuron "
            "loader saves the model to local-models/ there before compiling"
        )
    raw = serve_argv(container) or []
    sources = {key: _flag(raw, names) for key, names in NEURON_ENGINE_FLAGS.items()}
    if raw and not raw[0].startswith("-"):
        sources["model"] = raw[0]
    artifacts = env_for({}).get("NEURON_COMPILED_ARTIFACTS", "")
    keys = {k: str(v) for k, v in engine.items() if v is not None and sources.get(k) is not None}
    missing = [
        key
        for key, value in keys.items()
        if not artifacts
        or not _keyed_by(
            lambda override: env_for(override).get("NEURON_COMPILED_ARTIFACTS", ""), str(sources[key]), value
        )
    ]
    if not artifacts or missing:
        problems.append(
            f"{where}: NEURON_COMPILED_ARTIFACTS={artifacts or '(unset)'} is not keyed by "
            f"{', '.join(missing or keys)} (one configuration would load another's artifacts)"
        )
    if "--block-size" in " ".join(raw):
        problems.append(f"{where}: --block-size is ignored on Neuron (the plugin sets the KV block size)")
    return problems


def mounted_files(spec: Obj, container: Obj, objects: list[Obj], into: Path) -> dict[str, str]:
    """``{path in the container: local copy}`` for every key of every ConfigMap the container mounts."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o.get("kind") == "ConfigMap"}
    volumes = {v["name"]: v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    local = {}
    for mount in container.get("volumeMounts", []):
        data = maps.get(volumes.get(mount["name"], ""), {})
        for key, text in data.items():
            if mount.get("subPath") not in (None, key):
                continue
            path = mount["mountPath"] if mount.get("subPath") else f"{mount['mountPath'].rstrip('/')}/{key}"
            copy = into / f"{len(local)}-{key}"
            copy.write_text(text)
            local[path] = str(copy)
    return local


def with_local_files(argv: list[str], local: dict[str, str]) -> list[str]:
    """``argv`` with container paths (``--flag=PATH`` or ``PATH``) replaced by their local copies."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        out.append(f"{flag}={local[value]}" if eq and value in local else local.get(arg, arg))
    return out


def check_container_command(pod: RuntimePod, container: Obj, objects: list[Obj]) -> tuple[list[str], bool]:
    """Problems of one container's ``vllm serve`` line, and whether the pinned parser read it."""
    where = f"{pod.owner}:{container['name']}"
    argv = serve_argv(container)
    line = " ".join(policy.command_line(container))
    if argv is None:
        if "vllm serve" in line:
            return [
                f"{where}: runs `vllm serve` inside a shell script; make it the command so it can be checked"
            ], False
        return [], False
    env = container_env(container, objects, pod.env)
    argv = [expand(arg, env) for arg in argv]
    unresolved = sorted({m for arg in argv for m in re.findall(r"\$\(([^)]*)\)", arg)})
    if unresolved:
        return [f"{where}: no ConfigMap or env defines {', '.join(unresolved)}"], False
    parsed = runs_pinned_vllm(container.get("image", ""))
    if parsed:
        from vllm_workshop.vllm_args import parse_serve_argv

        with tempfile.TemporaryDirectory() as files:
            local = mounted_files(pod.spec, container, objects, Path(files))
            try:  # vLLM checks that files it is given exist: give it the ConfigMap files the pod mounts
                args = parse_serve_argv(with_local_files(argv, local))
            except VllmArgsError as exc:
                return [f"{where}: vLLM rejects `vllm serve {' '.join(argv)}`: {exc}"], True
        model, tp, pp = args.model, args.tensor_parallel_size, args.pipeline_parallel_size
        nnodes, seqs, max_len = args.nnodes, args.max_num_seqs, args.max_model_len
    else:
        model = argv[0] if argv and not argv[0].startswith("-") else _flag(argv, ("--model",), "")
        tp = int(_flag(argv, ("--tensor-parallel-size", "-tp"), "1") or 1)
        pp = int(_flag(argv, ("--pipeline-parallel-size", "-pp"), "1") or 1)
        nnodes = int(_flag(argv, ("--nnodes",), "1") or 1)
        seqs, max_len = _flag(argv, ("--max-num-seqs",)), _flag(argv, ("--max-model-len",))
    problems = _parallel(str(model), tp, pp, where)
    requests = pod_requests(pod.spec)
    for device in DEVICE_RESOURCES:
        if device in requests and tp * pp != int(requests[device]) * nnodes:
            problems.append(
                f"{where}: TP x PP = {tp * pp} over {nnodes} node(s), but each pod requests "
                f"{int(requests[device])} {device}"
            )
    if container.get("image", "").startswith(NEURON_IMAGE):
        engine = {"model": model, "tp": tp, "max-num-seqs": seqs, "max-model-len": max_len}
        problems += _neuron_problems(
            where, container, lambda override: container_env(container, objects, pod.env, override), engine
        )
    return problems, parsed


def _serve_llm_configs(obj: Obj) -> list[Obj]:
    serve = yaml.safe_load(obj["spec"].get("serveConfigV2") or "{}") or {}
    return [c for app in serve.get("applications", []) for c in app.get("args", {}).get("llm_configs", [])]


def vllm_command_report(objects: list[Obj]) -> tuple[list[str], int]:
    """Problems of every vLLM engine configuration, and how many lines the pinned parser read."""
    problems, parsed = [], 0
    for pod in runtime_pods(objects):
        for container in pod.spec.get("containers", []):
            found, was_parsed = check_container_command(pod, container, objects)
            problems += found
            parsed += was_parsed
    for obj in objects:
        if obj["kind"] != "RayService":
            continue
        gpus = [int(pod_requests(p.spec).get("nvidia.com/gpu", 0)) for p in runtime_pods([obj])]
        for config in _serve_llm_configs(obj):
            engine = config.get("engine_kwargs", {})
            tp, pp = int(engine.get("tensor_parallel_size", 1)), int(engine.get("pipeline_parallel_size", 1))
            model = config["model_loading_config"].get("model_source", "")
            model_id = config["model_loading_config"]["model_id"]
            where = f"{obj['kind']}/{obj['metadata']['name']} llm_config {model_id}"
            problems += _parallel(model, tp, pp, where)
            if tp * pp > max(gpus, default=0):
                problems.append(f"{where}: TP x PP = {tp * pp} GPUs, but no worker pod has that many")
    return problems, parsed


def vllm_command_lines(objects: list[Obj]) -> list[str]:
    """Problems of every ``vllm serve`` line and Ray Serve LLM engine configuration."""
    return vllm_command_report(objects)[0]


# ------------------------------------------------------------------------------------------- autoscaling


def capacity(spec: Obj, groups: list[NodeGroup]) -> int:
    """How many such pods one cluster defined under ``infra/`` holds at most (its node groups at max size)."""
    per_cluster: dict[str, int] = {}
    for group in groups:
        per_cluster[group.cluster] = per_cluster.get(group.cluster, 0) + group.max_size * pods_per_node(
            spec, group
        )
    return max(per_cluster.values(), default=0)


def _engine_limit(pod: RuntimePod, objects: list[Obj]) -> int | None:
    """``--max-num-seqs`` of the pod's vLLM server, when its command line sets it."""
    for container in pod.spec.get("containers", []):
        argv = serve_argv(container)
        if argv is not None:
            env = container_env(container, objects, pod.env)
            value = _flag([expand(a, env) for a in argv], ("--max-num-seqs",))
            return int(value) if value and value.isdigit() else None
    return None


def _hpa_problems(hpa: Obj, objects: list[Obj], groups: list[NodeGroup]) -> list[str]:
    where = f"HorizontalPodAutoscaler/{hpa['metadata']['name']}"
    ref = hpa["spec"]["scaleTargetRef"]
    pods = [p for p in runtime_pods(objects) if p.owner == f"{ref['kind']}/{ref['name']}"]
    if not pods:
        return [f"{where}: its target {ref['kind']}/{ref['name']} is not in the overlay"]
    pod, problems = pods[0], []
    for metric in hpa["spec"].get("metrics", []):
        if metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
            target = metric["resource"]["target"].get("averageUtilization")
            limits = [c.get("resources", {}).get("limits", {}).get("cpu") for c in pod.spec["containers"]]
            requested = sum(pod_requests({"containers": [c]}).get("cpu", 0) for c in pod.spec["containers"])
            if target and requested and all(limits):  # without a CPU limit a pod can use the whole node
                ceiling = 100 * float(sum(quantity(v) for v in limits) / requested)
                if ceiling <= target * (1 + HPA_TOLERANCE):
                    problems.append(
                        f"{where}: CPU reaches at most {ceiling:.0f}% of its request, target {target}%"
                    )
        elif metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "vllm_num_requests_running":
            target = float(str(metric["pods"]["target"]["averageValue"]))
            limit = _engine_limit(pod, objects)
            if limit is None:
                problems.append(f"{where}: scales on running requests, but the server sets no --max-num-seqs")
            elif limit <= target * (1 + HPA_TOLERANCE):
                problems.append(
                    f"{where}: target {target:g} running requests per pod is never exceeded: the engine "
                    f"runs at most --max-num-seqs={limit}"
                )
    most = capacity(pod.spec, groups)
    if hpa["spec"]["maxReplicas"] > most:
        problems.append(
            f"{where}: maxReplicas {hpa['spec']['maxReplicas']} but the node groups hold {most} such pods"
        )
    return problems


def _ray_problems(obj: Obj, groups: list[NodeGroup]) -> list[str]:
    where = f"RayService/{obj['metadata']['name']}"
    problems, gpu_slots = [], 0
    for pod in runtime_pods([obj]):
        if pod.role != "ray-worker":
            continue
        most = capacity(pod.spec, groups)
        if pod.max_replicas > most:
            problems.append(
                f"{pod.owner}: maxReplicas {pod.max_replicas} but the node groups hold {most} such pods"
            )
        gpu_slots += min(pod.max_replicas, most) * int(pod_requests(pod.spec).get("nvidia.com/gpu", 0))
    for config in _serve_llm_configs(obj):
        engine = config.get("engine_kwargs", {})
        scaling = config.get("deployment_config", {}).get("autoscaling_config", {})
        per_replica = int(engine.get("tensor_parallel_size", 1)) * int(
            engine.get("pipeline_parallel_size", 1)
        )
        replicas = int(scaling.get("max_replicas", 1))
        if replicas * per_replica > gpu_slots:
            problems.append(
                f"{where}: {replicas} Serve replicas need {replicas * per_replica} GPUs, "
                f"the workers offer {gpu_slots}"
            )
        target, seqs = scaling.get("target_ongoing_requests"), engine.get("max_num_seqs")
        if target is not None and seqs is None:
            problems.append(
                f"{where}: Serve scales on ongoing requests, but engine_kwargs sets no max_num_seqs"
            )
        elif target is not None and int(seqs) <= float(target):
            problems.append(
                f"{where}: target_ongoing_requests {target} is never exceeded with max_num_seqs {seqs}"
            )
    return problems


def _group_problems(obj: Obj, groups: list[NodeGroup]) -> list[str]:
    """A LeaderWorkerSet's groups need all their pods at once: leaders and workers of the same shape share
    the node groups, so together they must fit what the groups hold at their maximum size."""
    pods = list(runtime_pods([obj]))
    first = pods[0].spec
    alike = all(
        pod_requests(p.spec) == pod_requests(first)
        and p.spec.get("nodeSelector") == first.get("nodeSelector")
        for p in pods
    )
    batches = (
        [(sum(p.max_replicas for p in pods), first, "leaders and workers")]
        if alike
        else [(p.max_replicas, p.spec, p.role + "s") for p in pods]
    )
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    return [
        f"{where}: {count} {what} must run at once but the node groups hold {most} such pods"
        for count, spec, what in batches
        if count > (most := capacity(spec, groups))
    ]


def autoscaling(objects: list[Obj], groups: list[NodeGroup]) -> list[str]:
    """Autoscaling that can act: reachable targets, and maxima the node groups can hold."""
    problems = []
    for obj in objects:
        if obj["kind"] == "HorizontalPodAutoscaler":
            problems += _hpa_problems(obj, objects, groups)
        elif obj["kind"] == "RayService":
            problems += _ray_problems(obj, groups)
        elif obj["kind"] == "LeaderWorkerSet":
            problems += _group_problems(obj, groups)
    return problems


# ------------------------------------------------------------------------------------------------ running


def pod_security(objects: list[Obj]) -> list[str]:
    """The "restricted" Pod Security Standard and the token rule, for every container that will exist."""
    return policy.restricted_security_context(objects) + policy.service_account_tokens(objects)


CHECKS: dict[str, Callable[[list[Obj], list[NodeGroup]], list[str]]] = {
    "schedulable": schedulability,
    "vllm command lines": lambda objects, _: vllm_command_lines(objects),
    "pod security at run time": lambda objects, _: pod_security(objects),
    "autoscaling": autoscaling,
}


def check_all(objects: list[Obj], groups: list[NodeGroup] | None = None) -> dict[str, list[str]]:
    """Every pre-apply check's problems, by check name."""
    groups = infra_node_groups() if groups is None else groups
    return {title: check(objects, groups) for title, check in CHECKS.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m vllm_workshop.cluster_checks [OVERLAY ...]``: check overlays (all by default)."""
    from vllm_workshop import k8s

    parser = argparse.ArgumentParser(
        prog="python -m vllm_workshop.cluster_checks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("overlays", nargs="*", help="overlay names (default: every overlay)")
    names = parser.parse_args(argv).overlays or [p.name for p in k8s.all_overlays()]
    start, groups, failed, parsed = time.monotonic(), infra_node_groups(), 0, 0
    print(f"node groups: {', '.join(f'{g.name} ({g.instance_type}, max {g.max_size})' for g in groups)}")
    for name in names:
        objects = k8s.load_objects(k8s.render(name))
        results = check_all(objects, groups)
        parsed += vllm_command_report(objects)[1]
        found = {title: problems for title, problems in results.items() if problems}
        print(f"{name}: {'ok' if not found else 'FAILED'}")
        for title, problems in found.items():
            failed += 1
            print("\n".join(f"  [{title}] {problem}" for problem in problems))
    print(f"{parsed} vllm serve lines parsed with vLLM's own parser; {time.monotonic() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
