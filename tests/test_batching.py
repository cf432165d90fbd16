"""Bookkeeping of module 2's experiments: workloads, like-for-like comparison, knee, machine ceiling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_workshop.batching import BatchingComparison, Throughput, compare_batching, output_lengths
from vllm_workshop.ceiling import MachineProbe, decode_bounds, probe
from vllm_workshop.loadgen import knee


def test_varied_workload_has_short_and_long_answers_and_is_reproducible() -> None:
    lengths = output_lengths(64, varied=True, seed=3)
    assert lengths == output_lengths(64, varied=True, seed=3)
    assert all(2 <= n <= 6 or 80 <= n <= 96 for n in lengths)  # 90% short, 10% long (the docstring)
    assert any(n <= 6 for n in lengths) and any(n >= 80 for n in lengths)


def test_equal_workload_asks_for_the_same_total_with_one_length() -> None:
    varied, equal = output_lengths(64, varied=True, seed=3), output_lengths(64, varied=False, seed=3)
    assert len(set(equal)) == 1
    assert abs(sum(equal) - sum(varied)) <= len(varied) / 2  # only the rounding of the mean differs


def test_static_slot_use_counts_idle_slots_of_each_wave() -> None:
    # waves of 2: [10, 40] runs 40 steps x 2 slots = 80 slot-steps for 50 tokens; [20, 20]: 40 for 40.
    result = BatchingComparison(
        "t", 2, (10, 40, 20, 20), Throughput("c", 4, 90, 1.0), Throughput("s", 4, 90, 2.0)
    )
    assert result.static_slot_use == pytest.approx(90 / 120)
    assert result.speedup == pytest.approx(2.0)


class FakeEngine:
    """Records what each ``generate`` call was given; answers every request with its ``max_tokens``."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def generate(self, prompts: list[str], params, use_tqdm: bool = False) -> list[SimpleNamespace]:
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append([p.max_tokens for p in params])
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[0] * p.max_tokens)]) for p in params]


def test_both_sides_run_the_same_requests_on_the_same_engine_with_the_same_slots() -> None:
    engine, lengths = FakeEngine(), output_lengths(12, seed=1)
    result = compare_batching(engine, [f"p{i}" for i in range(12)], lengths, slots=4, workload="varied")
    warmup, continuous, *waves = engine.calls
    assert warmup == [4]
    assert continuous == lengths  # every request at once: the engine's 4 slots are refilled as requests end
    assert waves == [lengths[0:4], lengths[4:8], lengths[8:12]]  # static: waves of exactly the slot count
    assert result.continuous.generated_tokens == result.static.generated_tokens == sum(lengths)


def test_fewer_requests_than_slots_cannot_show_requests_joining() -> None:
    with pytest.raises(ValueError, match="more requests than slots"):
        compare_batching(FakeEngine(), ["a", "b"], [4, 4], slots=4, workload="x")


def test_knee_is_the_point_of_highest_throughput_per_latency() -> None:
    # power = throughput / latency = 10, 18.1, 23.1, 12.8: the knee is concurrency 4
    assert knee([1, 2, 4, 8], [10, 19, 30, 32], [1.0, 1.05, 1.3, 2.5]) == 2


def test_decode_bounds_hand_worked() -> None:
    # 94 GFLOP/s / (2 x 134,515,008 FLOPs per token) = 349.4 tok/s (the 2-core figure);
    # 10 GB/s / 538,060,032 bytes of fp32 weights per step = 18.6 tok/s at batch 1.
    bounds = decode_bounds(MachineProbe(2, 94e9, 10e9), 134_515_008, 538_060_032)
    assert bounds.compute_tokens_per_s == pytest.approx(349.4, abs=0.1)
    assert bounds.bandwidth_tokens_per_s == pytest.approx(18.59, abs=0.01)
    assert bounds.share(200.0) == pytest.approx(200 / 349.4, rel=1e-3)


def test_probe_measures_this_machine() -> None:
    machine = probe(threads=1, size=128, copy_mib=8, seconds=0.05)
    assert machine.threads == 1 and machine.matmul_flops > 1e8 and machine.bandwidth > 1e8


def test_the_probe_counts_its_fastest_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow start (a clock ramp, a busy neighbour) must not lower the ceiling: the best window counts."""
    import torch

    from vllm_workshop import ceiling

    clock, calls = [0.0], [0]

    def mm(a: object, b: object) -> None:
        calls[0] += 1
        clock[0] += 0.02 if calls[0] <= 11 else 0.001  # the warm-up and 10 slow multiplies, then fast ones

    def perf_counter() -> float:
        clock[0] += 0.0001  # reading the clock costs a little, so the copy loop ends too
        return clock[0]

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(ceiling, "time", SimpleNamespace(perf_counter=perf_counter))
    machine = ceiling.probe(threads=1, size=8, copy_mib=1, seconds=0.5, windows=5)
    # fast windows: one multiply per 1.1 ms; the whole half second's average would be about 560 per second
    assert machine.matmul_flops == pytest.approx(2 * 8**3 / 0.0011, rel=0.02)


class CountingEngine:
    """Records how many prompts each ``generate`` call got; every answer has ``max_tokens`` tokens."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate(self, prompts: list[str], params: object, use_tqdm: bool) -> list[object]:
        self.calls.append(len(prompts))
        out = SimpleNamespace(token_ids=[0] * params.max_tokens)  # type: ignore[attr-defined]
        return [SimpleNamespace(outputs=[out]) for _ in prompts]


def test_in_flight_hands_the_engine_groups_of_that_size() -> None:
    from vllm_workshop.batching import measure_generate

    engine = CountingEngine()
    result, outputs = measure_generate(engine, [f"p{i}" for i in range(40)], 5, "x", in_flight=16)
    assert engine.calls == [16, 16, 16, 8]  # the warm-up at the group's size, then at most 16 at a time
    assert (result.requests, result.generated_tokens, len(outputs)) == (40, 200, 40)
    engine.calls.clear()
    measure_generate(engine, [f"p{i}" for i in range(40)], 5, "x")
    assert engine.calls == [40, 40]


def test_an_engine_with_more_slots_runs_the_asked_number_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module 2 compares bindings at 64 in flight on engines of 128 slots (512 prompts on the GPU lane)."""
    from vllm_workshop import batching

    engine, started = CountingEngine(), []
    monkeypatch.setattr(batching, "start_llm", lambda settings, **kw: started.append(kw) or engine)
    monkeypatch.setattr(batching, "close_llm", lambda llm: None)
    monkeypatch.setattr(batching, "kv_cache_info", lambda llm: {})
    prompts = [f"p{i}" for i in range(512)]
    result, _ = batching.vllm_throughput(None, prompts, 4, 128, in_flight=64, binding={})
    assert started == [{"max_num_seqs": 128, "binding": {}}]
    assert engine.calls == [64] * 9  # the warm-up, then 8 groups of 64
    assert result.requests == 512 and result.generated_tokens == 512 * 4
