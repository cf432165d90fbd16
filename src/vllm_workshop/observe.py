"""Observe vLLM replicas with a real Prometheus: start it, load the project's rules, ask it PromQL.

Debian's ``prometheus`` package provides ``prometheus`` and ``promtool``. The lab's Prometheus keeps its data
under ``.lab/prometheus`` and scrapes every second, so a short run already has enough points for ``rate()``.
The rules are the ``PrometheusRule`` the cluster gets (``components/prometheus-rules``) and the dashboard is
the one Grafana loads there (``components/grafana-dashboard``): one source for both places.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from .errors import LabError
from .paths import project_root, state_dir
from .server import ManagedServer, free_port

RULES = Path("components/prometheus-rules/prometheusrule.yaml")
RULE_TESTS = Path("components/prometheus-rules/rules.test.yaml")
DASHBOARD = Path("components/grafana-dashboard/vllm-dashboard.json")
ADAPTER_VALUES = Path("infra/monitoring/prometheus-adapter-values.yaml")


class PrometheusError(LabError):
    """Prometheus is missing, down, or refused a query."""


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; a clear error when the package is not installed."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(
            f"`{name}` is not installed. Install Debian's package: `sudo apt-get install prometheus` "
            "(`make test` does it when run as root)."
        )
    return path


def rule_groups(path: Path | None = None) -> dict[str, Any]:
    """The ``spec`` of the project's PrometheusRule: a plain Prometheus rules file (``groups: [...]``)."""
    return yaml.safe_load((path or project_root() / RULES).read_text())["spec"]


def write_rules(folder: Path) -> Path:
    """Write the rules as ``vllm.rules.yaml`` in ``folder`` (the name the promtool tests load)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vllm.rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` (e.g. ``check rules F`` or ``test rules F``); its output is in the result."""
    return subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def run_rule_tests(folder: Path) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` on the project's rule tests, against the rules written into ``folder``."""
    write_rules(folder)
    shutil.copy(project_root() / RULE_TESTS, folder / RULE_TESTS.name)
    return promtool("test", "rules", RULE_TESTS.name, cwd=folder)


@dataclass(frozen=True)
class Target:
    """One scrape target: ``job`` name, ``host:port``, labels a Kubernetes scrape would add, and a bearer
    token when its ``/metrics`` needs one (LiteLLM's does)."""

    job: str
    address: str
    labels: Mapping[str, str]
    bearer: str | None = None


def config(targets: Sequence[Target], rule_file: Path | None, interval: str = "1s") -> dict[str, Any]:
    """A Prometheus configuration scraping ``targets`` every ``interval`` and evaluating ``rule_file``."""
    jobs: dict[str, dict[str, Any]] = {}
    for target in targets:
        job = jobs.setdefault(target.job, {"job_name": target.job, "static_configs": []})
        job["static_configs"].append({"targets": [target.address], "labels": dict(target.labels)})
        if target.bearer:
            job["authorization"] = {"type": "Bearer", "credentials": target.bearer}
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rule_file)] if rule_file else [],
        "scrape_configs": list(jobs.values()),
    }


def prometheus_server(
    targets: Sequence[Target], port: int | None = None, fresh: bool = True
) -> ManagedServer:
    """Prometheus scraping ``targets`` with the project's rules, data in ``.lab/prometheus`` (wiped if
    ``fresh``); ready when ``/-/ready`` answers."""
    home = state_dir() / "prometheus"
    if fresh and (home / "data").exists():
        shutil.rmtree(home / "data")
    home.mkdir(parents=True, exist_ok=True)
    rules = write_rules(home)
    (home / "prometheus.yml").write_text(yaml.safe_dump(config(targets, rules)))
    port = port or free_port()
    command = [
        binary("prometheus"),
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--web.enable-lifecycle",
    ]
    return ManagedServer(command, name="prometheus", port=port, health_path="/-/ready")


def query(url: str, expr: str, at: float | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Instant query: ``[{"metric": {labels}, "value": float}, ...]``.

    :class:`PrometheusError` when Prometheus is down or refuses the expression (with its own message).
    """
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = at
    data = _get(url, "/api/v1/query", params, timeout)
    result = data["result"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": float(result[1])}]
    return [{"metric": r["metric"], "value": float(r["value"][1])} for r in result]


def value(url: str, expr: str, at: float | None = None) -> float:
    """The single value of ``expr`` (at time ``at``, default now; NaN when it returns nothing)."""
    rows = query(url, expr, at)
    if len(rows) > 1:
        raise PrometheusError(f"`{expr}` returned {len(rows)} series; aggregate it (sum, max...) to one")
    return rows[0]["value"] if rows else float("nan")


def _get(url: str, path: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    """``data`` of a Prometheus API answer; :class:`PrometheusError` when down, not JSON, or not a success."""
    try:
        response = requests.get(f"{url.rstrip('/')}{path}", params=params, timeout=timeout)
        body = response.json()
    except requests.RequestException as exc:
        why = exc.__class__.__name__
        raise PrometheusError(f"Prometheus does not answer at {url} ({why}): is it running?") from exc
    except ValueError as exc:
        raise PrometheusError(f"{url}{path} did not answer JSON: is that Prometheus?") from exc
    if body.get("status") != "success":
        what = f"`{params['query']}`" if params and "query" in params else path
        raise PrometheusError(f"Prometheus refused {what}: {body.get('error')}")
    return body["data"]


def series(url: str, expr: str, start: float, end: float, step: float = 1.0) -> dict[str, list[tuple]]:
    """Range query: ``{legend: [(t, value), ...]}``, the legend built from each series' labels."""
    data = _get(url, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
    out = {}
    for r in data["result"]:
        legend = ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__") or expr
        out[legend] = [(float(t), float(v)) for t, v in r["values"]]
    return out


def alerts(url: str) -> list[dict[str, Any]]:
    """Alerts Prometheus currently holds (pending or firing), with their labels and state."""
    return _get(url, "/api/v1/alerts", timeout=10)["alerts"]


def dashboard_queries(
    model: str, path: Path | None = None, rate_interval: str = "15s"
) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every target of the dashboard, its variables filled in as Grafana would
    (``$model_name`` the served model, ``$__rate_interval`` a window that fits the scrape interval)."""
    board = json.loads((path or project_root() / DASHBOARD).read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$model_name", model).replace("$__rate_interval", rate_interval)
            out.append((panel["title"], expr))
    return out


def adapter_queries(pod_labels: Mapping[str, str]) -> list[tuple[str, str]]:
    """The prometheus-adapter rules behind module 4's HPA metrics, as the adapter runs them for one pod:
    ``(metric name the HPA asks for, PromQL)``, from ``infra/monitoring/prometheus-adapter-values.yaml``."""
    import re

    values = yaml.safe_load((project_root() / ADAPTER_VALUES).read_text())
    out = []
    for rule in values["rules"]["custom"]:
        names = re.search(r'__name__=~"([^"]+)"', rule["seriesQuery"])
        if names is None:
            raise PrometheusError(f"cannot read the metric names of {rule['seriesQuery']}")
        pattern = names.group(1)
        prefix, alternatives = re.match(r"^(.*)\(([^)]*)\)$", pattern).groups()  # type: ignore[union-attr]
        for option in alternatives.split("|"):
            series_name = prefix + option
            as_name = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series_name)
            matchers = ",".join(f'{k}="{v}"' for k, v in pod_labels.items())
            expr = rule["metricsQuery"].replace("<<.Series>>", series_name)
            expr = expr.replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")
            out.append((as_name, expr))
    return out


def check_queries(
    url: str, queries: Sequence[tuple[str, str]], at: float | None = None
) -> list[dict[str, Any]]:
    """Run each ``(name, PromQL)`` at time ``at`` (default now): ``status`` is ``ok`` (a series with a
    number), ``empty`` (no series, or only NaN: a quantile over a window without requests) or ``invalid``."""
    import math

    rows = []
    for name, expr in queries:
        try:
            result = query(url, expr, at)
            numbers = [r for r in result if not math.isnan(r["value"])]
            status = "ok" if numbers else "empty"
            detail = f"{len(numbers)} of {len(result)} series with a number"
        except PrometheusError as exc:
            status, detail = "invalid", str(exc)
        rows.append({"name": name, "status": status, "detail": detail, "expr": expr})
    return rows


def wait_for_targets(url: str, job: str, count: int, timeout: float = 30.0) -> None:
    """Block until Prometheus has scraped ``count`` targets of ``job`` successfully (``up == 1``)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value(url, f'count(up{{job="{job}"}} == 1)') >= count:
            time.sleep(1.5)  # one more scrape: every series is in, not only `up`
            return
        time.sleep(0.5)
    raise PrometheusError(
        f"Prometheus at {url} did not scrape {count} healthy target(s) of job {job!r} within "
        f"{timeout:.0f} s: see its targets page (/targets) for the reason."
    )
