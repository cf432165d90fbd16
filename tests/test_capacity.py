"""Capacity and cost arithmetic (vllm_workshop.capacity), checked against numbers worked out by hand.

Expected values are literals computed in the comments, never through the module's own formulas. Model
shapes are the config.json fields in src/vllm_workshop/data/model_shapes.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vllm_workshop.capacity import (
    ApiPrice,
    BenchPoint,
    CapacityError,
    InstancePrice,
    Slo,
    TokenMix,
    api_cost_per_request,
    best_goodput,
    break_even_requests_per_month,
    cost_per_million,
    cost_table,
    kv_mistake,
    load_prices,
    max_requests_per_month,
    monthly_api_cost,
    monthly_self_host_cost,
    replicas_needed,
    vram_rule_of_thumb,
)
from vllm_workshop.errors import LabError

GIB = 1024**3
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
MINI = ApiPrice("mini", usd_per_m_input=0.15, usd_per_m_output=0.60)
MIX = TokenMix(input_tokens=1000, output_tokens=200)


def point(label: str, goodput: float, ttft_p99: float = 900.0, tpot_p99: float = 80.0) -> BenchPoint:
    return BenchPoint(
        label=label,
        load=1.0,
        req_s=4.0,
        goodput_req_s=goodput,
        out_tok_s=800.0,
        in_tok_s=4000.0,
        ttft_p50_ms=200.0,
        ttft_p99_ms=ttft_p99,
        tpot_p50_ms=30.0,
        tpot_p99_ms=tpot_p99,
        e2e_p50_ms=6000.0,
        completed=100,
    )


# ------------------------------------------------------------------------------------------------- SLO


def test_slo_goodput_args_are_vllm_bench_form() -> None:
    assert Slo(ttft_ms=500, tpot_ms=50).goodput_args() == ["ttft:500", "tpot:50"]
    assert Slo(ttft_ms=250.5, tpot_ms=40).goodput_args() == ["ttft:250.5", "tpot:40"]


@pytest.mark.parametrize(
    ("ttft", "tpot", "field"),
    [(0, 50, "ttft_ms"), (-1, 50, "ttft_ms"), (500, 0, "tpot_ms"), (500, float("nan"), "tpot_ms")],
)
def test_slo_rejects_non_positive_numbers(ttft: float, tpot: float, field: str) -> None:
    with pytest.raises(CapacityError, match=field):
        Slo(ttft, tpot)


def test_slo_rejects_strings() -> None:
    with pytest.raises(CapacityError, match="ttft_ms"):
        Slo("500", 50)  # type: ignore[arg-type]


def test_capacity_error_is_a_lab_error() -> None:
    assert issubclass(CapacityError, LabError)


# ------------------------------------------------------------------------------------------- goodput


def test_best_goodput_picks_the_highest_goodput_not_the_highest_throughput() -> None:
    points = [point("rate 1", 1.0), point("rate 4", 3.5), point("rate 8", 2.0)]
    assert best_goodput(points).label == "rate 4"


def test_best_goodput_explains_when_no_point_met_the_slo() -> None:
    points = [point("rate 4", 0.0, ttft_p99=850.0, tpot_p99=61.2), point("rate 8", 0.0, 2400.0, 95.0)]
    with pytest.raises(CapacityError) as err:
        best_goodput(points, Slo(ttft_ms=200, tpot_ms=40))
    message = str(err.value)
    assert "TTFT <= 200 ms, TPOT <= 40 ms" in message  # the SLO
    assert "850 ms" in message and "61.2 ms" in message  # the best p99s seen
    assert "loosen the SLO" in message and "lower load" in message


def test_best_goodput_names_an_slo_given_as_text() -> None:
    with pytest.raises(CapacityError, match="chat SLO"):
        best_goodput([point("rate 1", 0.0)], "chat SLO")


def test_best_goodput_without_points() -> None:
    with pytest.raises(CapacityError, match="no benchmark points"):
        best_goodput([])


@pytest.mark.parametrize(
    ("target", "per_replica", "headroom", "expected"),
    [
        (10, 3, 0.0, 4),  # 10 / 3 = 3.33 -> 4
        (10, 3, 0.2, 4),  # 10 x 1.2 = 12; 12 / 3 = 4 exactly -> 4
        (100, 110, 0.1, 1),  # 100 x 1.1 = 110; 110 / 110 = 1 (in floats 1.0000000000000002: must not be 2)
        (10, 2.5, 0.0, 4),  # 10 / 2.5 = 4 exactly
        (10, 2.5, 0.01, 5),  # 10.1 / 2.5 = 4.04 -> 5
        (9, 3, 0.0, 3),  # 9 / 3 = 3 exactly
        (0, 3, 0.5, 0),  # no traffic, no replica
    ],
)
def test_replicas_needed(target: float, per_replica: float, headroom: float, expected: int) -> None:
    assert replicas_needed(target, per_replica, headroom) == expected


@pytest.mark.parametrize(
    ("args", "field"),
    [((10, 0), "goodput_per_replica_req_s"), ((10, -1), "goodput_per_replica_req_s"),
     ((-1, 3), "target_req_s"), ((10, 3, -0.1), "headroom")],
)  # fmt: skip
def test_replicas_needed_rejects_bad_input(args: tuple[float, ...], field: str) -> None:
    with pytest.raises(CapacityError, match=field):
        replicas_needed(*args)


# ---------------------------------------------------------------------------------------------- cost


def test_cost_per_million_output_tokens() -> None:
    # 1 USD/h at 100 tok/s: 360,000 tokens an hour -> 1e6 / 360,000 = 2.7778 USD per million
    assert cost_per_million(1.0, 100, 1.0) == pytest.approx(2.777778, rel=1e-6)
    # busy half the time: the same hour pays for 180,000 tokens -> 5.5556
    assert cost_per_million(1.0, 100, 0.5) == pytest.approx(5.555556, rel=1e-6)
    # 0.8048 USD/h at 1000 tok/s, 90% busy: 3,240,000 tokens/h -> 0.8048 / 3.24 = 0.248395
    assert cost_per_million(0.8048, 1000, 0.9) == pytest.approx(0.248395, rel=1e-5)


@pytest.mark.parametrize(
    ("args", "field"),
    [((1.0, 100, 0), "utilization"), ((1.0, 100, 1.5), "utilization"), ((1.0, 0, 0.5), "out_tok_s"),
     ((-1.0, 100, 0.5), "usd_per_hour")],
)  # fmt: skip
def test_cost_per_million_rejects_bad_input(args: tuple[float, float, float], field: str) -> None:
    with pytest.raises(CapacityError, match=field):
        cost_per_million(*args)


def test_cost_table_rows() -> None:
    instance = InstancePrice("g6.xlarge", usd_per_hour=0.72)
    rows = cost_table([point("rate 4", 3.5), 200.0], instance, utilizations=(0.5, 1.0))
    assert len(rows) == 4  # 2 throughputs x 2 utilizations
    # 0.72 USD/h at 800 tok/s (the point's out_tok_s), half busy: 1,440,000 tokens/h -> 0.5 USD per million
    assert rows[0] == {
        "instance": "g6.xlarge",
        "usd_per_hour": 0.72,
        "point": "rate 4",
        "out_tok_s": 800.0,
        "utilization": 0.5,
        "usd_per_m_output": pytest.approx(0.5),
    }
    # 200 tok/s, always busy: 720,000 tokens/h -> 1.0 USD per million
    assert rows[3]["point"] == "200 tok/s"
    assert rows[3]["usd_per_m_output"] == pytest.approx(1.0)


def test_api_cost_per_request() -> None:
    # 1000 x 0.15 / 1e6 = 0.00015 in + 200 x 0.60 / 1e6 = 0.00012 out = 0.00027 USD
    assert api_cost_per_request(MINI, MIX) == pytest.approx(0.00027)
    entry = {"name": "mini", "usd_per_m_input": 0.15, "usd_per_m_output": 0.60, "source": "https://x"}
    assert api_cost_per_request(entry, MIX) == pytest.approx(0.00027)
    # a million such requests: 270 USD
    assert monthly_api_cost(1_000_000, MIX, MINI) == pytest.approx(270.0)


def test_monthly_self_host_cost() -> None:
    assert monthly_self_host_cost(1.0, 1) == pytest.approx(730.0)  # 1 USD/h x 730 h
    assert monthly_self_host_cost(0.8048, 2) == pytest.approx(1175.008)  # 0.8048 x 2 x 730
    assert monthly_self_host_cost(1.0, 1, hours=24) == pytest.approx(24.0)


def test_break_even_and_whether_it_is_reachable() -> None:
    # 730 USD a month / 0.00027 USD a request = 2,703,703.7 requests a month
    assert break_even_requests_per_month(1.0, 1, MIX, MINI) == pytest.approx(2_703_703.7, abs=0.1)
    # two replicas double the fixed cost: 5,407,407.4
    assert break_even_requests_per_month(1.0, 2, MIX, MINI) == pytest.approx(5_407_407.4, abs=0.1)
    # one replica at 2 req/s goodput, busy half the time: 2 x 0.5 x 730 x 3600 = 2,628,000 < 2,703,704
    assert max_requests_per_month(2.0, 1, 0.5) == pytest.approx(2_628_000.0)


def test_break_even_and_capacity_reject_bad_input() -> None:
    with pytest.raises(CapacityError, match="no break-even"):
        break_even_requests_per_month(1.0, 1, MIX, ApiPrice("free", 0.0, 0.0))
    with pytest.raises(CapacityError, match="replicas"):
        monthly_self_host_cost(1.0, 0)
    with pytest.raises(CapacityError, match="utilization"):
        max_requests_per_month(2.0, 1, 1.2)
    with pytest.raises(CapacityError, match="TokenMix"):
        TokenMix(0, 0)
    with pytest.raises(CapacityError, match="output_tokens"):
        TokenMix(100, -1)


# -------------------------------------------------------------------------------------------- prices


def test_shipped_prices_are_sourced_and_dated() -> None:
    prices = load_prices()
    assert "change" in prices.note and "edit" in prices.note
    names = {i.name for i in prices.instances}
    assert {"g5.xlarge", "g6.xlarge", "g6e.xlarge", "inf2.xlarge"} <= names
    assert any(i.accelerator.startswith("none") for i in prices.instances)  # a CPU instance
    assert {a.provider for a in prices.apis} >= {"OpenAI", "Anthropic"}
    for entry in [*prices.instances, *prices.apis]:
        assert entry.source.startswith("https://"), entry
        assert re.fullmatch(r"20\d\d-(0[1-9]|1[0-2])", entry.as_of), entry
    for instance in prices.instances:
        assert instance.usd_per_hour > 0 and instance.region == "us-east-1" and instance.kind == "on-demand"
    for api in prices.apis:
        assert 0 < api.usd_per_m_input < api.usd_per_m_output  # output tokens cost more on every API
    assert prices.api("gpt-4o-mini").usd_per_m_output > 0
    with pytest.raises(CapacityError, match="g6.xlarge"):  # the error lists the known names
        prices.instance("p5.48xlarge")


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


GOOD = {
    "instances": [{"name": "box", "usd_per_hour": 0.5, "source": "https://example.com", "extra": 1}],
    "apis": [{"name": "api", "usd_per_m_input": 0.1, "usd_per_m_output": 0.4}],
}


def test_load_prices_reads_an_edited_file(tmp_path: Path) -> None:
    prices = load_prices(write(tmp_path, GOOD))
    assert prices.instance("box").usd_per_hour == 0.5  # unknown fields ("extra") are ignored
    assert prices.api("api").usd_per_m_output == 0.4


def test_load_prices_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CapacityError, match="nope.json"):
        load_prices(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ['{"instances": [', "", "\x00\xff"])
def test_load_prices_corrupt_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CapacityError, match="not valid JSON"):
        load_prices(path)


def test_load_prices_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(CapacityError, match="'instances' list"):
        load_prices(write(tmp_path, [GOOD]))


def test_load_prices_negative_price_names_the_entry(tmp_path: Path) -> None:
    bad = {**GOOD, "instances": [{"name": "g6.xlarge", "usd_per_hour": -0.8}]}
    with pytest.raises(CapacityError, match=r"'g6.xlarge'.*usd_per_hour.*-0.8"):
        load_prices(write(tmp_path, bad))


def test_load_prices_missing_price_names_the_entry(tmp_path: Path) -> None:
    bad = {**GOOD, "apis": [{"name": "haiku", "usd_per_m_input": 1.0}]}
    with pytest.raises(CapacityError, match="'haiku' has no usd_per_m_output"):
        load_prices(write(tmp_path, bad))


def test_load_prices_price_that_is_not_a_number(tmp_path: Path) -> None:
    bad = {**GOOD, "instances": [{"name": "box", "usd_per_hour": "$0.50"}]}
    with pytest.raises(CapacityError, match="'box'"):
        load_prices(write(tmp_path, bad))


# ------------------------------------------------------------------------------------------ memory


def test_kv_mistake_llama_8b() -> None:
    info = kv_mistake(LLAMA_8B, budget_bytes=4 * GIB)
    # GQA: 2 (K, V) x 32 layers x 8 KV heads x 128 head_dim x 2 bytes = 131,072 bytes per token
    assert info["bytes_per_token"] == 131_072
    # the mistake counts the 32 query heads: 2 x 32 x 32 x 128 x 2 = 524,288
    assert info["naive_bytes_per_token"] == 524_288
    assert info["ratio"] == 4.0
    # 4 GiB = 4,294,967,296 bytes: / 131,072 = 32,768 tokens; / 524,288 = 8,192
    assert (info["tokens"], info["naive_tokens"]) == (32_768, 8_192)


def test_kv_mistake_qwen_half_b() -> None:
    info = kv_mistake("Qwen/Qwen2.5-0.5B-Instruct", budget_bytes=GIB)
    # 2 x 24 layers x 2 KV heads x 64 head_dim (896 / 14) x 2 bytes = 12,288; naive 14 heads: 86,016
    assert (info["bytes_per_token"], info["naive_bytes_per_token"]) == (12_288, 86_016)
    assert info["ratio"] == 7.0
    assert info["tokens"] == 87_381  # 1,073,741,824 // 12,288


def test_vram_rule_of_thumb_llama_8b_on_24_gib() -> None:
    info = vram_rule_of_thumb(LLAMA_8B, 24 * GIB, gpu_memory_utilization=0.9, max_model_len=8192)
    # 8,030,261,248 published parameters x 2 bytes (the 128,256 vocabulary is already a multiple of 64)
    assert info["weights_bytes"] == 16_060_522_496
    assert info["rule_1_5x_bytes"] == 24_090_783_744  # x 1.5
    assert info["rule_2x_bytes"] == 32_121_044_992  # x 2
    assert info["rule_says_fits"]  # 24.09e9 <= 24 GiB = 25,769,803,776
    # vLLM may use ceil(0.9 x 25,769,803,776) = 23,192,823,399; minus the weights leaves 7,132,300,903
    assert info["requested_bytes"] == 23_192_823_399
    assert 0 < info["kv_budget_bytes"] < 7_132_300_903  # activations/graphs come off too: a few GB
    assert info["kv_budget_bytes"] == 7_132_300_903 - info["reserve_bytes"]
    assert info["kv_bytes_per_token"] == 131_072
    assert info["kv_tokens"] * 131_072 <= info["kv_budget_bytes"]
    assert info["kv_tokens"] % 16 == 0  # whole CUDA blocks of 16
    # even with no reserve: 7,132,300,903 // 131,072 = 54,415 tokens = 6 sequences of 8,192
    assert 1 <= info["full_length_sequences"] <= 6
    assert info["full_length_sequences"] == info["kv_tokens"] // 8192
    assert info["starts"] and info["problems"] == []


def test_vram_rule_of_thumb_when_the_weights_do_not_fit() -> None:
    info = vram_rule_of_thumb("meta-llama/Llama-3.1-70B-Instruct", 24 * GIB)
    assert not info["rule_says_fits"]  # ~141 GB of weights
    assert not info["starts"] and info["problems"]
    assert info["kv_tokens"] == 0 and info["kv_budget_bytes"] == 0
