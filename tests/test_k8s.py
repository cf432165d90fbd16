"""Module 4 manifests: every overlay builds, validates against the pinned schemas and passes the policies."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from rendered import OVERLAY_NAMES, ROOT, by_kind, kubectl, objects, one

from vllm_workshop import k8s, kubetools, policy
from vllm_workshop.errors import ClusterNotConfiguredError


def vllm_container(objs: list[dict]) -> dict:
    return one(objs, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]


def test_the_module_4_overlays_exist() -> None:
    assert {"gpu-llama31-8b", "inf2-qwen", "cpu-lab"} <= set(OVERLAY_NAMES)


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_overlay_validates_against_pinned_schemas(name: str) -> None:
    objs = objects(name)
    report = k8s.validate_objects(name, objs)
    assert report.ok, report.summary()
    assert len(report.valid) == len(objs)


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_overlay_passes_every_policy(name: str) -> None:
    violations = {title: found for title, found in policy.check_all(objects(name)).items() if found}
    assert not violations


def test_strict_schema_validation_rejects_a_wrong_type() -> None:
    objs = objects("cpu-lab")
    one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = (
        "8000x"
    )
    report = k8s.validate_objects("broken", objs)
    assert list(report.errors) == ["Deployment/vllm"]
    assert report.errors["Deployment/vllm"] == (
        "'8000x' is not of type 'integer' at spec/template/spec/containers/0/ports/0/containerPort"
    )


def test_strict_schema_validation_rejects_an_unknown_field() -> None:
    objs = objects("cpu-lab")
    one(objs, "Deployment")["spec"]["replica"] = 2  # typo of replicas
    report = k8s.validate_objects("broken", objs)
    assert list(report.errors) == ["Deployment/vllm"]
    assert (
        "Additional properties are not allowed ('replica' was unexpected)" in report.errors["Deployment/vllm"]
    )


def test_servicemonitor_is_validated_against_the_vendored_crd_schema() -> None:
    schema = json.loads((ROOT / "infra/operators/schemas/servicemonitor-v1.json").read_text())
    assert (
        "v0.77.1" in schema["$comment"] and "monitoring.coreos.com_servicemonitors.yaml" in schema["$comment"]
    )
    objs = by_kind(objects("gpu-llama31-8b"), "ServiceMonitor")
    assert k8s.validate_objects("ok", objs).ok
    objs[0]["spec"]["endpoints"][0]["interval"] = "every 15 seconds"
    error = k8s.validate_objects("broken", objs).errors["ServiceMonitor/vllm"]
    assert error.startswith("'every 15 seconds' does not match") and error.endswith(
        "at spec/endpoints/0/interval"
    )
    objs[0]["spec"]["endpoints"][0]["interval"] = "15s"
    objs[0]["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # not a ServiceMonitor field
    error = k8s.validate_objects("broken", objs).errors["ServiceMonitor/vllm"]
    assert "('scrapeInterval' was unexpected)" in error
    unknown = [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}]
    assert (
        k8s.validate_objects("unknown", unknown).errors["Widget/w"] == "no schema for example.com/v1 Widget"
    )


def test_no_node_or_npm_validator_is_left() -> None:
    # tracked files only: an old checkout may keep its git-ignored node_modules there
    tracked = subprocess.run(
        ["git", "ls-files", "tests/crd-validator"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert tracked.returncode == 0 and tracked.stdout == ""
    assert "npm" not in (ROOT / "src/vllm_workshop/k8s.py").read_text()


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
        (lambda c, s: s.update({"automountServiceAccountToken": True}), "service account tokens"),
        (lambda c, s: s["securityContext"].pop("seccompProfile"), "restricted security context"),
        (lambda c, s: c.update({"image": "vllm/vllm-openai:latest"}), "images pinned"),
        (lambda c, s: c.update({"image": "vllm/vllm-openai"}), "images pinned"),
    ],
)
def test_policies_catch_violations(mutate, check: str) -> None:
    objs = objects("gpu-llama31-8b")
    container = vllm_container(objs)
    mutate(container, one(objs, "Deployment")["spec"]["template"]["spec"])
    found = {title for title, problems in policy.check_all(objs).items() if problems}
    assert found == {check}


def test_secret_with_a_token_is_flagged() -> None:
    secret = {
        "kind": "Secret",
        "metadata": {"name": "hf-token"},
        "data": {"HF_TOKEN": base64.b64encode(b"hf_" + b"a" * 34).decode()},
    }
    assert policy.no_secret_values([secret]) == ["Secret/hf-token: key HF_TOKEN holds a Hugging Face token"]


def test_accelerator_overlays_ask_for_their_devices() -> None:
    gpu = vllm_container(objects("gpu-llama31-8b"))
    assert (
        gpu["resources"]["requests"]["nvidia.com/gpu"] == gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )
    assert "--max-num-seqs=$(MAX_NUM_SEQS)" in gpu["args"]
    neuron = vllm_container(objects("inf2-qwen"))
    assert neuron["resources"]["limits"]["aws.amazon.com/neuroncore"] == "2"
    assert {"--max-num-seqs=$(MAX_NUM_SEQS)", "--max-model-len=$(MAX_MODEL_LEN)"} <= set(neuron["args"])
    assert not any(arg.startswith(("--block-size", "--device")) for arg in neuron["args"])
    assert any(m["mountPath"] == "/neuron-cache" for m in neuron["volumeMounts"])
    assert neuron["image"].endswith("-sdk2.28.0-ubuntu24.04")  # the last Neuron DLC that supports inf2
    cpu = vllm_container(objects("cpu-lab"))
    assert not {"nvidia.com/gpu", "aws.amazon.com/neuroncore"} & set(cpu["resources"]["limits"])
    assert "--enforce-eager" in cpu["args"]


def test_neuron_image_and_artifact_key_name_the_same_sdk() -> None:
    objs = objects("inf2-qwen")
    config = next(c for c in by_kind(objs, "ConfigMap") if c["metadata"]["name"].startswith("vllm-config"))
    config = config["data"]
    container = vllm_container(objs)
    assert f"-sdk{config['NEURON_SDK']}-" in container["image"]
    (artifacts,) = [e["value"] for e in container["env"] if e["name"] == "NEURON_COMPILED_ARTIFACTS"]
    assert artifacts.startswith("/neuron-cache/artifacts/sdk$(NEURON_SDK)/$(MODEL)/")


def test_config_values_reach_the_container() -> None:
    objs = objects("gpu-llama31-8b")
    config = next(c for c in by_kind(objs, "ConfigMap") if c["metadata"]["name"].startswith("vllm-config"))
    container = vllm_container(objs)
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]  # hashed name wired
    assert config["data"]["MODEL"] == "meta-llama/Llama-3.1-8B-Instruct"
    referenced = {a[2:-1] for arg in container["args"] for a in [arg.split("=")[-1]] if a.startswith("$(")}
    assert referenced <= set(config["data"]), referenced - set(config["data"])


@pytest.mark.parametrize("name", [n for n in OVERLAY_NAMES if n != "lws-gpu-llama70b" and "kuberay" not in n])
def test_common_platform_objects(name: str) -> None:
    objs = objects(name)
    kinds = {o["kind"] for o in objs}
    assert {
        "Namespace",
        "ServiceAccount",
        "Service",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    spec = one(objs, "Deployment", "vllm")["spec"]["template"]["spec"]
    shm = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm and shm[0]["emptyDir"]["medium"] == "Memory"
    assert one(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_autoscalers_of_the_module_4_overlays() -> None:
    assert one(objects("gpu-llama31-8b"), "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = one(objects("gpu-llama31-8b"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert one(objects("cpu-lab"), "HorizontalPodAutoscaler")["spec"]["metrics"][0]["type"] == "Resource"


def project_files(root: Path = ROOT) -> list[str]:
    """Files git tracks (or would track), so a fresh checkout and a working tree are checked alike."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, f"the suite runs in a git checkout: {listing.stderr}"
    return [path for path in listing.stdout.splitlines() if (root / path).exists()]


def fresh_checkout(tmp_path: Path, root: Path = ROOT) -> Path:
    """The tracked manifests of a checkout, copied alone (no git-ignored local files) under ``tmp_path``."""
    for path in project_files(root):
        if path.startswith(("components/", "modules/")):
            target = tmp_path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / path, target)
    return tmp_path


def test_kubectl_apply_k_builds_every_overlay_of_a_fresh_checkout(tmp_path: Path) -> None:
    checkout = fresh_checkout(tmp_path)
    for name in OVERLAY_NAMES:
        (overlay,) = checkout.glob(f"modules/*/overlays/{name}")
        done = subprocess.run(
            [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{name}: {done.stderr}"


def test_a_real_token_in_the_environment_never_reaches_rendered_manifests(monkeypatch) -> None:
    token = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    for name in OVERLAY_NAMES:
        text = k8s.render(name, kubectl())
        assert token not in text
        assert not [o for o in k8s.load_objects(text) if o["kind"] == "Secret"], name
        assert policy.check_all(k8s.load_objects(text))["no secret values"] == []


def test_rendering_writes_nothing_and_installs_nothing(monkeypatch, tmp_path: Path) -> None:
    before = sorted(p for p in (ROOT / "components").rglob("*"))
    for name in OVERLAY_NAMES:
        k8s.render(name, kubectl())
    assert sorted(p for p in (ROOT / "components").rglob("*")) == before
    assert not list((ROOT / "components").rglob("*.env"))
    monkeypatch.setattr(kubetools.shutil, "which", lambda name: None)
    monkeypatch.setattr(kubetools, "tools_dir", lambda: tmp_path / "empty")
    monkeypatch.setattr(kubetools, "install_pinned", lambda *a: pytest.fail("render installed kubectl"))
    with pytest.raises(kubetools.ToolError, match="make tools"):
        k8s.render("cpu-lab")


def test_no_token_like_string_is_tracked() -> None:
    for path in project_files():
        file = ROOT / path
        if file.is_file() and file.stat().st_size < 2_000_000:
            assert not policy.TOKEN_PATTERN.search(file.read_text(errors="ignore")), (
                f"token-like string in {path}"
            )


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_every_configmap_and_secret_reference_resolves(name: str) -> None:
    objs = objects(name)
    existing = {o["metadata"]["name"] for o in by_kind(objs, "ConfigMap")}
    for obj in objs:
        missing = set(configmap_references(obj.get("spec", {}))) - existing
        assert not missing, f"{k8s.object_id(obj)} refers to missing ConfigMaps {missing} (have {existing})"
        # Secrets are never rendered: each one a pod needs is one that `make deploy` creates.
        assert k8s.secret_references(obj.get("spec", {})) <= set(k8s.CLUSTER_SECRETS)
    assert not by_kind(objs, "Secret")


def test_references_to_the_hf_token_are_optional() -> None:
    for name in OVERLAY_NAMES:
        for ref in secret_key_refs(objects(name)):
            if ref["name"] == "hf-token":
                assert ref.get("optional") is True, name


def configmap_references(node: object) -> list[str]:
    """Names of the ConfigMaps a manifest refers to (env, envFrom and volumes)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMapRef", "configMapKeyRef", "configMap") and isinstance(value, dict):
                found.append(value["name"])
            else:
                found += configmap_references(value)
    elif isinstance(node, list):
        for item in node:
            found += configmap_references(item)
    return found


def secret_key_refs(node: object) -> list[dict]:
    """Every ``secretKeyRef`` of a manifest."""
    if isinstance(node, dict):
        own = [node["secretKeyRef"]] if isinstance(node.get("secretKeyRef"), dict) else []
        return own + [ref for value in node.values() for ref in secret_key_refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in secret_key_refs(item)]
    return []


def test_infra_scripts_parse() -> None:
    scripts = sorted((ROOT / "infra").rglob("*.sh"))
    assert len(scripts) >= 9
    for script in scripts:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
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
    objs = objects("gateway-cpu")
    deployments = {o["metadata"]["name"]: o for o in by_kind(objs, "Deployment")}
    assert {"vllm", "litellm", "open-webui"} <= set(deployments)
    litellm = deployments["litellm"]["spec"]["template"]
    assert (
        litellm["metadata"]["labels"]["vllm-workshop/client"] == "true"
    )  # admitted by the vLLM NetworkPolicy
    configmaps = {o["metadata"]["name"] for o in by_kind(objs, "ConfigMap")}
    for deployment in deployments.values():
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
    webui_env = {
        e["name"]: e for e in deployments["open-webui"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert webui_env["OPENAI_API_BASE_URL"]["value"] == "http://litellm:4000/v1"
    assert webui_env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "open-webui-litellm-key"
    assert one(objs, "Service", "litellm")["spec"]["ports"][0]["port"] == 4000
    config = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("litellm-config"))
    routed = yaml.safe_load(config["data"]["config.yaml"])
    assert routed["model_list"][0]["litellm_params"]["api_base"] == "os.environ/VLLM_API_BASE"
    litellm_pod = deployments["litellm"]["spec"]["template"]["spec"]
    litellm_env = {e["name"]: e for e in litellm_pod["containers"][0]["env"]}
    assert litellm_env["VLLM_API_BASE"]["value"] == "http://vllm:8000/v1"
    assert routed["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"


def _args(container: dict) -> dict[str, str]:
    """``--flag=value`` and ``--flag value`` arguments as a dict (flags without a value map to "")."""
    out, args = {}, list(container.get("args", []))
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, _, val = arg.partition("=")
            if not val and i + 1 < len(args) and not args[i + 1].startswith("--"):
                val = args[i + 1]
            out[name] = val
    return out


def test_the_router_finds_the_vllm_pods_and_litellm_calls_the_router() -> None:
    objs = objects("fleet-cpu")
    router = one(objs, "Deployment", "vllm-router")["spec"]["template"]
    vllm = one(objs, "Deployment", "vllm")["spec"]["template"]
    flags = _args(router["spec"]["containers"][0])
    key, _, val = flags["--selector"].partition("=")
    assert vllm["metadata"]["labels"][key] == val  # discovery selects the vLLM pods
    assert router["metadata"]["labels"].get(key) != val  # and not itself
    vllm_port = vllm["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert int(flags["--service-discovery-port"]) == vllm_port
    assert "--enable-scale-out" in vllm["spec"]["containers"][0]["args"]  # /render, which cache_aware needs
    assert flags["--policy"] == "cache_aware"
    litellm = one(objs, "Deployment", "litellm")["spec"]["template"]["spec"]["containers"][0]
    base = {e["name"]: e.get("value") for e in litellm["env"]}["VLLM_API_BASE"]
    service = one(objs, "Service", "vllm-router")
    assert base == f"http://vllm-router:{service['spec']['ports'][0]['port']}/v1"
    router_port = {p["name"]: p["containerPort"] for p in router["spec"]["containers"][0]["ports"]}
    assert int(flags["--port"]) == router_port["http"]
    assert int(flags["--prometheus-port"]) == router_port["metrics"]
    # the NetworkPolicies let LiteLLM reach the router and the router reach vLLM
    egress = one(objs, "NetworkPolicy", "litellm")["spec"]["egress"]
    assert any(
        peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "vllm-router"}
        for rule in egress
        for peer in rule.get("to", [])
    )
    assert router["metadata"]["labels"]["vllm-workshop/client"] == "true"


def test_a_router_pod_without_its_api_annotation_may_not_mount_a_token() -> None:
    objs = objects("fleet-cpu")
    template = one(objs, "Deployment", "vllm-router")["spec"]["template"]
    assert not policy.service_account_tokens(objs)
    del template["metadata"]["annotations"]["workshop.vllm.ai/calls-kubernetes-api"]
    assert policy.service_account_tokens(objs) == ["Deployment/vllm-router: service account token is mounted"]


def test_prometheus_reads_litellms_metrics_with_the_proxys_own_master_key() -> None:
    objs = objects("gateway-cpu")
    monitor = one(objs, "ServiceMonitor", "litellm")
    (endpoint,) = monitor["spec"]["endpoints"]
    service = one(objs, "Service", "litellm")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    container = one(objs, "Deployment", "litellm")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    master = env["LITELLM_MASTER_KEY"]["valueFrom"]["secretKeyRef"]
    assert endpoint["authorization"]["credentials"] == {"name": master["name"], "key": master["key"]}
    config = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("litellm-config"))
    assert "prometheus" in yaml.safe_load(config["data"]["config.yaml"])["litellm_settings"]["callbacks"]
    ingress = one(objs, "NetworkPolicy", "litellm")["spec"]["ingress"]
    namespaces = [
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        for rule in ingress
        for peer in rule.get("from", [])
    ]
    assert "monitoring" in namespaces
