"""Throughput experiments: vLLM at several ``max_num_seqs`` and Hugging Face ``generate`` in static batches.

Both engines get the same prompt strings and generate exactly ``max_tokens`` tokens per request
(``ignore_eos`` / ``min_new_tokens``), so tokens per second compare like for like.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from vllm_workshop.offline import close_llm, start_llm
from vllm_workshop.settings import LabSettings


@dataclass(frozen=True)
class Throughput:
    """One measured run."""

    label: str
    requests: int
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second."""
        return self.generated_tokens / self.seconds

    @property
    def requests_per_s(self) -> float:
        """Finished requests per wall-clock second."""
        return self.requests / self.seconds

    def row(self) -> dict[str, Any]:
        """For :func:`vllm_workshop.offline.format_table`."""
        return {
            "run": self.label,
            "requests": self.requests,
            "tokens": self.generated_tokens,
            "seconds": round(self.seconds, 2),
            "tok/s": round(self.tokens_per_s, 1),
            "req/s": round(self.requests_per_s, 2),
        }


def kv_cache_info(llm: Any) -> dict[str, int]:
    """Block size and number of KV blocks the running engine allocated (what its start-up log reports)."""
    cache = llm.llm_engine.vllm_config.cache_config
    return {
        "block_size": cache.block_size,
        "blocks": cache.num_gpu_blocks,
        "tokens": cache.num_gpu_blocks * cache.block_size,
    }


def measure_generate(
    llm: Any, prompts: list[str], max_tokens: int, label: str, in_flight: int | None = None
) -> tuple[Throughput, list[Any]]:
    """Time ``generate`` of ``prompts``, each making exactly ``max_tokens`` tokens (after a warm-up).

    ``in_flight``: hand the engine that many prompts at a time (the next group once the last is done), so at
    most ``in_flight`` run together on an engine configured for more; default all at once. The warm-up runs
    one group of that size for a few tokens, so the timed run meets no batch shape for the first time.
    """
    from vllm import SamplingParams

    step = in_flight or len(prompts)
    warm_up = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate(prompts[:step], warm_up, use_tqdm=False)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = [
        o
        for i in range(0, len(prompts), step)
        for o in llm.generate(prompts[i : i + step], params, use_tqdm=False)
    ]
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return Throughput(label, len(prompts), tokens, seconds), outputs


def vllm_throughput(
    settings: LabSettings,
    prompts: list[str],
    max_tokens: int,
    max_num_seqs: int,
    label: str | None = None,
    in_flight: int | None = None,
    **engine: Any,
) -> tuple[Throughput, dict[str, int]]:
    """Start an engine with ``max_num_seqs``, time ``generate`` of ``prompts`` (``in_flight`` at a time, as
    :func:`measure_generate`), stop it.

    ``engine`` goes to :func:`~vllm_workshop.offline.start_llm` (engine arguments, or ``binding``).
    """
    llm = start_llm(settings, max_num_seqs=max_num_seqs, **engine)
    try:
        result, _ = measure_generate(
            llm, prompts, max_tokens, label or f"vLLM max_num_seqs={max_num_seqs}", in_flight=in_flight
        )
        return result, kv_cache_info(llm)
    finally:
        close_llm(llm)


def vllm_throughputs(
    settings: LabSettings, prompts: dict[int, list[str]], max_tokens: int, llm: Any = None, **engine: Any
) -> list[Throughput]:
    """One engine (``max_num_seqs`` = the largest level), timed at each level of ``{in_flight: prompts}``.

    The same engine settings at every level, and one engine start instead of one per level. Pass ``llm`` to
    measure an engine you started (and close) yourself, to use it for more afterwards.
    """
    own = llm is None
    if own:
        llm = start_llm(settings, max_num_seqs=max(prompts), **engine)
    results = []
    try:
        for level, batch in prompts.items():
            print(f"{len(batch)} requests, {level} in flight ...", flush=True)
            results.append(
                measure_generate(llm, batch, max_tokens, f"vLLM {level} in flight", in_flight=level)[0]
            )
    finally:
        if own:
            close_llm(llm)
    return results


def load_hf_model(settings: LabSettings) -> tuple[Any, Any, str]:
    """The same model in Hugging Face transformers, on the lane's device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if settings.device == "cuda" else "cpu"
    dtype = torch.float32 if settings.dtype == "float32" else "auto"
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    tokenizer.padding_side = "left"  # decoder-only models pad on the left for batched generation
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).to(device).eval()
    return model, tokenizer, device


def hf_static_generate(
    model: Any, tokenizer: Any, device: str, prompts: list[str], max_tokens: list[int] | int, batch_size: int
) -> tuple[Throughput, list[float]]:
    """Static batching: each batch is padded to its longest prompt and runs until its longest answer is done.

    Returns the throughput and, per request, the time at which its batch returned (its latency when all
    requests arrive at once).
    """
    import torch

    budgets = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    finished_at: list[float] = []
    useful = 0
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        batch, wanted = prompts[first : first + batch_size], budgets[first : first + batch_size]
        inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        longest = max(wanted)
        with torch.inference_mode():
            model.generate(
                **inputs,
                max_new_tokens=longest,
                min_new_tokens=longest,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        useful += sum(wanted)  # tokens a client asked for; the rest of the padded batch is waste
        finished_at += [time.perf_counter() - start] * len(batch)
    seconds = time.perf_counter() - start
    batches = math.ceil(len(prompts) / batch_size)
    label = f"HF static batch={batch_size} ({batches} batches)"
    return Throughput(label, len(prompts), useful, seconds), finished_at


# ------------------------------------------------------------------------ continuous vs static, same engine

# Output lengths of the batching experiment: most answers short, a few long, as in chat traffic.
SHORT_RANGE, LONG_RANGE, LONG_SHARE = (2, 6), (80, 96), 0.10


def output_lengths(n: int, varied: bool = True, seed: int = 0) -> list[int]:
    """Tokens to generate per request.

    ``varied`` draws 90% from 2..6 and 10% from 80..96 (uniform); otherwise every request gets the rounded
    mean of that draw, so both workloads ask for about the same total.
    """
    import random

    rng = random.Random(seed)
    lengths = [
        rng.randint(*LONG_RANGE) if rng.random() < LONG_SHARE else rng.randint(*SHORT_RANGE) for _ in range(n)
    ]
    if varied:
        return lengths
    return [round(sum(lengths) / n)] * n


@dataclass(frozen=True)
class BatchingComparison:
    """Continuous and static batching of one workload on one engine (same threads, same slots)."""

    workload: str
    slots: int
    lengths: tuple[int, ...]
    continuous: Throughput
    static: Throughput

    @property
    def speedup(self) -> float:
        """Useful tokens per second, continuous over static."""
        return self.continuous.tokens_per_s / self.static.tokens_per_s

    @property
    def static_slot_use(self) -> float:
        """Share of the static waves' slot-steps that produced a token (the rest sat idle)."""
        waves = [self.lengths[i : i + self.slots] for i in range(0, len(self.lengths), self.slots)]
        return sum(sum(w) for w in waves) / sum(self.slots * max(w) for w in waves)


def compare_batching(
    llm: Any, prompts: list[str], lengths: list[int], slots: int, workload: str
) -> BatchingComparison:
    """Run the same requests twice on one engine started with ``max_num_seqs=slots``.

    Continuous: all requests submitted at once; the scheduler refills a slot as soon as a request finishes.
    Static: waves of ``slots`` requests, each wave submitted only when the previous one has finished (what a
    server that batches whole requests does). Every request generates exactly its length (``ignore_eos``).
    """
    from vllm import SamplingParams

    if len(prompts) != len(lengths) or len(prompts) <= slots:
        raise ValueError(
            "need one length per prompt and more requests than slots, so that requests must join"
        )
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
    llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    continuous = Throughput("continuous", len(prompts), _generated(outputs), time.perf_counter() - start)
    start, made = time.perf_counter(), 0
    for first in range(0, len(prompts), slots):
        made += _generated(
            llm.generate(prompts[first : first + slots], params[first : first + slots], use_tqdm=False)
        )
    static = Throughput("static waves", len(prompts), made, time.perf_counter() - start)
    return BatchingComparison(workload, slots, tuple(lengths), continuous, static)


def _generated(outputs: list[Any]) -> int:
    return sum(len(o.outputs[0].token_ids) for o in outputs)
