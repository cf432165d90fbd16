"""Module 5 manifests: LeaderWorkerSet and RayService wiring, and that their validation catches mistakes."""

from __future__ import annotations

import yaml
from rendered import ROOT, objects, one

from vllm_workshop import k8s, operators, policy


def test_lws_runs_vllms_own_multi_node_executor_with_tp_inside_and_pp_across_nodes() -> None:
    objs = objects("lws-gpu-llama70b")
    lws = one(objs, "LeaderWorkerSet")
    template = lws["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    for container in (leader, worker):
        assert container["command"] == ["vllm", "serve"]
        assert {
            "--tensor-parallel-size=$(TENSOR_PARALLEL_SIZE)",
            "--pipeline-parallel-size=$(LWS_GROUP_SIZE)",
            "--nnodes=$(LWS_GROUP_SIZE)",
            "--node-rank=$(LWS_WORKER_INDEX)",
            "--master-addr=$(LWS_LEADER_ADDRESS)",
            "--distributed-executor-backend=mp",
        } <= set(container["args"])
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "4"
    assert "--headless" in worker["args"] and "--headless" not in leader["args"]
    assert not policy.serves_vllm(worker) and policy.serves_vllm(leader)
    config = one(objs, "ConfigMap")
    assert config["data"]["TENSOR_PARALLEL_SIZE"] == "4"
    assert leader["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert one(objs, "Service")["spec"]["selector"]["role"] == "leader"


def test_lws_workers_wait_for_the_leader_instead_of_restarting_the_group() -> None:
    # The old worker ran `exec ray start --address=...` once: started before the leader it exited, and
    # RecreateGroupOnPodRestart restarted the whole group, in a loop. A headless vLLM worker waits for the
    # leader's torch.distributed store for --distributed-timeout-seconds instead.
    objs = objects("lws-gpu-llama70b")
    (worker,) = [p for p in operators.runtime_pods(objs) if p.role == "worker"]
    container = worker.spec["containers"][0]
    assert "ray start" not in " ".join(policy.command_line(container))
    assert "--distributed-timeout-seconds=$(DISTRIBUTED_TIMEOUT_SECONDS)" in container["args"]
    assert int(one(objs, "ConfigMap")["data"]["DISTRIBUTED_TIMEOUT_SECONDS"]) >= 1800
    assert worker.env["LWS_WORKER_INDEX"] == "1" and worker.env["LWS_GROUP_SIZE"] == "2"


def test_lws_pods_share_a_model_cache_and_bound_their_scratch_space() -> None:
    objs = objects("lws-gpu-llama70b")
    claim = one(objs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in operators.runtime_pods(objs):
        container = pod.spec["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod.spec["volumes"]}
        assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HOME"].startswith(mounts["model-cache"])
        assert (
            volumes["tmp"]["emptyDir"]["sizeLimit"] == container["resources"]["requests"]["ephemeral-storage"]
        )


def test_neuron_70b_is_one_inf2_48xlarge_with_tensor_parallel_16() -> None:
    objs = objects("inf2-llama31-70b")
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["nodeSelector"]["node.kubernetes.io/instance-type"] == "inf2.48xlarge"
    assert container["resources"]["limits"]["aws.amazon.com/neuroncore"] == "16"
    assert "neuronx" in container["image"]
    data = one(objs, "ConfigMap")["data"]
    assert (data["MODEL"], data["TENSOR_PARALLEL_SIZE"]) == ("meta-llama/Llama-3.1-70B-Instruct", "16")
    assert not [o for o in objs if o["kind"] == "LeaderWorkerSet"]


def test_rayservice_serves_ray_serve_llm_with_autoscaling() -> None:
    service = one(objects("kuberay-gpu-qwen"), "RayService")
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


def test_ray_workers_declare_the_accelerator_type_serve_asks_for() -> None:
    service = one(objects("kuberay-gpu-qwen"), "RayService")
    llm = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["llm_configs"][0]
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    # The format Ray's KubeRay autoscaler reads (autoscaling_config.py, _get_custom_resources): '"{...}"'.
    declared = yaml.safe_load(group["rayStartParams"]["resources"][1:-1].replace("\\", ""))
    assert declared == {f"accelerator_type:{llm['accelerator_type']}": 1}


def test_multinode_overlays_validate_and_pass_policy() -> None:
    for name in ("lws-gpu-llama70b", "kuberay-gpu-qwen", "inf2-llama31-70b"):
        objs = objects(name)
        report = k8s.validate_objects(name, objs)
        assert report.ok, report.summary()
        assert not any(policy.check_all(objs).values()), name


def test_operator_validation_catches_mistakes() -> None:
    lws = one(objects("lws-gpu-llama70b"), "LeaderWorkerSet")
    lws["spec"]["leaderWorkerTemplate"]["sise"] = 2  # typo in the CR
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    worker["ports"] = [{"containerPort": "x"}]
    error = k8s.validate_operator_resource(lws)
    assert error and "sise" in error and "pod template" in error

    ray = one(objects("kuberay-gpu-qwen"), "RayService")
    options = ray["spec"]["rayClusterConfig"]["autoscalerOptions"]
    options["securityContex"] = options.pop("securityContext")  # typo: the sidecar would get no context
    assert "'securityContex' was unexpected" in k8s.validate_operator_resource(ray)
    options["securityContext"] = options.pop("securityContex")
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    serve["applications"][0]["args"]["llm_configs"][0]["model_loading_config"].pop("model_id")
    ray["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    error = k8s.validate_operator_resource(ray)
    assert error and "serveConfigV2" in error and "model_id" in error


def test_operator_install_scripts_pin_versions() -> None:
    lib = (ROOT / "infra/lib.sh").read_text()
    assert 'LWS_VERSION="v' in lib and 'KUBERAY_OPERATOR_VERSION="' in lib
    for script in ("install-lws.sh", "install-kuberay.sh"):
        text = (ROOT / "infra/operators" / script).read_text()
        assert "VERSION" in text and "require_cluster" in text
