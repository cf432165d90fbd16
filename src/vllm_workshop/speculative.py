"""Speculative decoding with n-gram prompt lookup: proposals copied from the prompt, verified in one step.

The n-gram proposer looks for the last few generated tokens earlier in the prompt and proposes the tokens that
followed them there; the model checks all proposals in one forward pass and keeps the longest correct prefix.
Output is unchanged (greedy decoding gives the same tokens); speed depends on how often proposals are right,
which is high when the answer copies the prompt (editing, summarising with quotes) and low otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .metrics import engine_metric
from .offline import close_llm, start_llm
from .settings import LabSettings

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}

PASSAGE = (
    "The lighthouse stood on a rock at the edge of the bay. Every night the keeper climbed the one hundred "
    "and twelve steps, trimmed the wick, polished the great lens and lit the lamp. Ships passing in the dark "
    "saw its beam sweep across the water every ten seconds and knew where the rocks were."
)


def copy_prompts(count: int) -> list[str]:
    """Requests whose answers copy the prompt: fix the typos of a given passage (where n-grams help)."""
    typo = PASSAGE.replace("keeper", "keeperr").replace("polished", "pollished")
    return [
        f"Rewrite this text exactly, fixing only the spelling (version {i}):\n\n{typo}" for i in range(count)
    ]


def open_prompts(count: int) -> list[str]:
    """Open-ended requests whose answers share little with the prompt (where n-grams rarely help)."""
    topics = (
        "a dragon who bakes bread",
        "a robot learning to paint",
        "the last tree on a planet",
        "a lost kite",
    )
    return [f"Write a short story about {topics[i % len(topics)]}." for i in range(count)]


@dataclass(frozen=True)
class SpecRun:
    """One generation pass: speed, and the speculative decoding counters (zero without speculation)."""

    label: str
    tokens: int
    seconds: float
    drafts: float
    draft_tokens: float
    accepted_tokens: float
    texts: list[str]

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall-clock second."""
        return self.tokens / self.seconds

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (vLLM's spec_decode_num_accepted_tokens / _draft_tokens)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_per_draft(self) -> float:
        """Tokens gained per verification step beyond the one a normal step makes."""
        return self.accepted_tokens / self.drafts if self.drafts else 0.0


def chat_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """The prompts rendered with the model's chat template (what ``generate`` needs)."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]


def measure(llm: Any, prompts: Sequence[str], max_tokens: int, label: str) -> SpecRun:
    """Greedy ``generate`` of ``prompts`` on ``llm``; the counters are this pass's increase."""
    from vllm import SamplingParams

    def counters() -> tuple[float, float, float]:
        metrics = llm.get_metrics()
        return tuple(  # type: ignore[return-value]
            engine_metric(metrics, f"vllm:spec_decode_num_{name}")
            for name in ("drafts", "draft_tokens", "accepted_tokens")
        )

    llm.generate(list(prompts[:1]), SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    before = counters()
    started = time.perf_counter()
    outputs = llm.generate(
        list(prompts), SamplingParams(temperature=0, max_tokens=max_tokens), use_tqdm=False
    )
    seconds = time.perf_counter() - started
    after = counters()
    drafts, draft_tokens, accepted = (a - b for a, b in zip(after, before, strict=True))
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return SpecRun(
        label, tokens, seconds, drafts, draft_tokens, accepted, [o.outputs[0].text for o in outputs]
    )


def compare(
    settings: LabSettings, workloads: dict[str, list[str]], max_tokens: int, **engine: Any
) -> dict[str, tuple[SpecRun, SpecRun]]:
    """Each workload on an engine without and with n-gram speculation (otherwise the same settings)."""
    results: dict[str, list[SpecRun]] = {name: [] for name in workloads}
    for label, extra in (("baseline", {}), ("ngram", {"speculative_config": dict(NGRAM)})):
        llm = start_llm(settings, **engine, **extra)
        try:
            for name, prompts in workloads.items():
                results[name].append(measure(llm, prompts, max_tokens, f"{name}, {label}"))
        finally:
            close_llm(llm)
    return {name: (runs[0], runs[1]) for name, runs in results.items()}
