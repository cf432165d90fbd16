"""Parsing /metrics and per-request stats from vLLM outputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_workshop.metrics import headline, mean_from_histogram, sample_totals
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
