"""KV cache arithmetic: bytes per token, capacity of a memory budget, and static vs paged allocation waste."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
}


@dataclass(frozen=True)
class AttentionShape:
    """What the KV cache size depends on: layers, KV heads and head size (not the query heads)."""

    name: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str = "model") -> AttentionShape:
        """Read a Hugging Face ``config.json`` dict (Llama, Qwen2, Mistral, Mixtral style)."""
        heads = int(config["num_attention_heads"])
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        return cls(
            name=name,
            num_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads", heads)),
            head_dim=int(head_dim),
        )

    @classmethod
    def from_model_dir(cls, folder: str | Path) -> AttentionShape:
        """Read ``config.json`` from a model folder."""
        path = Path(folder)
        return cls.from_config(json.loads((path / "config.json").read_text()), name=path.name)

    @property
    def gqa_group(self) -> int:
        """Query heads sharing one KV head (1: classic multi-head attention)."""
        return self.num_attention_heads // self.num_kv_heads


# Published configs (config.json of each model on the Hugging Face hub).
REFERENCE_MODELS = (
    AttentionShape("Llama-3.1-8B", num_layers=32, num_attention_heads=32, num_kv_heads=8, head_dim=128),
    AttentionShape("Llama-3.1-70B", num_layers=80, num_attention_heads=64, num_kv_heads=8, head_dim=128),
    AttentionShape("Qwen2.5-7B", num_layers=28, num_attention_heads=28, num_kv_heads=4, head_dim=128),
    AttentionShape("Mixtral-8x7B", num_layers=32, num_attention_heads=32, num_kv_heads=8, head_dim=128),
)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a KV cache dtype name."""
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


def kv_bytes_per_token(shape: AttentionShape, dtype: str = "bfloat16") -> int:
    """K and V, for every layer, for every KV head: ``2 * layers * kv_heads * head_dim * bytes``."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * dtype_bytes(dtype)


def naive_kv_bytes_per_token(shape: AttentionShape, dtype: str = "bfloat16") -> int:
    """The common mistake: counting every attention (query) head, as if there were no GQA."""
    return 2 * shape.num_layers * shape.num_attention_heads * shape.head_dim * dtype_bytes(dtype)


@dataclass(frozen=True)
class Capacity:
    """How much a KV cache budget holds."""

    budget_bytes: int
    bytes_per_token: int
    block_size: int
    tokens: int
    blocks: int
    full_length_sequences: int


def capacity(budget_bytes: int, bytes_per_token: int, max_model_len: int, block_size: int = 16) -> Capacity:
    """Tokens and blocks a budget holds, and how many sequences of ``max_model_len`` fit at once."""
    blocks = budget_bytes // (bytes_per_token * block_size)
    tokens = blocks * block_size
    per_sequence = math.ceil(max_model_len / block_size)
    return Capacity(budget_bytes, bytes_per_token, block_size, tokens, blocks, blocks // per_sequence)


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


def human_bytes(value: float) -> str:
    """``46080`` -> ``'45.0 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")
