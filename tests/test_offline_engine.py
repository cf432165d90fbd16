"""The offline engine helpers: vLLM's output kept in a file, clear start errors, nothing left after close."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vllm_workshop.errors import LabError
from vllm_workshop.offline import engine_in_process, format_table, output_to, start_llm
from vllm_workshop.server import tail


def test_a_multi_line_answer_stays_on_its_row() -> None:
    rows = [{"answer": "Paris.\nIt is the capital.", "tokens": 7}, {"answer": "Blue", "tokens": 2}]
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert "Paris. ↵ It is the capital." in lines[2] and lines[2].rstrip().endswith("7")


def test_processes_started_inside_output_to_write_to_the_file(tmp_path: Path, capfd) -> None:
    log = tmp_path / "logs" / "engine.log"
    with output_to(log):
        code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"
        subprocess.run([sys.executable, "-c", code], check=True)
    os.write(1, b"after\n")  # this process has its own output back
    out, err = capfd.readouterr()
    assert "after" in out and "to stdout" not in out and "to stderr" not in err
    assert log.read_text().splitlines() == ["to stdout", "to stderr"]
    assert tail(log, lines=1) == "to stderr"


@pytest.mark.slow
@pytest.mark.parametrize("in_process", [False, True], ids=["own-processes", "in-process"])
def test_an_engine_that_cannot_start_says_why_from_its_log(settings, in_process: bool) -> None:
    import torch

    set_threads = torch.set_num_threads
    with pytest.raises(LabError, match="did not start") as caught:
        # too small a KV cache for one max_model_len request
        start_llm(settings, in_process=in_process, num_gpu_blocks_override=1)
    message = str(caught.value)
    assert torch.set_num_threads is set_threads  # vLLM's binding-time no-op is not left in this process
    assert not torch.distributed.is_initialized()  # nor the half-started engine's process group
    assert "the end of vLLM's log" in message
    assert "cache blocks" in message, message  # the engine's reason
    if not in_process:  # the engine core's reason, from its log
        assert "cache blocks" in message.split("the end of vLLM's log")[1], message


def test_engines_run_in_process_only_with_the_lane_s_own_binding_and_one_rank(settings, monkeypatch) -> None:
    monkeypatch.delenv("LAB_ENGINE_IN_PROCESS", raising=False)
    cpu, gpu = replace(settings, device="cpu"), replace(settings, device="cuda")
    assert engine_in_process(cpu, None, {})
    assert not engine_in_process(gpu, None, {})
    assert not engine_in_process(cpu, {"VLLM_CPU_OMP_THREADS_BIND": "auto"}, {})  # would pin this process
    assert not engine_in_process(cpu, None, {"tensor_parallel_size": 2})
    assert not engine_in_process(cpu, None, {"pipeline_parallel_size": 2})
    monkeypatch.setenv("LAB_ENGINE_IN_PROCESS", "0")
    assert not engine_in_process(cpu, None, {})


def test_vllm_s_log_handlers_follow_the_latest_engine_log(tmp_path: Path) -> None:
    logger = logging.getLogger("vllm")
    handler = logging.StreamHandler()  # what vLLM's own logging config adds (to sys.stdout)
    logger.addHandler(handler)
    try:
        first, second = tmp_path / "first.log", tmp_path / "second.log"
        with output_to(first):
            logger.warning("while the first engine starts")
        logger.warning("while the first engine serves")  # an in-process engine logs after its start too
        with output_to(second):
            pass
        logger.warning("while the second engine serves")
    finally:
        logger.removeHandler(handler)
    assert "while the first engine starts" in first.read_text()
    assert "while the first engine serves" in first.read_text()
    assert "second engine" in second.read_text() and "second engine" not in first.read_text()
