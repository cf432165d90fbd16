"""Parsing /metrics and per-request stats from vLLM outputs."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from vllm_workshop.metrics import CpuSplit, MetricsPoller, headline, mean_from_histogram, sample_totals
from vllm_workshop.offline import format_table, request_stats, stats_rows

METRICS = """\
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="m"} 3.0
vllm:request_success_total{finished_reason="length",model_name="m"} 2.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 5.0
vllm:time_to_first_token_seconds_count{model_name="m"} 5.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 2.5
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 0.0
"""


def test_counters_are_summed_over_labels() -> None:
    totals = sample_totals(METRICS)
    assert totals["vllm:request_success_total"] == 5.0
    assert mean_from_histogram(totals, "vllm:time_to_first_token_seconds") == pytest.approx(0.5)
    assert mean_from_histogram(totals, "vllm:absent") is None
    assert list(headline(METRICS)) == [
        "vllm:num_requests_running",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:time_to_first_token_seconds_sum",
    ]


def fake_output(text: str = "Paris.", tokens: int = 5, metrics: object | None = "default") -> SimpleNamespace:
    if metrics == "default":
        metrics = SimpleNamespace(
            queued_ts=10.0,
            scheduled_ts=10.5,
            first_token_ts=11.0,
            last_token_ts=13.0,
            first_token_latency=1.2,
        )
    completion = SimpleNamespace(text=text, token_ids=list(range(tokens)))
    return SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[completion], metrics=metrics)


def test_request_stats_from_engine_timestamps() -> None:
    stats = request_stats(fake_output())
    assert (stats.prompt_tokens, stats.generated_tokens) == (3, 5)
    assert (stats.queue_s, stats.ttft_s, stats.decode_s, stats.total_s) == (0.5, 1.2, 2.0, 3.0)
    assert stats.decode_tokens_per_s == 2.0


def test_missing_metrics_explain_the_switch() -> None:
    with pytest.raises(ValueError, match="disable_log_stats=False"):
        request_stats(fake_output(metrics=None))


def test_table_has_one_line_per_request() -> None:
    table = format_table(stats_rows([fake_output(), fake_output("Blue", 2)]))
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].split()[0] == "answer" and "Blue" in lines[3]
    assert format_table([]) == "(no rows)"


def _poller(rows: list[tuple[float, float, float]]) -> MetricsPoller:
    """A poller holding ``(t, requests running, generation tokens so far)`` samples, no thread started."""
    poller = MetricsPoller("http://127.0.0.1:9")
    poller.samples = [
        {"t": t, "vllm:num_requests_running": running, "vllm:generation_tokens_total": tokens}
        for t, running, tokens in rows
    ]
    return poller


def test_the_servers_rate_covers_only_the_window_its_counter_moved() -> None:
    # idle until t=2, 100 tokens from t=2 to t=4 (still 150 at t=4.5 and t=5), then idle
    rows = [(0, 0, 50), (1, 0, 50), (2, 4, 50), (3, 4, 90), (4, 2, 150), (4.5, 0, 150), (5, 0, 150)]
    poller = _poller(rows)
    assert poller.output_tok_s() == pytest.approx(100 / 2)  # (150 - 50) / (4 - 2): too few inner samples
    assert poller.mean_running() == pytest.approx(4)  # the one sample inside the window, at t=3


def test_a_sweeps_last_level_starts_where_more_requests_run_than_before() -> None:
    # level 1 (at most 2 running): 10 tokens/s from t=0 to 2; level 2 (8 running): 40 tokens/s from t=3 to 5
    rows = [(0, 2, 0), (1, 2, 10), (2, 2, 20), (3, 8, 20), (4, 8, 60), (5, 0, 100), (6, 0, 100)]
    assert _poller(rows).output_tok_s(after_running_above=2) == pytest.approx(40)
    # over both levels: between the inner samples t=1 and t=4 (the outer ones, t=0 and t=5, are cut off)
    assert _poller(rows).output_tok_s() == pytest.approx((60 - 10) / (4 - 1))


def test_a_counter_that_never_moved_or_a_level_never_reached_is_an_error() -> None:
    with pytest.raises(ValueError, match="did not move"):
        _poller([(0, 1, 5), (1, 1, 5)]).output_tok_s()
    with pytest.raises(ValueError, match="never ran more than 4"):
        _poller([(0, 3, 5), (1, 3, 9)]).output_tok_s(after_running_above=4)


def test_failed_scrapes_are_skipped_not_counted_as_zero() -> None:
    nan = float("nan")
    poller = _poller([(0, 0, 0), (1, 1, nan), (2, 1, 20), (3, 0, 20)])
    assert poller.output_tok_s() == pytest.approx(10)


def test_a_server_that_never_answers_leaves_nan_samples() -> None:
    with MetricsPoller("http://127.0.0.1:9", interval_s=0.05) as poller:
        time.sleep(0.3)
    assert poller.samples and all(math.isnan(s["vllm:num_requests_running"]) for s in poller.samples)


def test_cpu_split_charges_a_busy_child_to_the_server() -> None:
    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        with CpuSplit(busy.pid) as cpu:
            time.sleep(1.2)  # the child spins all along
    finally:
        busy.kill()
    assert cpu.server_cores > 0.5  # one process spinning for the whole block
    assert cpu.other_cores < cpu.server_cores
