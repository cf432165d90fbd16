"""Module 4 manifests: every overlay builds, validates against the pinned schemas and passes the policies."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from vllm_workshop import k8s, policy
from vllm_workshop.errors import ClusterNotConfiguredError

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = k8s.all_overlays()
RENDERED = {path.name: k8s.load_objects(k8s.render(path)) for path in OVERLAYS}


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def vllm_container(objects: list[dict]) -> dict:
    (deployment,) = [o for o in by_kind(objects, "Deployment") if o["metadata"]["name"] == "vllm"]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_the_module_4_overlays_exist() -> None:
    names = {p.name for p in OVERLAYS}
    assert {"gpu-llama31-8b", "inf2-qwen", "cpu-lab"} <= names


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_overlay_validates_against_pinned_schemas(name: str) -> None:
    report = k8s.validate_objects(name, RENDERED[name])
    assert report.ok, report.summary()
    assert len(report.valid) == len(RENDERED[name])


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_overlay_passes_every_policy(name: str) -> None:
    violations = {title: found for title, found in policy.check_all(RENDERED[name]).items() if found}
    assert not violations


def test_schema_validation_catches_mistakes() -> None:
    objects = copy.deepcopy(RENDERED["cpu-lab"])
    deployment = by_kind(objects, "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    deployment["spec"]["replica"] = 2  # typo: strict validation rejects unknown fields
    report = k8s.validate_objects("broken", objects)
    assert not report.ok and "Deployment/vllm" in report.errors


def test_crd_validation_catches_a_bad_servicemonitor() -> None:
    objects = copy.deepcopy(by_kind(RENDERED["gpu-llama31-8b"], "ServiceMonitor"))
    assert k8s.validate_objects("ok", objects).ok
    objects[0]["spec"]["endpoints"][0]["interval"] = "every 15 seconds"
    report = k8s.validate_objects("broken", objects)
    assert "ServiceMonitor/vllm" in report.errors and "interval" in report.errors["ServiceMonitor/vllm"]
    unknown = [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}]
    assert "no schema" in k8s.validate_objects("unknown", unknown).errors["Widget/w"]


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (
            lambda c, s: c["resources"]["limits"].update({"nvidia.com/gpu": "2"}),
            "accelerator limits equal requests",
        ),
        (lambda c, s: c["resources"]["requests"].pop("cpu"), "cpu and memory requests"),
        (lambda c, s: c.pop("startupProbe"), "probes on /health"),
        (lambda c, s: c["startupProbe"].update({"failureThreshold": 3}), "probes on /health"),
        (lambda c, s: c["readinessProbe"]["httpGet"].update({"path": "/"}), "probes on /health"),
        (
            lambda c, s: c["securityContext"].update({"allowPrivilegeEscalation": True}),
            "restricted security context",
        ),
        (
            lambda c, s: c["securityContext"]["capabilities"].update({"drop": []}),
            "restricted security context",
        ),
        (lambda c, s: s.update({"automountServiceAccountToken": True}), "restricted security context"),
        (lambda c, s: s["securityContext"].pop("seccompProfile"), "restricted security context"),
        (lambda c, s: c.update({"image": "vllm/vllm-openai:latest"}), "images pinned"),
        (lambda c, s: c.update({"image": "vllm/vllm-openai"}), "images pinned"),
    ],
)
def test_policies_catch_violations(mutate, check: str) -> None:
    objects = copy.deepcopy(RENDERED["gpu-llama31-8b"])
    container = vllm_container(objects)
    mutate(container, by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"])
    assert policy.check_all(objects)[check], f"{check} missed the violation"


def test_secret_with_a_token_is_flagged() -> None:
    import base64

    secret = {
        "kind": "Secret",
        "metadata": {"name": "hf-token"},
        "data": {"HF_TOKEN": base64.b64encode(b"hf_" + b"a" * 34).decode()},
    }
    assert policy.no_secret_values([secret])


def test_accelerator_overlays_ask_for_their_devices() -> None:
    gpu = vllm_container(RENDERED["gpu-llama31-8b"])["resources"]
    assert gpu["requests"]["nvidia.com/gpu"] == gpu["limits"]["nvidia.com/gpu"] == "1"
    neuron = vllm_container(RENDERED["inf2-qwen"])
    assert neuron["resources"]["limits"]["aws.amazon.com/neuroncore"] == "2"
    assert (
        "--max-num-seqs=$(MAX_NUM_SEQS)" in neuron["args"]
        and "--max-model-len=$(MAX_MODEL_LEN)" in neuron["args"]
    )
    assert any(m["mountPath"] == "/neuron-cache" for m in neuron["volumeMounts"])
    cpu = vllm_container(RENDERED["cpu-lab"])
    assert not {"nvidia.com/gpu", "aws.amazon.com/neuroncore"} & set(cpu["resources"]["limits"])
    assert "--enforce-eager" in cpu["args"]


def test_config_values_reach_the_container() -> None:
    objects = RENDERED["gpu-llama31-8b"]
    (config,) = by_kind(objects, "ConfigMap")
    container = vllm_container(objects)
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]  # hashed name wired
    assert config["data"]["MODEL"] == "meta-llama/Llama-3.1-8B-Instruct"
    referenced = {a[2:-1] for arg in container["args"] for a in [arg.split("=")[-1]] if a.startswith("$(")}
    assert referenced <= set(config["data"]), referenced - set(config["data"])


def test_common_platform_objects() -> None:
    for name, objects in RENDERED.items():
        if not any(d["metadata"]["name"] == "vllm" for d in by_kind(objects, "Deployment")):
            continue  # multi-node overlays: see test_multinode.py
        kinds = {o["kind"] for o in objects}
        assert {
            "Namespace",
            "ServiceAccount",
            "Service",
            "Deployment",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
        } <= kinds, name
        (vllm,) = [d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "vllm"]
        spec = vllm["spec"]["template"]["spec"]
        shm = [v for v in spec["volumes"] if v["name"] == "dshm"]
        assert shm and shm[0]["emptyDir"]["medium"] == "Memory", name
        (namespace,) = by_kind(objects, "Namespace")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    eks_pvc = [p for p in by_kind(RENDERED["gpu-llama31-8b"], "PersistentVolumeClaim")]
    assert eks_pvc[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = by_kind(RENDERED["gpu-llama31-8b"], "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert (
        by_kind(RENDERED["cpu-lab"], "HorizontalPodAutoscaler")[0]["spec"]["metrics"][0]["type"] == "Resource"
    )


def project_files() -> list[str]:
    """Files git tracks (or would track), so a fresh checkout and a working tree are checked alike."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert listing.returncode == 0, f"the suite runs in a git checkout: {listing.stderr}"
    return [path for path in listing.stdout.splitlines() if (ROOT / path).exists()]


def test_hf_token_secret_comes_from_an_untracked_file() -> None:
    files = project_files()
    assert "components/hf-token-secret/hf-token.env.example" in files
    assert "components/hf-token-secret/hf-token.env" not in files
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "components/hf-token-secret/hf-token.env"], cwd=ROOT
    )
    assert ignored.returncode == 0
    for path in files:
        file = ROOT / path
        if file.is_file() and file.stat().st_size < 2_000_000:
            assert not policy.TOKEN_PATTERN.search(file.read_text(errors="ignore")), (
                f"token-like string in {path}"
            )


def test_eks_node_groups_match_the_accelerator_components() -> None:
    cluster = yaml.safe_load((ROOT / "infra/eks/cluster.yaml").read_text())
    groups = {g["labels"]["workshop.vllm.ai/accelerator"]: g for g in cluster["managedNodeGroups"]}
    for overlay, accelerator in (("gpu-llama31-8b", "nvidia"), ("inf2-qwen", "neuron")):
        spec = by_kind(RENDERED[overlay], "Deployment")[0]["spec"]["template"]["spec"]
        group = groups[accelerator]
        assert spec["nodeSelector"]["workshop.vllm.ai/accelerator"] == accelerator
        taint_keys = {t["key"] for t in group.get("taints", [])}
        assert taint_keys <= {t["key"] for t in spec["tolerations"]}, overlay
        wanted_type = spec["nodeSelector"].get("node.kubernetes.io/instance-type")
        assert wanted_type in (None, group["instanceType"])


def test_infra_scripts_parse() -> None:
    scripts = sorted((ROOT / "infra").rglob("*.sh"))
    assert len(scripts) >= 8
    for script in scripts:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_apply_without_a_cluster_says_nothing_was_applied(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-config"))
    ok, why = k8s.cluster_status()
    assert not ok and "missing-config" in why
    with pytest.raises(ClusterNotConfiguredError, match="Nothing was applied"):
        k8s.deploy("cpu-lab")


def test_unreachable_cluster_is_reported(monkeypatch, tmp_path) -> None:
    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dead",
                "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    ok, why = k8s.cluster_status()
    assert not ok and "not reachable" in why


def test_unknown_overlay_lists_the_known_ones() -> None:
    with pytest.raises(k8s.RenderError, match="cpu-lab"):
        k8s.render("no-such-overlay")


def test_gateway_overlay_wires_litellm_and_open_webui() -> None:
    objects = RENDERED["gateway-cpu"]
    deployments = {o["metadata"]["name"]: o for o in by_kind(objects, "Deployment")}
    assert {"vllm", "litellm", "open-webui"} <= set(deployments)
    litellm = deployments["litellm"]["spec"]["template"]
    assert (
        litellm["metadata"]["labels"]["vllm-workshop/client"] == "true"
    )  # admitted by the vLLM NetworkPolicy
    secrets = {o["metadata"]["name"] for o in by_kind(objects, "Secret")}
    configmaps = {o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")}
    for deployment in deployments.values():
        spec = deployment["spec"]["template"]["spec"]
        for env in spec["containers"][0].get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            assert ref is None or ref["name"] in secrets, ref
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
    webui_env = {
        e["name"]: e for e in deployments["open-webui"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert webui_env["OPENAI_API_BASE_URL"]["value"] == "http://litellm:4000/v1"
    services = {o["metadata"]["name"]: o for o in by_kind(objects, "Service")}
    assert services["litellm"]["spec"]["ports"][0]["port"] == 4000
    config = next(
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("litellm-config")
    )
    routed = yaml.safe_load(config["data"]["config.yaml"])
    assert routed["model_list"][0]["litellm_params"]["api_base"] == "http://vllm:8000/v1"
    assert routed["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"


def test_local_secret_files_are_never_tracked() -> None:
    files = project_files()
    examples = [f for f in files if f.endswith(".env.example")]
    assert len(examples) >= 3
    for example in examples:
        assert example.removesuffix(".example") not in files


def references(node: object, kind: str) -> list[str]:
    """Names a manifest refers to, for kind "ConfigMap" or "Secret" (env, envFrom and volumes)."""
    keys = {
        "ConfigMap": ("configMapRef", "configMapKeyRef", "configMap"),
        "Secret": ("secretRef", "secretKeyRef"),
    }
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys[kind] and isinstance(value, dict) and "name" in value:
                found.append(value["name"])
            elif key == "secret" and kind == "Secret" and isinstance(value, dict) and "secretName" in value:
                found.append(value["secretName"])
            else:
                found += references(value, kind)
    elif isinstance(node, list):
        for item in node:
            found += references(item, kind)
    return found


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_configmap_and_secret_reference_resolves(name: str) -> None:
    objects = RENDERED[name]
    for kind in ("ConfigMap", "Secret"):
        existing = {o["metadata"]["name"] for o in by_kind(objects, kind)}
        for obj in objects:
            missing = set(references(obj.get("spec", {}), kind)) - existing
            assert not missing, f"{object_id(obj)} refers to missing {kind}s {missing} (have {existing})"


def object_id(obj: dict) -> str:
    return k8s.object_id(obj)
