"""KV cache lesson helpers: static vs paged allocation waste, plus the KV arithmetic notebook 02 imports.

The arithmetic itself (bytes per token, capacity of a budget, model shapes) lives in
:mod:`vllm_workshop.planning`, the one place where lane-dependent numbers are derived; the names are
re-exported here because the notebook imports them from this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from vllm_workshop.planning import (
    DTYPE_BYTES,
    GIB,
    Capacity,
    capacity,
    dtype_bytes,
    human_bytes,
    kv_bytes_per_token,
    model_shape,
    naive_kv_bytes_per_token,
)
from vllm_workshop.planning import ModelShape as AttentionShape

__all__ = [
    "DTYPE_BYTES",
    "GIB",
    "REFERENCE_MODELS",
    "AllocationWaste",
    "AttentionShape",
    "Capacity",
    "capacity",
    "dtype_bytes",
    "human_bytes",
    "kv_bytes_per_token",
    "naive_kv_bytes_per_token",
    "paged_allocation",
    "static_allocation",
]

# Published configs (config.json of each model on the Hugging Face hub, via planning's shape table).
REFERENCE_MODELS = tuple(
    model_shape(hub_id)
    for hub_id in (
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.1-70B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
    )
)


@dataclass(frozen=True)
class AllocationWaste:
    """Reserved vs used KV slots for one set of requests."""

    scheme: str
    used_tokens: int
    reserved_tokens: int

    @property
    def waste_percent(self) -> float:
        """Share of reserved slots that hold nothing."""
        return 100.0 * (1 - self.used_tokens / self.reserved_tokens) if self.reserved_tokens else 0.0


def static_allocation(lengths: Iterable[int], max_len: int) -> AllocationWaste:
    """Pre-paged servers reserve ``max_len`` contiguous slots per request, whatever it ends up using."""
    lengths = list(lengths)
    if any(n > max_len for n in lengths):
        raise ValueError("a request is longer than max_len")
    return AllocationWaste("static (reserve max length)", sum(lengths), max_len * len(lengths))


def paged_allocation(lengths: Iterable[int], block_size: int) -> AllocationWaste:
    """PagedAttention hands out fixed-size blocks on demand: only a request's last block is partly empty."""
    lengths = list(lengths)
    reserved = sum(math.ceil(n / block_size) * block_size for n in lengths)
    return AllocationWaste(f"paged (blocks of {block_size})", sum(lengths), reserved)
