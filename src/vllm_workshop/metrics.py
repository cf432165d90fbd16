"""Read a server's Prometheus ``/metrics`` page with the official parser and pick out what a lesson shows."""

from __future__ import annotations

from collections import defaultdict

import requests
from prometheus_client.parser import text_string_to_metric_families

# The vLLM metrics a learner should recognise first (counters end in _total when exposed).
VLLM_HEADLINE = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_sum",
)


def fetch_metrics_text(base_url: str, timeout: float = 10.0) -> str:
    """The raw text of ``{base_url}/metrics``."""
    response = requests.get(base_url.rstrip("/") + "/metrics", timeout=timeout)
    response.raise_for_status()
    return response.text


def sample_totals(text: str) -> dict[str, float]:
    """Sum every sample by name over its labels (e.g. all finish reasons of a counter)."""
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return dict(totals)


def headline(text: str, names: tuple[str, ...] = VLLM_HEADLINE) -> dict[str, float]:
    """The headline metrics present in ``text``, in the order of ``names``."""
    totals = sample_totals(text)
    return {name: totals[name] for name in names if name in totals}


def mean_from_histogram(totals: dict[str, float], base: str) -> float | None:
    """Mean of a histogram from its ``_sum`` and ``_count`` samples (None when empty)."""
    count = totals.get(f"{base}_count", 0.0)
    return totals.get(f"{base}_sum", 0.0) / count if count else None


class MetricsPoller:
    """Samples a server's gauges in a background thread during a load (``with MetricsPoller(url) as p:``)."""

    GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")

    def __init__(self, base_url: str, interval_s: float = 0.25) -> None:
        import threading

        self.base_url = base_url
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import time

        start = time.perf_counter()
        while not self._stop.is_set():
            try:
                totals = sample_totals(fetch_metrics_text(self.base_url, timeout=5))
            except requests.RequestException:
                totals = {}
            sample = {"t": time.perf_counter() - start}
            sample.update({name: totals.get(name, float("nan")) for name in self.GAUGES})
            self.samples.append(sample)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MetricsPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """``(times, values)`` of one gauge."""
        return [s["t"] for s in self.samples], [s[name] for s in self.samples]


def engine_metric(metrics: list, name: str) -> float:
    """Sum of an offline engine's metric (``LLM.get_metrics()``) over its labels; 0 when absent."""
    return float(sum(getattr(m, "value", 0) or 0 for m in metrics if m.name == name))
