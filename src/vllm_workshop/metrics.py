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
    """Samples a server's gauges and token counters in a background thread during a load
    (``with MetricsPoller(url) as p:``); a failed scrape is recorded as NaN, never raised."""

    GAUGES = (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
    )

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

    def active(self, after_running_above: float = 0) -> list[dict[str, float]]:
        """Samples from just before the server's token counter first moved to the first at its final value.

        With ``after_running_above=n`` the window opens at the first sample with more than ``n`` requests
        running: the last level of a sweep whose earlier levels never ran more than ``n`` at once.
        """
        count = "vllm:generation_tokens_total"
        rows = [s for s in self.samples if s[count] == s[count]]  # NaN: a failed scrape
        running = [s["vllm:num_requests_running"] for s in rows]
        start = next((i for i, n in enumerate(running) if n > after_running_above), None)
        if start is None:
            raise ValueError(f"the server never ran more than {after_running_above:g} requests while sampled")
        rows = rows[max(start - 1, 0) :]
        tokens = [s[count] for s in rows]
        end = tokens.index(tokens[-1])
        begin = max(i for i in range(end + 1) if tokens[i] == tokens[0])
        if end <= begin:
            raise ValueError("the server's token counter did not move while sampled")
        return rows[begin : end + 1]

    def output_tok_s(self, after_running_above: float = 0) -> float:
        """Output tokens per second as the server counted them over :meth:`active`'s window: between its
        inner samples when there are enough (the outer ones lie before the first and after the last token, so
        they would stretch the window by up to two polling intervals), else between the outer ones."""
        rows = self.active(after_running_above)
        if len(rows) >= 4:
            rows = rows[1:-1]
        count = "vllm:generation_tokens_total"
        return (rows[-1][count] - rows[0][count]) / (rows[-1]["t"] - rows[0]["t"])

    def mean_running(self, after_running_above: float = 0) -> float:
        """Mean number of requests the server was running at the samples inside :meth:`active`'s window (a
        client that cannot keep its streams fed shows here as fewer requests running than it meant to)."""
        rows = self.active(after_running_above)
        inner = rows[1:-1] or rows[1:]
        return sum(s["vllm:num_requests_running"] for s in inner) / len(inner)


def engine_metric(metrics: list, name: str) -> float:
    """Sum of an offline engine's metric (``LLM.get_metrics()``) over its labels; 0 when absent."""
    return float(sum(getattr(m, "value", 0) or 0 for m in metrics if m.name == name))


class CpuSplit:
    """Cores used by a server's process tree and by everything else on the machine during a block
    (``with CpuSplit(server_pid) as cpu: ...; cpu.server_cores, cpu.other_cores``).

    On a small machine a load generator's own CPU use slows the server it measures; this shows by how much.
    """

    def __init__(self, server_pid: int) -> None:
        import psutil

        self._server = psutil.Process(server_pid)
        self.server_cores = self.other_cores = float("nan")

    def _server_s(self) -> float:
        import psutil

        total = 0.0
        try:
            procs = [self._server, *self._server.children(recursive=True)]
        except psutil.Error:  # the server is gone: its time is no longer counted
            return total
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:  # a worker that exited meanwhile
                pass
        return total

    @staticmethod
    def _busy_s() -> float:
        import psutil

        t = psutil.cpu_times()
        return t.user + t.system + sum(getattr(t, name, 0.0) for name in ("nice", "irq", "softirq"))

    def __enter__(self) -> CpuSplit:
        import time

        self._t0, self._server0, self._busy0 = time.perf_counter(), self._server_s(), self._busy_s()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        wall = time.perf_counter() - self._t0
        server = self._server_s() - self._server0
        self.server_cores = server / wall
        self.other_cores = max(self._busy_s() - self._busy0 - server, 0.0) / wall
