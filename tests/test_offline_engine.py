"""The offline engine helpers: vLLM's output kept in a file, clear start errors, nothing left after close."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_workshop.errors import LabError
from vllm_workshop.offline import format_table, output_to, start_llm
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
def test_an_engine_that_cannot_start_says_why_from_its_log(settings) -> None:
    with pytest.raises(LabError, match="did not start") as caught:
        start_llm(settings, num_gpu_blocks_override=1)  # too small a KV cache for one max_model_len request
    message = str(caught.value)
    assert "the end of vLLM's log" in message
    assert "cache blocks" in message.split("the end of vLLM's log")[1], message  # the engine core's reason
