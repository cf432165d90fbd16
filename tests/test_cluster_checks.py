"""Pre-apply checks (``make cluster-checks``): every overlay passes them; each rejects a broken manifest."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import yaml
from rendered import OVERLAY_NAMES, ROOT, by_kind, objects, one

from vllm_workshop import cluster_checks, nodegroups, operators, policy
from vllm_workshop.errors import VllmArgsError
from vllm_workshop.vllm_args import PINNED_VLLM, installed_vllm, parse_serve_argv

GROUPS = nodegroups.infra_node_groups()
GIB = 2**30


def cluster_yaml() -> dict:
    return yaml.safe_load((ROOT / "infra/eks/cluster.yaml").read_text())


def vllm(objs: list[dict], name: str = "vllm") -> dict:
    return one(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def config(objs: list[dict], prefix: str = "vllm-config") -> dict:
    return next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith(prefix))["data"]


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_every_overlay_passes_the_pre_apply_checks(name: str) -> None:
    problems = {
        title: found for title, found in cluster_checks.check_all(objects(name), GROUPS).items() if found
    }
    assert not problems


# --------------------------------------------------------------------------------------------- node facts


def test_kubelet_reserve_matches_the_eks_ami_examples() -> None:
    kubelet = nodegroups.node_facts()["kubelet"]["eks"]
    # EKS AMI: 2 vCPU -> 70m, 4 vCPU -> 80m, 48 vCPU -> 190m reserved; 29 pods (m5.large) -> 574Mi reserved.
    for vcpu, reserved_m in ((2, 70), (4, 80), (48, 190)):
        free = nodegroups.allocatable({"vcpu": vcpu, "memory_gib": 8, "max_pods": 29}, kubelet, 80)
        assert free["cpu"] == vcpu - Fraction(reserved_m, 1000)
    free = nodegroups.allocatable({"vcpu": 2, "memory_gib": 8, "max_pods": 29}, kubelet, 80)
    capacity = 8 * GIB * Fraction(str(kubelet["memory_capacity_fraction"]))
    assert capacity - free["memory"] == (574 + kubelet["eviction_memory_mib"]) * 2**20


def test_every_node_group_instance_type_is_in_the_facts_table_with_a_source() -> None:
    table = nodegroups.node_facts()["instance_types"]
    for group in cluster_yaml()["managedNodeGroups"]:
        entry = table[group["instanceType"]]
        assert entry["source"].startswith("https://") and entry["max_pods"] > 0
    assert {g.name for g in GROUPS} >= {"system", "gpu-l4", "gpu-l4x4", "inf2", "inf2-48x", "kind-worker"}


def test_quantities() -> None:
    assert nodegroups.quantity("500m") == Fraction(1, 2)
    assert nodegroups.quantity("2Gi") == 2 * GIB
    assert nodegroups.quantity("1e3") == 1000
    with pytest.raises(ValueError, match="quantity"):
        nodegroups.quantity("two")


# ------------------------------------------------------------------------------------------ schedulable


def test_gpu_pod_sized_for_a_bigger_node_fits_nowhere() -> None:
    objs = objects("gpu-llama31-8b")
    vllm(objs)["resources"]["requests"].update({"cpu": "4", "memory": "24Gi"})  # the old nvidia-gpu sizing
    (problem,) = cluster_checks.schedulability(objs, GROUPS)
    assert "Deployment/vllm fits no node group" in problem
    assert "gpu-l4: cpu 4.00 CPU > 3.79 CPU allocatable on g6.xlarge, memory 24.0Gi > 14.4Gi" in problem


def test_ray_head_with_its_autoscaler_does_not_fit_the_old_system_nodes() -> None:
    old = cluster_yaml()
    old["managedNodeGroups"][0]["instanceType"] = "m6i.large"
    groups = nodegroups.eks_groups(old)
    problems = cluster_checks.schedulability(objects("kuberay-gpu-qwen"), groups)
    (head,) = [p for p in problems if "head" in p]
    # 2 CPU of the head + 0.5 of the injected autoscaler sidecar
    assert "system: cpu 2.50 CPU > 1.80 CPU allocatable on m6i.large" in head


def test_an_accelerator_pod_must_pin_its_instance_type() -> None:
    objs = objects("gpu-llama31-8b")
    del one(objs, "Deployment")["spec"]["template"]["spec"]["nodeSelector"][
        "node.kubernetes.io/instance-type"
    ]
    assert cluster_checks.schedulability(objs, GROUPS) == [
        "Deployment/vllm fits g6.12xlarge and g6.xlarge nodes: the cluster autoscaler may start either "
        "(select node.kubernetes.io/instance-type)"
    ]


def test_missing_toleration_and_unknown_instance_type_are_rejected() -> None:
    objs = objects("inf2-qwen")
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    spec["tolerations"] = []
    (problem,) = cluster_checks.schedulability(objs, GROUPS)
    assert "inf2: taint aws.amazon.com/neuron:NoSchedule is not tolerated" in problem
    spec["tolerations"] = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]
    spec["nodeSelector"]["node.kubernetes.io/instance-type"] = "inf2.8xlarge"
    (problem,) = cluster_checks.schedulability(objs, GROUPS)
    assert "nodeSelector node.kubernetes.io/instance-type=inf2.8xlarge (node label: inf2.xlarge)" in problem


def test_more_devices_than_an_instance_has_are_rejected() -> None:
    objs = objects("inf2-llama31-70b")
    resources = vllm(objs)["resources"]
    resources["requests"]["aws.amazon.com/neuroncore"] = resources["limits"]["aws.amazon.com/neuroncore"] = (
        "32"
    )
    (problem,) = cluster_checks.schedulability(objs, GROUPS)
    assert "inf2-48x: aws.amazon.com/neuroncore 32 > 24 allocatable" in problem


def test_a_scheduler_that_is_not_installed_is_rejected() -> None:
    objs = objects("inf2-qwen")
    one(objs, "Deployment")["spec"]["template"]["spec"]["schedulerName"] = "neuron-scheduler"
    (problem,) = cluster_checks.schedulability(objs, GROUPS)
    assert "scheduler neuron-scheduler is not installed" in problem


def test_an_x86_only_image_must_not_land_on_an_arm64_kind_node() -> None:
    objs = objects("cpu-lab")
    del one(objs, "Deployment")["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"]
    (problem,) = cluster_checks.schedulability(objs, GROUPS)
    assert problem.startswith("Deployment/vllm may be scheduled on kind-worker: image ")
    assert "runs on amd64 only, but kind-worker nodes may be amd64/arm64" in problem


# ------------------------------------------------------------------------------------ vllm command lines


def test_the_pinned_parser_is_the_installed_vllm() -> None:
    assert installed_vllm() == PINNED_VLLM
    args = parse_serve_argv(["--model", "Qwen/Qwen2.5-7B-Instruct", "--tensor_parallel_size=2"])
    assert (args.model, args.tensor_parallel_size) == ("Qwen/Qwen2.5-7B-Instruct", 2)
    with pytest.raises(VllmArgsError, match="unrecognized arguments: --no-such-flag"):
        parse_serve_argv(["m", "--no-such-flag"])


def test_every_vllm_image_line_of_the_pinned_version_is_parsed() -> None:
    parsed = {name: cluster_checks.vllm_command_report(objects(name))[1] for name in OVERLAY_NAMES}
    # CPU and GPU images run vLLM 0.32 (leader and headless worker of the LWS); the Neuron DLC runs 0.13.
    assert parsed == {
        "cpu-lab": 1,
        "cpu-features": 1,
        "fleet-cpu": 1,
        "gateway-cpu": 1,
        "gpu-llama31-8b": 1,
        "inf2-qwen": 0,
        "inf2-llama31-70b": 0,
        "kuberay-gpu-qwen": 0,
        "lws-gpu-llama70b": 2,
    }


def test_expansion_follows_kubernetes_rules() -> None:
    env = {"MODEL": "m", "N": "4"}
    assert cluster_checks.expand("$(MODEL) --n=$(N) $(UNSET) $$(N)", env) == "m --n=4 $(UNSET) $(N)"


def test_a_value_vllm_rejects_is_reported_with_vllms_message() -> None:
    objs = objects("gpu-llama31-8b")
    config(objs)["MAX_NUM_SEQS"] = "many"
    (problem,) = cluster_checks.vllm_command_lines(objs)
    assert "--max-num-seqs: invalid int value: 'many'" in problem


def test_an_undefined_variable_is_reported() -> None:
    objs = objects("gpu-llama31-8b")
    del config(objs)["GPU_MEMORY_UTILIZATION"]
    (problem,) = cluster_checks.vllm_command_lines(objs)
    assert "no ConfigMap or env defines GPU_MEMORY_UTILIZATION" in problem


def test_a_chat_template_must_come_from_a_mounted_config_map() -> None:
    objs = objects("cpu-features")
    assert cluster_checks.vllm_command_lines(objs) == []  # the template's ConfigMap is mounted where args say
    (deployment,) = by_kind(objs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "chat-template"]
    (problem,) = cluster_checks.vllm_command_lines(objs)
    assert "tool_chat_template.jinja) appears path-like, but doesn't exist" in problem


def test_lora_modules_are_read_by_vllms_parser() -> None:
    args = parse_serve_argv(["m", "--enable-lora", "--lora-modules=persona=/adapters/persona"])
    assert args.enable_lora and [(m.name, m.path) for m in args.lora_modules] == [
        ("persona", "/adapters/persona")
    ]
    with pytest.raises(VllmArgsError):
        parse_serve_argv(["m", "--enable-lora", "--max-lora-rank=zero"])


def test_tensor_parallel_24_does_not_divide_llama_70b_heads() -> None:
    objs = objects("inf2-llama31-70b")
    config(objs)["TENSOR_PARALLEL_SIZE"] = "24"
    problems = cluster_checks.vllm_command_lines(objs)
    assert any("attention heads (64) must be divisible by tensor parallel size (24)" in p for p in problems)
    assert any("requests 16 aws.amazon.com/neuroncore" in p for p in problems)


def test_parallel_sizes_must_match_the_gpus_of_each_lws_pod() -> None:
    objs = objects("lws-gpu-llama70b")
    config(objs, "vllm-multinode-config")["TENSOR_PARALLEL_SIZE"] = "8"
    problems = cluster_checks.vllm_command_lines(objs)
    assert len(problems) == 2  # leader and worker
    assert all("TP x PP = 16 over 2 node(s), but each pod requests 4 nvidia.com/gpu" in p for p in problems)


def test_vllm_serve_hidden_in_a_shell_script_is_rejected() -> None:
    objs = objects("gpu-llama31-8b")
    container = vllm(objs)
    container["args"] = ["vllm serve " + " ".join(container["args"])]
    container["command"] = ["/bin/bash", "-c"]
    (problem,) = cluster_checks.vllm_command_lines(objs)
    assert "runs `vllm serve` inside a shell script" in problem


def test_ray_serve_engine_kwargs_are_checked_against_the_model() -> None:
    objs = objects("kuberay-gpu-qwen")
    service = one(objs, "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]["tensor_parallel_size"] = 3
    service["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    problems = cluster_checks.vllm_command_lines(objs)
    assert any("attention heads (28) must be divisible by tensor parallel size (3)" in p for p in problems)
    assert any("TP x PP = 3 GPUs, but no worker pod has that many" in p for p in problems)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, data: c.pop("workingDir"), "workingDir (image default) is not on a writable volume"),
        (lambda c, data: c.update({"workingDir": "/opt"}), "workingDir /opt is not on a writable volume"),
        (
            lambda c, data: c.update(
                {"env": [{"name": "NEURON_COMPILED_ARTIFACTS", "value": "/neuron-cache/a"}]}
            ),
            "NEURON_COMPILED_ARTIFACTS=/neuron-cache/a is not keyed by model, tp, max-num-seqs, max-model-",
        ),
        (lambda c, data: c["args"].append("--block-size=32"), "--block-size is ignored on Neuron"),
    ],
)
def test_neuron_pods_compile_into_a_writable_keyed_place(mutate, message: str) -> None:
    objs = objects("inf2-qwen")
    mutate(vllm(objs), config(objs))
    problems = cluster_checks.vllm_command_lines(objs)
    assert len(problems) == 1 and message in problems[0]


@pytest.mark.parametrize("overlay", ["inf2-qwen", "inf2-llama31-70b"])
@pytest.mark.parametrize(
    ("segment", "key"),
    [
        ("-seqs$(MAX_NUM_SEQS)", "max-num-seqs"),  # "4" / "8" still occur in len2048 / sdk2.28.0
        ("tp$(TENSOR_PARALLEL_SIZE)-", "tp"),  # "2" still occurs in sdk2.28.0
        ("-len$(MAX_MODEL_LEN)", "max-model-len"),
        ("/$(MODEL)", "model"),
    ],
)
def test_each_engine_setting_must_key_the_neuron_artifacts(overlay: str, segment: str, key: str) -> None:
    # The folder must change with each setting, not merely contain its digits somewhere.
    objs = objects(overlay)
    (artifacts,) = [e for e in vllm(objs)["env"] if e["name"] == "NEURON_COMPILED_ARTIFACTS"]
    assert segment in artifacts["value"]
    artifacts["value"] = artifacts["value"].replace(segment, "")
    (problem,) = cluster_checks.vllm_command_lines(objs)
    assert problem.endswith(f"is not keyed by {key} (one configuration would load another's artifacts)")


def test_a_literal_engine_setting_keys_the_artifacts_only_as_a_whole_number() -> None:
    objs = objects("inf2-qwen")
    container = vllm(objs)
    container["args"] = [a.replace("$(MAX_NUM_SEQS)", "4") for a in container["args"]]
    (artifacts,) = [e for e in container["env"] if e["name"] == "NEURON_COMPILED_ARTIFACTS"]
    artifacts["value"] = artifacts["value"].replace("$(MAX_NUM_SEQS)", "4")
    assert cluster_checks.vllm_command_lines(objs) == []
    artifacts["value"] = artifacts["value"].replace("-seqs4", "")  # "4" is still in len2048
    (problem,) = cluster_checks.vllm_command_lines(objs)
    assert "is not keyed by max-num-seqs" in problem


# ------------------------------------------------------------------------------------------ pod security


def test_kuberay_injects_an_autoscaler_sidecar_and_a_wait_init_container() -> None:
    pods = {p.role: p for p in operators.runtime_pods(objects("kuberay-gpu-qwen"))}
    head, worker = pods["head"], pods["ray-worker"]
    sidecar = head.spec["containers"][-1]
    assert sidecar["name"] == "autoscaler" and head.talks_to_api
    assert sidecar["image"] == head.spec["containers"][0]["image"]
    assert worker.spec["initContainers"][-1]["name"] == "wait-gcs-ready"


def test_autoscaler_sidecar_without_its_security_context_breaks_restricted() -> None:
    objs = objects("kuberay-gpu-qwen")
    del one(objs, "RayService")["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    problems = cluster_checks.pod_security(objs)
    assert problems
    assert all(p.startswith("RayService/llm-serve head:autoscaler:") for p in problems)
    assert any("allowPrivilegeEscalation is not false" in p for p in problems)


def test_ray_worker_security_context_reaches_the_injected_init_container() -> None:
    objs = objects("kuberay-gpu-qwen")
    group = one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    problems = cluster_checks.pod_security(objs)
    assert {p.split(":")[1] for p in problems} == {"ray-worker", "wait-gcs-ready"}


def test_ray_head_needs_its_token_and_workers_must_not_have_one() -> None:
    objs = objects("kuberay-gpu-qwen")
    cluster = one(objs, "RayService")["spec"]["rayClusterConfig"]
    cluster["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] = False
    cluster["workerGroupSpecs"][0]["template"]["spec"]["automountServiceAccountToken"] = True
    assert cluster_checks.pod_security(objs) == [
        "RayService/llm-serve head: it calls the Kubernetes API and needs its service account token, but it "
        "is not mounted (automountServiceAccountToken: true in the pod spec)",
        "RayService/llm-serve worker group gpu-l4: service account token is mounted",
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s, c: s["securityContext"].update({"runAsUser": 0}), "runAsUser is 0"),
        (lambda s, c: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "volume h is hostPath"),
        (
            lambda s, c: c["securityContext"]["capabilities"].update({"add": ["SYS_ADMIN"]}),
            "adds capabilities",
        ),
        (lambda s, c: c["ports"][0].update({"hostPort": 8000}), "uses a hostPort"),
        (lambda s, c: s.update({"hostNetwork": True}), "hostNetwork is true"),
    ],
)
def test_restricted_profile_rules(mutate, message: str) -> None:
    objs = objects("cpu-lab")
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    mutate(spec, spec["containers"][0])
    assert any(message in p for p in policy.restricted_security_context(objs))


# -------------------------------------------------------------------------------------------- autoscaling


def test_hpa_target_beyond_the_engine_limit_and_too_many_replicas_are_rejected() -> None:
    objs = objects("inf2-qwen")
    hpa = one(objs, "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplicas"] = 4
    hpa["spec"]["metrics"][1]["pods"]["target"]["averageValue"] = "48"
    assert cluster_checks.autoscaling(objs, GROUPS) == [
        "HorizontalPodAutoscaler/vllm: target 48 running requests per pod is never exceeded: the engine runs "
        "at most --max-num-seqs=4",
        "HorizontalPodAutoscaler/vllm: maxReplicas 4 but the node groups hold 2 such pods",
    ]


def test_hpa_on_running_requests_needs_an_explicit_engine_limit() -> None:
    objs = objects("gpu-llama31-8b")
    container = vllm(objs)
    container["args"] = [a for a in container["args"] if not a.startswith("--max-num-seqs")]
    (problem,) = cluster_checks.autoscaling(objs, GROUPS)
    assert "scales on running requests, but the server sets no --max-num-seqs" in problem


def test_cpu_hpa_target_above_the_cpu_limit_is_rejected() -> None:
    objs = objects("cpu-lab")
    vllm(objs)["resources"]["limits"]["cpu"] = "1"  # = the request: utilisation stops at 100%
    one(objs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = (
        95
    )
    (problem,) = cluster_checks.autoscaling(objs, GROUPS)
    assert "CPU reaches at most 100% of its request, target 95%" in problem


def test_ray_autoscaling_bounds_must_fit_the_node_groups_and_the_engine() -> None:
    objs = objects("kuberay-gpu-qwen")
    service = one(objs, "RayService")
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 8
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    llm = serve["applications"][0]["args"]["llm_configs"][0]
    llm["deployment_config"]["autoscaling_config"]["max_replicas"] = 6
    llm["engine_kwargs"]["max_num_seqs"] = 16
    service["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    assert cluster_checks.autoscaling(objs, GROUPS) == [
        "RayService/llm-serve worker group gpu-l4: maxReplicas 8 but the node groups hold 4 such pods",
        "RayService/llm-serve: 6 Serve replicas need 6 GPUs, the workers offer 4",
        "RayService/llm-serve: target_ongoing_requests 32 is never exceeded with max_num_seqs 16",
    ]


# ---------------------------------------------------------------------------------- the cluster infra/ makes


def test_eksctl_installs_no_device_plugins_of_its_own() -> None:
    script = (ROOT / "infra/eks/create-cluster.sh").read_text()
    (create,) = [line for line in script.splitlines() if line.startswith("eksctl create cluster")]
    assert "--install-nvidia-plugin=false" in create and "--install-neuron-plugin=false" in create


def test_nvidia_device_plugin_pods_fit_every_gpu_node_group() -> None:
    # The chart default affinity (NVIDIA/k8s-device-plugin: deployments/helm/nvidia-device-plugin/values.yaml)
    # plus the nodeSelector and tolerations install-nvidia-device-plugin.sh sets.
    script = (ROOT / "infra/eks/install-nvidia-device-plugin.sh").read_text()
    selector = yaml.safe_load(re.search(r"nodeSelector=(\{[^']*\})", script).group(1))
    tolerations = yaml.safe_load(re.search(r"tolerations=(\[[^']*\])", script).group(1))
    terms = [
        {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}
        for key, value in (
            ("feature.node.kubernetes.io/pci-10de.present", "true"),
            ("feature.node.kubernetes.io/cpu-model.vendor_id", "NVIDIA"),
            ("nvidia.com/gpu.present", "true"),
        )
    ]
    plugin = {
        "nodeSelector": selector,
        "tolerations": tolerations,
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
        },
        "containers": [{"name": "plugin", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.4"}],
    }
    gpu_groups = [g for g in GROUPS if "nvidia.com/gpu" in g.allocatable]
    assert len(gpu_groups) == 2
    for group in gpu_groups:
        assert nodegroups.misfit(plugin, group) == [], group.name


def test_the_neuron_scheduler_extension_is_installed_under_the_name_the_pods_use() -> None:
    script = (ROOT / "infra/eks/install-neuron-device-plugin.sh").read_text()
    assert '--set "scheduler.enabled=true"' in script
    name = re.search(r"scheduler\.customScheduler\.fullnameOverride=([\w-]+)", script).group(1)
    for overlay in ("inf2-qwen", "inf2-llama31-70b"):
        assert one(objects(overlay), "Deployment")["spec"]["template"]["spec"]["schedulerName"] == name
    assert name in nodegroups.node_facts()["schedulers"]


def test_network_policies_are_enforced_on_eks() -> None:
    (cni,) = [a for a in cluster_yaml()["addons"] if a["name"] == "vpc-cni"]
    assert yaml.safe_load(cni["configurationValues"])["enableNetworkPolicy"] == "true"


def test_every_pod_has_a_network_policy_and_removing_one_is_caught() -> None:
    for name in ("lws-gpu-llama70b", "kuberay-gpu-qwen", "gateway-cpu"):
        objs = objects(name)
        assert policy.network_policy_coverage(objs) == []
        objs = [o for o in objs if o["kind"] != "NetworkPolicy"]
        assert len(policy.network_policy_coverage(objs)) == len(operators.runtime_pods(objs))


def test_efs_storage_class_gives_a_recreated_claim_its_old_directory() -> None:
    storage = yaml.safe_load((ROOT / "infra/eks/efs-storageclass.yaml").read_text())
    parameters = storage["parameters"]
    assert parameters["ensureUniqueDirectory"] == "false"
    assert parameters["subPathPattern"] == "${.PVC.namespace}/${.PVC.name}"
    assert "efs-storageclass.yaml" in (ROOT / "infra/eks/create-efs-storageclass.sh").read_text()
    assert storage.get("reclaimPolicy", "Delete") == "Delete"  # deletes the access point, keeps the directory


def test_cluster_autoscaler_can_scale_every_group_from_zero() -> None:
    config_ = cluster_yaml()
    lib = (ROOT / "infra/lib.sh").read_text()
    assert 'CLUSTER_AUTOSCALER_CHART_VERSION="' in lib
    assert "install-cluster-autoscaler.sh" in (ROOT / "infra/eks/create-cluster.sh").read_text()
    (account,) = config_["iam"]["serviceAccounts"]
    assert account["metadata"]["name"] == "cluster-autoscaler" and account["wellKnownPolicies"]["autoScaler"]
    table = nodegroups.node_facts()["instance_types"]
    for group in config_["managedNodeGroups"]:
        if group["minSize"] > 0:
            continue
        assert group.get("propagateASGTags") is True, group["name"]
        prefix = "k8s.io/cluster-autoscaler/node-template/resources/"
        tags = {
            k.removeprefix(prefix): int(v) for k, v in group.get("tags", {}).items() if k.startswith(prefix)
        }
        assert tags == table[group["instanceType"]]["devices"], group["name"]


def test_a_neuron_overlay_that_pipelines_over_inf2_nodes_is_gone() -> None:
    runtime = operators.runtime_pods(objects("inf2-llama31-70b"))
    assert [p.owner for p in runtime] == ["Deployment/vllm"]
    assert not (ROOT / "modules/05-multi-node/overlays/lws-inf2-llama70b").exists()


def test_a_leaderworkerset_whose_groups_outgrow_the_node_group_is_rejected() -> None:
    objs = objects("lws-gpu-llama70b")
    groups = nodegroups.infra_node_groups()
    assert cluster_checks.autoscaling(objs, groups) == []
    one(objs, "LeaderWorkerSet")["spec"]["replicas"] = 2  # 2 groups x 2 pods of a whole g6.12xlarge each
    (problem,) = cluster_checks.autoscaling(objs, groups)
    assert "4 leaders and workers must run at once but the node groups hold 2 such pods" in problem
