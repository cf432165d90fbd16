"""Prometheus rules (promtool), the Grafana dashboard, the HPA's adapter queries, the accelerator exporters.

Against real vLLM metrics they run in notebook 09's check cells (every panel, the HPA queries, the recording
rules, a replica going down), which ``make test`` runs: starting vLLM and Prometheus here would repeat it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from vllm_workshop import observe
from vllm_workshop.observe import PrometheusError, Target

ROOT = Path(__file__).resolve().parents[1]


def monitoring_manifests(name: str) -> list[dict]:
    """The objects of ``infra/monitoring/<name>.yaml``."""
    return list(yaml.safe_load_all((ROOT / "infra/monitoring" / f"{name}.yaml").read_text()))


def test_the_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    checked = observe.promtool("check", "rules", str(observe.write_rules(tmp_path)))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = observe.run_rule_tests(tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rule_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The promtool tests can fail: a KV-cache alert raised to 99% no longer fires at 95%."""
    rules = observe.write_rules(tmp_path)
    rules.write_text(
        rules.read_text().replace("vllm:kv_cache_usage_perc) > 0.9", "vllm:kv_cache_usage_perc) > 0.99")
    )
    shutil.copy(ROOT / observe.RULE_TESTS, tmp_path)
    tested = observe.promtool("test", "rules", observe.RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "VllmKVCacheNearlyFull" in tested.stdout + tested.stderr


def test_a_missing_prometheus_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe.shutil, "which", lambda name: None)
    with pytest.raises(PrometheusError, match="apt-get install prometheus"):
        observe.binary("promtool")


def test_a_query_to_a_stopped_prometheus_is_a_clear_error() -> None:
    from vllm_workshop.server import free_port

    with pytest.raises(PrometheusError, match="does not answer"):
        observe.query(f"http://127.0.0.1:{free_port()}", "up")


def test_dashboard_queries_fill_grafanas_variables() -> None:
    board = json.loads((ROOT / observe.DASHBOARD).read_text())
    targets = sum(len(p["targets"]) for p in board["panels"])
    queries = observe.dashboard_queries("lab-model")
    assert len(queries) == targets >= 10
    assert all("$" not in expr and 'model_name="lab-model"' in expr for _, expr in queries)


def test_the_adapter_queries_are_the_ones_the_hpa_asks_for() -> None:
    queries = dict(observe.adapter_queries({"namespace": "lab", "pod": "vllm-0"}))
    assert queries == {
        "vllm_num_requests_waiting": 'sum(vllm:num_requests_waiting{namespace="lab",pod="vllm-0"}) by (pod)',
        "vllm_num_requests_running": 'sum(vllm:num_requests_running{namespace="lab",pod="vllm-0"}) by (pod)',
    }
    hpa = yaml.safe_load((ROOT / "components/hpa-vllm-metric/hpa.yaml").read_text())
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} == set(queries)


def test_the_config_scrapes_each_job_with_its_labels(tmp_path: Path) -> None:
    targets = [Target("vllm", "127.0.0.1:1", {"pod": "a"}), Target("vllm", "127.0.0.1:2", {"pod": "b"})]
    cfg = observe.config(targets, tmp_path / "r.yaml")
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "vllm"
    assert [s["labels"]["pod"] for s in job["static_configs"]] == ["a", "b"]
    assert cfg["rule_files"] == [str(tmp_path / "r.yaml")]
    assert "authorization" not in job
    gated = observe.config([Target("litellm", "127.0.0.1:3", {}, bearer="sk-x")], None)["scrape_configs"][0]
    assert gated["authorization"] == {"type": "Bearer", "credentials": "sk-x"}


def test_the_neuron_monitor_is_valid_and_lands_on_every_inferentia_node_group_only() -> None:
    from vllm_workshop import k8s
    from vllm_workshop.nodegroups import infra_node_groups, misfit

    objects = monitoring_manifests("neuron-monitor")
    report = k8s.validate_objects("neuron-monitor", objects)
    assert report.ok, report.summary()
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    eks = [g for g in infra_node_groups() if g.cluster == "eks"]
    fits = {g.name for g in eks if not misfit(spec, g)}
    neuron = {g.name for g in eks if g.labels.get("workshop.vllm.ai/accelerator") == "neuron"}
    assert neuron and fits == neuron
    monitor = next(o for o in objects if o["kind"] == "PodMonitor")
    port_names = {p["name"] for c in spec["containers"] for p in c["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_neuron_monitor_fails_only_the_restricted_security_context_as_a_privileged_reader() -> None:
    """It must read the Neuron devices (privileged); every other policy of the project holds for it."""
    from vllm_workshop import policy

    objects = monitoring_manifests("neuron-monitor")
    failed = {title: problems for title, problems in policy.check_all(objects).items() if problems}
    assert set(failed) == {"restricted security context"}, failed
    assert any(p.endswith("privileged") for p in failed["restricted security context"])


def test_the_dcgm_exporter_is_valid_and_lands_on_every_gpu_node_group_only() -> None:
    from vllm_workshop import k8s
    from vllm_workshop.nodegroups import infra_node_groups, misfit

    objects = monitoring_manifests("dcgm-exporter")
    report = k8s.validate_objects("dcgm-exporter", objects)
    assert report.ok, report.summary()
    pod = next(o for o in objects if o["kind"] == "DaemonSet")["spec"]["template"]
    spec, pod_labels = pod["spec"], pod["metadata"]["labels"]
    eks = [g for g in infra_node_groups() if g.cluster == "eks"]
    fits = {g.name for g in eks if not misfit(spec, g)}
    gpu = {g.name for g in eks if g.labels.get("workshop.vllm.ai/accelerator") == "nvidia"}
    assert gpu and fits == gpu
    service = next(o for o in objects if o["kind"] == "Service")
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    # the ServiceMonitor picks the Service by its labels, the Service the pods by its selector
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # every port named by the Service, the ServiceMonitor and the NetworkPolicy exists where it points
    container_ports = {p["name"] for c in spec["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= container_ports
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_dcgm_exporter_fails_only_the_restricted_profile_as_a_root_gpu_reader() -> None:
    """Root with SYS_ADMIN (profiling metrics) and the kubelet's pod-resources socket (pod labels): the
    restricted profile's findings are exactly those; every other policy of the project holds for it."""
    from vllm_workshop import policy

    objects = monitoring_manifests("dcgm-exporter")
    failed = {title: problems for title, problems in policy.check_all(objects).items() if problems}
    assert set(failed) == {"restricted security context"}, failed
    found = sorted(p.split(": ", 1)[1] for p in failed["restricted security context"])
    assert found == sorted(
        [
            "volume pod-resources is hostPath",
            "runAsNonRoot is not true",
            "runAsUser is 0",
            "adds capabilities ['SYS_ADMIN']",
        ]
    ), found


def test_a_query_returning_only_nan_counts_as_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quantile over a window without requests is NaN: a dashboard panel showing nothing, not a pass."""
    nan = [{"metric": {}, "value": float("nan")}]
    answers = {"ok": [{"metric": {}, "value": 1.0}], "nan": nan, "none": []}
    monkeypatch.setattr(observe, "query", lambda url, expr, at=None: answers[expr])
    rows = observe.check_queries("http://x", [("a", "ok"), ("b", "nan"), ("c", "none")])
    assert [r["status"] for r in rows] == ["ok", "empty", "empty"]
