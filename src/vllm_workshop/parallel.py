"""A real distributed vLLM run on one machine: tensor / pipeline parallel workers as separate processes.

Configurations run outside the caller (``python -m vllm_workshop.parallel``, through
:mod:`vllm_workshop.isolated`): :func:`run_parallel` one per fresh subprocess, :func:`run_parallel_each`
several in one subprocess (vLLM imported once), each with its own engine and thread binding. A configuration
that vLLM refuses or that crashes is recorded with its error instead of taking the caller down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_workshop.isolated import PROGRESS, each_spec, run_isolated, run_isolated_each
from vllm_workshop.paths import run_log
from vllm_workshop.settings import LabSettings

PROMPTS = (
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "What does a bicycle chain do?",
    "Give one tip for sleeping well.",
)


@dataclass
class ParallelRun:
    """Outcome of one configuration."""

    tensor_parallel: int
    pipeline_parallel: int
    ok: bool
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    start_s: float = 0.0
    generate_s: float = 0.0
    generated_tokens: int = 0
    error: str = ""

    @property
    def label(self) -> str:
        """``TP=3 PP=1``."""
        return f"TP={self.tensor_parallel} PP={self.pipeline_parallel}"

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of the timed generate call."""
        return self.generated_tokens / self.generate_s if self.generate_s else 0.0


def cpu_thread_binding(world_size: int, cores: int | None = None) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each worker one core, round-robin (``0|1|0`` for 3 on 2 cores).

    vLLM's automatic binding wants one NUMA node per worker and refuses several workers on a one-node machine.
    """
    cores = cores or os.cpu_count() or 1
    return "|".join(str(rank % cores) for rank in range(world_size))


def _binding(settings: LabSettings, world: int) -> dict[str, str]:
    """The thread binding of a run with ``world`` workers: vLLM's auto binding for one, one core each else."""
    return (
        {"VLLM_CPU_OMP_THREADS_BIND": cpu_thread_binding(world)}
        if settings.device == "cpu" and world > 1
        else {}
    )


def _arguments(
    settings: LabSettings, tensor_parallel: int, pipeline_parallel: int, max_tokens: int
) -> list[str]:
    args = ["--model", settings.model, "--dtype", settings.dtype, "--tp", str(tensor_parallel)]
    args += ["--pp", str(pipeline_parallel), "--max-tokens", str(max_tokens)]
    return [*args, "--enforce-eager"] if settings.enforce_eager else args


def run_parallel(
    settings: LabSettings,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    max_tokens: int = 24,
    timeout_s: float = 600,
) -> ParallelRun:
    """Run the fixed prompts greedily with the given parallel sizes in a subprocess."""
    env = settings.process_env(binding={})  # vLLM's auto binding splits the cores over the TP ranks
    env["VLLM_LOGGING_LEVEL"] = "WARNING"
    world = tensor_parallel * pipeline_parallel
    env.update(_binding(settings, world))
    args = _arguments(settings, tensor_parallel, pipeline_parallel, max_tokens)
    print(f"TP={tensor_parallel} PP={pipeline_parallel}: {world} worker process(es) ...", flush=True)
    started = time.perf_counter()
    result, error = run_isolated(
        lambda out: [sys.executable, "-m", "vllm_workshop.parallel", *args, "--out", str(out)], env, timeout_s
    )
    outcome = "ran" if result is not None else "failed (reason below)"
    print(f"... {outcome} in {time.perf_counter() - started:.0f} s", flush=True)
    if result is None:
        return ParallelRun(tensor_parallel, pipeline_parallel, False, error=error)
    return ParallelRun(tensor_parallel, pipeline_parallel, True, **result)


def run_parallel_each(
    settings: LabSettings,
    configs: Sequence[tuple[int, int]],
    max_tokens: int = 24,
    timeout_s: float = 600,
) -> dict[tuple[int, int], ParallelRun]:
    """Each ``(tensor_parallel, pipeline_parallel)`` in turn in ONE subprocess (vLLM is imported once), each
    with its own engine and thread binding; one the process never started runs alone (:func:`run_parallel`).
    """
    configs = list(dict.fromkeys(configs))
    env = settings.process_env(binding={})
    env["VLLM_LOGGING_LEVEL"] = "WARNING"
    specs = [
        {
            "name": f"{tp}x{pp}",
            "progress": f"TP={tp} PP={pp}: {tp * pp} worker process(es) ...",
            "args": _arguments(settings, tp, pp, max_tokens),
            "env": _binding(settings, tp * pp),
        }
        for tp, pp in configs
    ]
    log = run_log("parallel")
    print(f"{len(specs)} configurations, one after another in one process (its log: {log})", flush=True)
    command = [sys.executable, "-m", "vllm_workshop.parallel", "--each"]
    entries = run_isolated_each(
        lambda spec, out: [*command, str(spec), str(out), str(log)], env, specs, timeout_s, log
    )
    runs = {}
    for (tp, pp), entry in zip(configs, entries, strict=True):
        if entry is None:
            print(f"TP={tp} PP={pp}: never started by the shared process; running it alone", flush=True)
            runs[tp, pp] = run_parallel(settings, tp, pp, max_tokens, timeout_s)
        elif "error" in entry:
            runs[tp, pp] = ParallelRun(tp, pp, False, error=entry["error"])
        else:
            runs[tp, pp] = ParallelRun(tp, pp, True, **entry["result"])
    return runs


def _each(spec_path: str, out_path: str, log_path: str) -> None:
    """(subprocess) :func:`_generate` each spec with its own thread binding, closing its engine before the
    next."""
    bound = "VLLM_CPU_OMP_THREADS_BIND"
    inherited = os.environ.get(bound)

    def measure(spec: dict[str, Any]) -> dict[str, Any]:
        os.environ.pop(bound, None)
        if inherited is not None:
            os.environ[bound] = inherited
        os.environ.update(spec["env"])  # read by the engine's processes as they start
        started = time.perf_counter()
        try:
            result = _generate(_parser().parse_args([*spec["args"], "--out", "-"]))
        except Exception:
            print(f"{PROGRESS}... failed in {time.perf_counter() - started:.0f} s (reason below)", flush=True)
            raise
        print(f"{PROGRESS}... ran in {time.perf_counter() - started:.0f} s", flush=True)
        return result

    each_spec(spec_path, out_path, log_path, measure)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vllm_workshop.parallel")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--out", required=True)
    return parser


def _generate(args: argparse.Namespace) -> dict[str, Any]:
    """Build the engine, time one greedy generate of the fixed prompts, close the engine."""
    from vllm import LLM, SamplingParams

    from vllm_workshop.offline import close_llm

    start = time.perf_counter()
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=1024,
        enforce_eager=args.enforce_eager,
        seed=0,
        tensor_parallel_size=args.tp,
        pipeline_parallel_size=args.pp,
        distributed_executor_backend="mp",
    )
    try:
        started = time.perf_counter() - start
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
        llm.chat(chats[:1], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outputs = llm.chat(chats, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
    finally:
        close_llm(llm)
    return {
        "texts": [o.outputs[0].text for o in outputs],
        "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
        "start_s": started,
        "generate_s": elapsed,
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
    }


def _main(argv: list[str] | None = None) -> None:
    """Subprocess entry point: ``--each SPEC OUT LOG`` (:func:`run_parallel_each`), else one run whose result
    goes to ``--out`` as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--each"]:
        _each(*argv[1:4])
        return
    args = _parser().parse_args(argv)
    Path(args.out).write_text(json.dumps(_generate(args)))


if __name__ == "__main__":
    _main()
