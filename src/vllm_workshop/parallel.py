"""A real distributed vLLM run on one machine: tensor / pipeline parallel workers as separate processes.

Each configuration runs in a fresh subprocess (``python -m vllm_workshop.parallel``, through
:func:`vllm_workshop.isolated.run_isolated`), so a configuration that vLLM refuses or that crashes is recorded
with its error, and per-run settings such as CPU thread binding do not leak between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_workshop.isolated import run_isolated
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
    if settings.device == "cpu" and world > 1:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(world)

    def command(out: Path) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "vllm_workshop.parallel",
            "--model",
            settings.model,
            "--dtype",
            settings.dtype,
            "--tp",
            str(tensor_parallel),
            "--pp",
            str(pipeline_parallel),
            "--max-tokens",
            str(max_tokens),
            "--out",
            str(out),
        ]
        return [*args, "--enforce-eager"] if settings.enforce_eager else args

    print(f"TP={tensor_parallel} PP={pipeline_parallel}: {world} worker process(es) ...", flush=True)
    started = time.perf_counter()
    result, error = run_isolated(command, env, timeout_s)
    outcome = "ran" if result is not None else "failed (reason below)"
    print(f"... {outcome} in {time.perf_counter() - started:.0f} s", flush=True)
    if result is None:
        return ParallelRun(tensor_parallel, pipeline_parallel, False, error=error)
    return ParallelRun(tensor_parallel, pipeline_parallel, True, **result)


def _main(argv: list[str] | None = None) -> None:
    """Subprocess entry point: build the engine, time one greedy generate, write JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from vllm import LLM, SamplingParams

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
    started = time.perf_counter() - start
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    llm.chat(chats[:1], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outputs = llm.chat(chats, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {
        "texts": [o.outputs[0].text for o in outputs],
        "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
        "start_s": started,
        "generate_s": elapsed,
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    _main()
