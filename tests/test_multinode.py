"""Module 5 manifests: LeaderWorkerSet and RayService wiring, and that their validation catches mistakes."""

from __future__ import annotations

import copy

import yaml

from vllm_workshop import k8s, policy

RENDERED = {
    name: k8s.load_objects(k8s.render(name))
    for name in ("lws-gpu-llama70b", "lws-inf2-llama70b", "kuberay-gpu-qwen")
}


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def test_lws_leader_serves_with_tp_inside_and_pp_across_nodes() -> None:
    lws = one(RENDERED["lws-gpu-llama70b"], "LeaderWorkerSet")
    template = lws["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    script = leader["args"][0]
    assert template["size"] == 2
    assert "ray start --head" in script
    assert '--pipeline-parallel-size="${LWS_GROUP_SIZE}"' in script
    assert '--tensor-parallel-size="${TENSOR_PARALLEL_SIZE}"' in script
    assert "--distributed-executor-backend=ray" in script
    assert "${LWS_LEADER_ADDRESS}:6379" in worker["args"][0]
    for container in (leader, worker):
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "4"
    config = one(RENDERED["lws-gpu-llama70b"], "ConfigMap")
    assert config["data"]["TENSOR_PARALLEL_SIZE"] == "4"
    assert leader["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    service = one(RENDERED["lws-gpu-llama70b"], "Service")
    assert service["spec"]["selector"]["role"] == "leader"


def test_lws_neuron_variant() -> None:
    lws = one(RENDERED["lws-inf2-llama70b"], "LeaderWorkerSet")
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    assert leader["containers"][0]["resources"]["limits"]["aws.amazon.com/neuroncore"] == "24"
    assert "neuronx" in leader["containers"][0]["image"]
    assert one(RENDERED["lws-inf2-llama70b"], "ConfigMap")["data"]["TENSOR_PARALLEL_SIZE"] == "24"


def test_rayservice_serves_ray_serve_llm_with_autoscaling() -> None:
    service = one(RENDERED["kuberay-gpu-qwen"], "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = serve["applications"][0]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    llm = app["args"]["llm_configs"][0]
    assert llm["model_loading_config"]["model_source"] == "Qwen/Qwen2.5-7B-Instruct"
    scaling = llm["deployment_config"]["autoscaling_config"]
    assert scaling["min_replicas"] <= scaling["max_replicas"]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    group = cluster["workerGroupSpecs"][0]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_multinode_overlays_validate_and_pass_policy() -> None:
    for name, objects in RENDERED.items():
        report = k8s.validate_objects(name, objects)
        assert report.ok, report.summary()
        assert not any(policy.check_all(objects).values()), name


def test_operator_validation_catches_mistakes() -> None:
    lws = copy.deepcopy(one(RENDERED["lws-gpu-llama70b"], "LeaderWorkerSet"))
    lws["spec"]["leaderWorkerTemplate"]["sise"] = 2  # typo in the CR
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    worker["ports"] = [{"containerPort": "x"}]
    error = k8s.validate_operator_resource(lws)
    assert error and "sise" in error and "pod template" in error

    ray = copy.deepcopy(one(RENDERED["kuberay-gpu-qwen"], "RayService"))
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    serve["applications"][0]["args"]["llm_configs"][0]["model_loading_config"].pop("model_id")
    ray["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    error = k8s.validate_operator_resource(ray)
    assert error and "serveConfigV2" in error and "model_id" in error


def test_operator_install_scripts_pin_versions() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lib = (root / "infra/lib.sh").read_text()
    assert 'LWS_VERSION="v' in lib and 'KUBERAY_OPERATOR_VERSION="' in lib
    for script in ("install-lws.sh", "install-kuberay.sh"):
        text = (root / "infra/operators" / script).read_text()
        assert "VERSION" in text and "require_cluster" in text
