"""evaluate_all's bookkeeping: results matched to variants, refusals kept, the rest measured alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vllm_workshop import isolated, paths, quantize
from vllm_workshop.isolated import each_spec
from vllm_workshop.quantize import Variant, VariantResult, evaluate_all
from vllm_workshop.settings import lab_settings

FAKE = """
import json, sys
spec, out, log = sys.argv[-3:]
variants = json.load(open(spec))
print("[lab] measuring " + variants[0]["name"] + " ...", flush=True)
print("vLLM chatter on stdout", flush=True)
with open(out, "a") as f:
    f.write(json.dumps({"name": variants[0]["name"], "result": {"load_s": 1.0, "perplexity": 9.0,
                        "tokens_per_s": 50.0, "kv_tokens": 64}}) + "\\n")
    f.write(json.dumps({"name": variants[1]["name"], "error": "ValueError: refused"}) + "\\n")
sys.exit(3)  # dies before the third variant
"""


def test_a_dead_shared_process_leaves_the_rest_to_single_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "fake_eval.py"
    fake.write_text(FAKE)
    real_popen = isolated.subprocess.Popen
    monkeypatch.setattr(
        isolated.subprocess,
        "Popen",
        lambda command, **kw: real_popen([sys.executable, str(fake), *command[-3:]], **kw),
    )
    monkeypatch.setattr(paths, "state_dir", lambda: tmp_path)  # where run_log puts the log
    alone: list[str] = []

    def single(settings, name, model, quantization, timeout_s, kv_cache_dtype, dtype):
        alone.append(name)
        return VariantResult(name, True, dtype, perplexity=8.0)

    monkeypatch.setattr(quantize, "evaluate", single)
    variants = [
        Variant("ref", tmp_path),
        Variant("int8", tmp_path, dtype="bfloat16"),
        Variant("kv", tmp_path),
    ]
    results = evaluate_all(lab_settings(), variants, timeout_s=60)
    assert [r.name for r in results] == ["ref", "int8", "kv"]
    assert results[0].ok and results[0].perplexity == 9.0 and results[0].kv_tokens == 64
    assert not results[1].ok and results[1].error == "ValueError: refused" and results[1].dtype == "bfloat16"
    assert alone == ["kv"] and results[2].perplexity == 8.0
    shown = capsys.readouterr().out
    assert "measuring ref ..." in shown and "chatter" not in shown
    (log,) = (tmp_path / "logs").glob("quant-eval-*.log")
    assert "vLLM chatter on stdout" in log.read_text()


def test_the_child_keeps_going_after_a_refused_spec_and_says_why(tmp_path: Path, capsys) -> None:
    log, out, specs = tmp_path / "run.log", tmp_path / "out.jsonl", tmp_path / "specs.json"
    specs.write_text('[{"name": "a", "progress": "measuring a ..."}, {"name": "b"}, {"name": "c"}]')
    log.write_text("earlier variant: Error that is not b's\n")

    def measure(spec):
        if spec["name"] == "b":
            with log.open("a") as f:
                f.write("INFO loading\nValueError: TP size 4 must divide 9 heads\n")
            raise RuntimeError("Engine core initialization failed")
        return {"ran": spec["name"]}

    each_spec(str(specs), str(out), str(log), measure)
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["name"] for e in entries] == ["a", "b", "c"]
    assert entries[0]["result"] == {"ran": "a"} and entries[2]["result"] == {"ran": "c"}
    assert "must divide 9 heads" in entries[1]["error"] and "initialization failed" in entries[1]["error"]
    assert "not b's" not in entries[1]["error"]  # only what this spec logged
    lines = capsys.readouterr().out.splitlines()  # each spec's start, then its progress line if it has one
    assert lines == ["[lab-spec] a", "[lab] measuring a ...", "[lab-spec] b", "[lab-spec] c"]


def test_a_spec_past_its_time_is_killed_and_the_rest_are_left_unstarted(tmp_path: Path, capsys) -> None:
    import time

    from vllm_workshop.isolated import SPEC_START, run_isolated_each

    hang = tmp_path / "hang.py"
    hang.write_text(
        f"import time\nprint({SPEC_START + 'a'!r}, flush=True)\nprint('[lab] measuring a ...', flush=True)\n"
        "time.sleep(600)\n"
    )
    log, specs = tmp_path / "hang.log", [{"name": "a"}, {"name": "b"}]
    started = time.monotonic()
    entries = run_isolated_each(lambda spec, out: [sys.executable, str(hang)], {}, specs, 2, log)
    assert entries == [{"error": "timed out after 2 s"}, None]  # b never started: the caller runs it alone
    assert time.monotonic() - started < 12  # one spec's time, not both
    shown = capsys.readouterr().out
    assert "measuring a ..." in shown and "a: no result after 2 s, stopped" in shown


def test_a_child_stuck_before_its_first_spec_is_killed_too(tmp_path: Path) -> None:
    from vllm_workshop.isolated import run_isolated_each

    stuck = tmp_path / "stuck.py"
    stuck.write_text("import time\ntime.sleep(600)\n")
    entries = run_isolated_each(
        lambda spec, out: [sys.executable, str(stuck)], {}, [{"name": "a"}], 1, tmp_path / "l"
    )
    assert entries == [None]


def test_spec_names_must_be_unique_and_none_is_nothing(tmp_path: Path) -> None:
    from vllm_workshop.isolated import run_isolated_each

    with pytest.raises(ValueError, match="unique"):
        run_isolated_each(lambda s, o: ["true"], {}, [{"name": "a"}, {"name": "a"}], 1, tmp_path / "l")
    assert run_isolated_each(lambda s, o: ["false"], {}, [], 1, tmp_path / "l") == []
