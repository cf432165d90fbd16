"""Load generator statistics and workloads (module 7 runs it on a real server beside the field's tools)."""

from __future__ import annotations

import math

import pytest

from vllm_workshop.loadgen import LoadRequest, RequestRecord, percentile, run_load, summarize
from vllm_workshop.workloads import SYSTEM_PROMPT, chat_requests, support_requests


def test_record_timings() -> None:
    record = RequestRecord(
        "x", sent=1.0, first_token=1.5, done=3.0, tokens=4, token_times=[1.5, 2.0, 2.5, 3.0]
    )
    assert (record.ttft, record.latency) == (0.5, 2.0)
    assert record.inter_token == [0.5, 0.5, 0.5]


def test_summary_counts_errors_and_rates() -> None:
    good = RequestRecord("a", 0.0, 0.2, 1.0, 10, [0.2 + 0.1 * i for i in range(9)])
    bad = RequestRecord("b", 0.0, error="APIConnectionError: refused")
    row = summarize([good, bad], wall_s=2.0, label="t")
    assert (row["requests"], row["errors"], row["tok/s"], row["req/s"]) == (2, 1, 5.0, 0.5)
    assert row["ttft_p50_s"] == 0.2 and row["itl_p50_ms"] == pytest.approx(100.0)
    assert math.isnan(percentile([], 50))


def test_unreachable_endpoint_is_recorded_not_raised() -> None:
    from vllm_workshop.server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    records, _ = run_load(url, "m", [LoadRequest("x", [{"role": "user", "content": "hi"}], 4)], concurrency=1)
    assert records[0].error and "Connection" in records[0].error


def test_a_delayed_request_is_sent_after_its_delay() -> None:
    from vllm_workshop.server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    ask = [{"role": "user", "content": "hi"}]
    load = [LoadRequest("now", ask, 4), LoadRequest("later", ask, 4, delay_s=0.3)]
    records, _ = run_load(url, "m", load, concurrency=2)
    assert records[0].sent < 0.1 <= 0.3 <= records[1].sent < 1.0


def test_workloads_are_reproducible() -> None:
    assert chat_requests(5, seed=1) == chat_requests(5, seed=1) != chat_requests(5, seed=2)
    support = support_requests(3)
    assert all(chat[0]["content"] == SYSTEM_PROMPT for chat in support)
    assert len({chat[1]["content"] for chat in support}) == 3
