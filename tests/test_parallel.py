"""Distributed-run helpers; the full TP=3 vs TP=1 comparison runs in notebooks/05-multi-node.ipynb."""

from __future__ import annotations

import os

import pytest

from vllm_workshop.isolated import root_cause
from vllm_workshop.parallel import cpu_thread_binding, run_parallel


def test_cpu_binding_gives_each_rank_a_core() -> None:
    assert cpu_thread_binding(3, cores=2) == "0|1|0"
    assert cpu_thread_binding(2, cores=8) == "0|1"
    assert cpu_thread_binding(1, cores=1) == "0"


def test_root_cause_keeps_the_telling_lines() -> None:
    log = "INFO starting\n(EngineCore) ERROR [core.py:1] AssertionError: Not enough allowed NUMA nodes\nbye\n"
    assert root_cause(log) == "AssertionError: Not enough allowed NUMA nodes"
    coloured = "\x1b[31mERROR\x1b[0m \x1b[90m[executor.py:1063]\x1b[0m     assert self.tensors is not None\n"
    assert root_cause(coloured) == "assert self.tensors is not None"


@pytest.mark.slow
def test_tp_size_must_divide_the_heads(settings) -> None:
    run = run_parallel(settings, tensor_parallel=2)
    assert not run.ok and "divisible by tensor parallel size (2)" in run.error


def test_each_configuration_gets_its_own_binding_and_none_leaks(tmp_path, monkeypatch) -> None:
    """One process runs several configurations: each sees its own VLLM_CPU_OMP_THREADS_BIND, and one without
    a binding of its own sees the inherited value, not the previous configuration's."""
    import json

    from vllm_workshop import parallel

    seen = []
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "inherited")
    monkeypatch.setattr(
        parallel, "_generate", lambda args: seen.append(os.environ.get("VLLM_CPU_OMP_THREADS_BIND")) or {}
    )
    specs = [
        {"name": "3x1", "args": ["--model", "m"], "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1|0"}},
        {"name": "1x1", "args": ["--model", "m"], "env": {}},
    ]
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    parallel._each(str(tmp_path / "specs.json"), str(tmp_path / "out.jsonl"), str(tmp_path / "log"))
    assert seen == ["0|1|0", "inherited"]
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    seen.clear()
    parallel._each(str(tmp_path / "specs.json"), str(tmp_path / "out2.jsonl"), str(tmp_path / "log"))
    assert seen == ["0|1|0", None]
