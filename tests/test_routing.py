"""vllm-router in front of replicas (fakes here; real vLLM in notebook 09), and the conversation workloads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import requests
from fake_openai import fake_backend

from vllm_workshop.errors import LabError
from vllm_workshop.loadgen import run_conversations
from vllm_workshop.routing import PolicyRun, imbalance, router_server
from vllm_workshop.server import free_port
from vllm_workshop.workloads import one_prefix_conversations, shared_prefix_conversations


def test_conversations_share_a_prefix_within_and_nothing_across() -> None:
    chats = shared_prefix_conversations(4, turns=3, seed=1)
    assert len({c.system for c in chats}) == 4  # one case file each
    assert {c.system[:8] for c in chats} == {f"Case 1-{i}" for i in range(4)}  # differ from the first word
    assert all(len(c.turns) == 3 for c in chats)
    assert len(chats[0].system.split()) > 200  # long enough to fill prefix-cache blocks
    assert shared_prefix_conversations(4, turns=3, seed=1) == chats  # the same seed, the same workload
    other = shared_prefix_conversations(4, turns=3, seed=2)
    assert {c.system for c in other}.isdisjoint({c.system for c in chats})
    assert len({c.system for c in one_prefix_conversations(5)}) == 1


def test_an_unknown_policy_or_no_worker_is_refused() -> None:
    with pytest.raises(LabError, match="unknown routing policy 'fastest'.*round_robin"):
        router_server(["http://127.0.0.1:1"], "fastest")
    with pytest.raises(LabError, match="at least one worker"):
        router_server([], "round_robin")


def test_imbalance_is_the_busiest_replicas_share() -> None:
    run = PolicyRun("p", "w", 12, 0, 0.5, 1.0, 2.0, 1.0, 1.0, 2.0, 10.0, {"a": 9, "b": 3})
    assert imbalance(run) == 0.75
    assert run.row()["requests per replica"] == "a 9 / b 3"
    assert math.isnan(imbalance(PolicyRun("p", "w", 0, 0, 0, 0, 0, 0, 0, 0, 0, {"a": 0, "b": 0})))


@pytest.mark.slow
def test_round_robin_alternates_resends_history_and_survives_a_dead_worker(tmp_path: Path) -> None:
    """The real router binary over two fake workers: an even split, each turn carries the whole history, and
    with one worker killed the router retries on the other."""
    fakes = [fake_backend(free_port(), 0.0, tmp_path).start(timeout=30) for _ in range(2)]
    router = router_server([f.base_url for f in fakes], "round_robin").start(timeout=60)
    try:
        chats = shared_prefix_conversations(4, turns=3, think_s=(0.0, 0.0))
        url = router.base_url + "/v1"
        records, _ = run_conversations(url, "lab-model", chats, concurrency=2, max_tokens=4)
        assert [r.error for r in records] == [None] * 12
        counts = [requests.get(f.base_url + "/stats", timeout=5).json()["message_counts"] for f in fakes]
        assert [len(c) for c in counts] == [6, 6]  # round robin: an even split
        # system + user, then + answer + user per turn: 2, 4, 6 messages
        assert sorted(n for c in counts for n in c) == [2] * 4 + [4] * 4 + [6] * 4
        # one conversation at a time: round robin sends every second turn to the worker without its history
        before = [len(c) for c in counts]
        records, _ = run_conversations(url, "lab-model", chats, 4, max_tokens=4, one_at_a_time=True)
        assert [r.error for r in records] == [None] * 12
        assert [r.label for r in records] == [f"case {i}/turn {k}" for i in range(4) for k in (1, 2, 3)]
        counts = [requests.get(f.base_url + "/stats", timeout=5).json()["message_counts"] for f in fakes]
        new = sorted(c[n:] for c, n in zip(counts, before, strict=True))
        assert new == [[2, 6, 4] * 2, [4, 2, 6] * 2], new  # turns 1 and 3 on one worker, turn 2 on the other
        fakes[1].stop()
        records, _ = run_conversations(url, "lab-model", chats[:2], concurrency=2, max_tokens=4)
        assert [r.error for r in records] == [None] * 6
    finally:
        router.stop()
        for fake in fakes:
            fake.stop()


def test_one_prefix_runs_share_within_a_run_and_not_across() -> None:
    first, second = one_prefix_conversations(10, seed=1), one_prefix_conversations(10, seed=2)
    assert len({c.system for c in first}) == 1 and first[0].system != second[0].system
    assert len({c.turns for c in first}) == 10  # no two conversations repeat each other


def test_a_replica_that_vanished_mid_run_is_an_error_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_workshop import routing
    from vllm_workshop.observe import PrometheusError

    before = {"hits": 0, "queries": 0, "done": {"a": 1, "b": 1}}
    seen = iter([before, {"hits": 5, "queries": 9, "done": {"a": 4}}])  # replica b gone after the run
    monkeypatch.setattr(routing, "settle", lambda: 0.0)
    monkeypatch.setattr(routing, "_counters", lambda *args: next(seen))
    asked: list[dict] = []
    monkeypatch.setattr(routing, "run_conversations", lambda *a, **kwargs: asked.append(kwargs) or ([], 1.0))
    with pytest.raises(PrometheusError, match="replicas changed during the run"):
        routing.measure_policy("http://prom", "http://router", "p", "m", [], "w", one_at_a_time=True)
    assert asked == [{"one_at_a_time": True}]  # the quiet-fleet runs reach the load generator
