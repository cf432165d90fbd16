"""Module 7's benchmark plumbing: both tools' results read right, goodput as vLLM defines it, bounded runs.

The slow tests run ``make bench``'s script (``vllm bench serve`` for real) against the small fake OpenAI
server, and a run past its time limit; notebook 07 runs both tools against a real ``vllm serve`` in CI and
checks their results (goodput recomputed from vLLM's per-request detail equals vLLM's own figure).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_openai import fake_backend

from vllm_workshop.benchmarks import (
    BenchError,
    Workload,
    above_p99,
    agreement,
    check_endpoint,
    goodput_at,
    guidellm_command,
    guidellm_points,
    prompts_of_length,
    vllm_bench,
    vllm_bench_point,
)
from vllm_workshop.capacity import BenchPoint, Slo
from vllm_workshop.model import resolve_model
from vllm_workshop.server import free_port
from vllm_workshop.settings import lab_settings

ROOT = Path(__file__).resolve().parents[1]


def point(tool: str, out_tok_s: float, tpot: float = 50.0) -> BenchPoint:
    return BenchPoint("c8", 8, 2.0, math.nan, out_tok_s, 0.0, 100.0, 200.0, tpot, tpot, 900.0, 10, tool=tool)


@pytest.mark.parametrize(("n", "above"), [(60, 1), (100, 1), (1000, 10)])
def test_requests_above_the_p99(n: int, above: int) -> None:
    # 0.99 * 59 = 58.41 -> ranks 59 lie above; 0.99 * 99 = 98.01 -> rank 99; 0.99 * 999 = 989.01 -> 990..999
    assert above_p99(n) == above
    samples = np.random.default_rng(n).exponential(size=n)
    assert int((samples > np.percentile(samples, 99)).sum()) == above


def test_agreement_flags_the_metric_outside_the_tolerance() -> None:
    rows = agreement([point("a", 100.0), point("b", 110.0), point("c", 140.0, tpot=51.0)], tolerance=0.25)
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["out_tok_s"]["b / a"] == 1.1 and by_metric["out_tok_s"]["c / a"] == 1.4
    assert by_metric["out_tok_s"]["within"] is False  # c is 40% off
    assert by_metric["tpot_p50_ms"]["within"] is True
    with pytest.raises(BenchError, match="at least two"):
        agreement([point("a", 1.0)])


def test_a_server_that_is_down_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BenchError, match=f"No OpenAI-compatible server answers at {url}"):
        check_endpoint(url)


def test_vllm_result_fields_map_to_the_point() -> None:
    result = {
        "duration": 10.0, "completed": 20, "failed": 1, "request_throughput": 2.0, "request_goodput": 1.5,
        "output_throughput": 32.0, "total_input_tokens": 1280,
        "p50_ttft_ms": 110.0, "p99_ttft_ms": 190.0, "p50_tpot_ms": 61.0, "p99_tpot_ms": 99.0,
        "p50_itl_ms": 60.0, "p50_e2el_ms": 1000.0, "p99_e2el_ms": 1500.0,
        "p90_ttft_ms": 150.0, "p90_tpot_ms": 80.0, "p90_e2el_ms": 1300.0,
    }  # fmt: skip
    p = vllm_bench_point(result, "rate 2", 2.0)
    assert (p.req_s, p.goodput_req_s, p.out_tok_s, p.in_tok_s) == (2.0, 1.5, 32.0, 128.0)
    assert (p.ttft_p50_ms, p.ttft_p99_ms, p.tpot_p50_ms, p.tpot_p99_ms) == (110.0, 190.0, 61.0, 99.0)
    assert (p.itl_p50_ms, p.e2e_p50_ms, p.e2e_p99_ms, p.completed, p.errored) == (60.0, 1000.0, 1500.0, 20, 1)
    assert (p.ttft_p90_ms, p.tpot_p90_ms, p.e2e_p90_ms) == (150.0, 80.0, 1300.0)


def test_guidellm_report_maps_to_points_with_vllms_tpot() -> None:
    # tests/data/guidellm-report.json: a GuideLLM 0.8.1 report (concurrent 1 and 4 against its mock server),
    # trimmed to the fields read here. Its ITL is vLLM's TPOT; its request latency is in seconds.
    low, high = guidellm_points(ROOT / "tests" / "data" / "guidellm-report.json")
    assert (low.label, high.label, high.load, high.tool) == ("c1", "c4", 4.0, "GuideLLM")
    assert (high.completed, high.errored) == (20, 0)
    assert high.req_s == pytest.approx(16.344, abs=1e-3) and high.out_tok_s == pytest.approx(261.51, abs=1e-2)
    assert (round(high.ttft_p50_ms, 2), round(high.ttft_p90_ms, 2), round(high.ttft_p99_ms, 2)) == (
        72.39,
        148.18,
        161.52,
    )
    assert (round(high.tpot_p50_ms, 3), round(high.tpot_p90_ms, 3)) == (
        7.826,
        12.284,
    )  # inter_token_latency_ms
    assert (round(high.e2e_p50_ms, 1), round(high.e2e_p99_ms, 1)) == (229.7, 279.9)  # 0.2297 s, 0.2799 s


def test_goodput_counts_requests_within_both_targets(tmp_path: Path) -> None:
    detail = {
        "duration": 10.0,
        "errors": ["", "", "", "boom"],
        "output_lens": [16, 6, 16, 0],
        "ttfts": [0.1, 0.5, 0.1, 0.0],
        "latencies": [1.6, 1.0, 3.1, 0.0],
    }  # TPOTs: 1.5/15 = 0.1 s, 0.5/5 = 0.1 s, 3.0/15 = 0.2 s; the fourth failed
    path = tmp_path / "detail.json"
    path.write_text(json.dumps(detail))
    run = BenchPoint("r", 1, 0.3, 0.0, 1, 1, 1, 1, 1, 1, 1, 3, result_path=str(path))
    assert goodput_at(run, Slo(200, 150)) == pytest.approx(0.1)  # only the first
    assert goodput_at(run, Slo(600, 150)) == pytest.approx(0.2)  # the first two
    assert goodput_at(run, Slo(600, 250)) == pytest.approx(0.3)  # all three completed
    with pytest.raises(BenchError, match="no per-request detail"):
        goodput_at(point("x", 1.0), Slo(1, 1))


def test_guidellm_command_bounds_every_level_and_keeps_the_key_off_it(tmp_path: Path) -> None:
    command = guidellm_command(
        "http://h:1", "m", "/tok", Workload(64, 16), [4, 16], 50, tmp_path / "r.json", max_seconds=120
    )
    text = " ".join(command)
    assert "--override profile.streams 4,16" in text
    assert "kind=max_requests,count=50" in text and "kind=max_duration,seconds=120" in text
    assert "prompt_tokens=64,output_tokens=16" in text and "api_key" not in text


def test_prompts_have_the_asked_token_length_and_no_shared_prefix() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(lab_settings().model))
    prompts = prompts_of_length(tokenizer, 5, 64)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert [len(i) for i in ids] == [64] * 5
    assert len({i[0] for i in ids}) == 5


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory):
    with fake_backend(free_port(), 0.01, tmp_path_factory.mktemp("fake")) as server:
        yield server


@pytest.mark.slow
def test_a_run_over_its_time_limit_is_a_clear_error(tmp_path: Path) -> None:
    tokenizer = resolve_model(lab_settings().model)
    slow = fake_backend(free_port(), 2.0, tmp_path)  # 2 s per token: 32 s per request
    with slow, pytest.raises(BenchError, match="did not finish within 6 s"):
        vllm_bench(slow.base_url, "lab-model", tokenizer, Workload(), 4, out_dir=tmp_path, timeout_s=6)


@pytest.mark.slow
def test_make_bench_script_writes_results_and_plot(fake, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_serving
    finally:
        sys.path.pop(0)
    tokenizer = resolve_model(lab_settings().model)
    args = ["--base-url", fake.base_url, "--requests", "12", "--fractions", "0.5", "--out", str(tmp_path)]
    args += ["--tokenizer", tokenizer]  # the fake serves "lab-model", which is no tokenizer
    assert bench_serving.main(args) == 0
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["label"] for p in saved["points"]][-1] == "saturated" and len(saved["points"]) == 2
    assert all(p["completed"] == 12 for p in saved["points"])
    assert (tmp_path / "frontier.png").stat().st_size > 5000
    down = ["--base-url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path)]
    assert bench_serving.main(down) == 2
