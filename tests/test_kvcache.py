"""KV cache math of notebook 02 against values worked out by hand from the configs.

The lab model's numbers come from the ``config.json`` of the built model (``make model``), never from the
code's own tables; the reference models' from their published configs (worked out in the comments).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_workshop.kvcache import (
    GIB,
    REFERENCE_MODELS,
    AttentionShape,
    capacity,
    human_bytes,
    kv_bytes_per_token,
    naive_kv_bytes_per_token,
    paged_allocation,
    static_allocation,
)
from vllm_workshop.model import check_model_dir
from vllm_workshop.paths import default_model_dir

BY_NAME = {m.name.split("/")[1].removesuffix("-v0.1").removesuffix("-Instruct"): m for m in REFERENCE_MODELS}


@pytest.fixture(scope="module")
def lab_shape() -> AttentionShape:
    """The built lab model (models/SmolLM2-135M-Instruct); fails, not skips, when it is not built."""
    return AttentionShape.from_model_dir(check_model_dir(default_model_dir()))


@pytest.mark.parametrize(
    ("name", "bf16_bytes", "gqa"),
    [
        ("Llama-3.1-8B", 2 * 32 * 8 * 128 * 2, 4),  # 131072 B = 128 KiB; 32 query heads / 8 KV heads
        ("Llama-3.1-70B", 2 * 80 * 8 * 128 * 2, 8),  # 327680 B = 320 KiB; 64 / 8
        ("Qwen2.5-7B", 2 * 28 * 4 * 128 * 2, 7),  # 57344 B = 56 KiB; 28 / 4
        ("Mixtral-8x7B", 2 * 32 * 8 * 128 * 2, 4),  # experts do not multiply the KV cache
    ],
)
def test_reference_models(name: str, bf16_bytes: int, gqa: int) -> None:
    shape = BY_NAME[name]
    assert kv_bytes_per_token(shape, "bfloat16") == bf16_bytes
    assert naive_kv_bytes_per_token(shape, "bfloat16") == bf16_bytes * gqa
    assert shape.gqa_group == gqa
    assert kv_bytes_per_token(shape, "fp8") == bf16_bytes // 2


def test_notebook_order() -> None:
    # Notebook 02 asserts REFERENCE_MODELS[0] is Llama 3.1 8B (128 KiB per token).
    assert REFERENCE_MODELS[0].name == "meta-llama/Llama-3.1-8B-Instruct"


def test_lab_model_from_its_config(lab_shape: AttentionShape) -> None:
    # SmolLM2-135M: 30 layers, 9 query heads, 3 KV heads, hidden 576 -> head_dim 576 / 9 = 64
    assert (lab_shape.num_layers, lab_shape.num_attention_heads, lab_shape.num_kv_heads) == (30, 9, 3)
    assert (lab_shape.head_dim, lab_shape.gqa_group) == (64, 3)
    assert kv_bytes_per_token(lab_shape, "float32") == 46080  # 2 * 30 * 3 * 64 * 4
    assert naive_kv_bytes_per_token(lab_shape, "float32") == 138240  # 2 * 30 * 9 * 64 * 4
    assert human_bytes(46080) == "45.0 KiB"


def test_capacity_matches_vllm_cpu_start_up_log(lab_shape: AttentionShape) -> None:
    # vLLM 0.32 CPU with VLLM_CPU_KVCACHE_SPACE=2 logged "CPU KV cache size: 46,592 tokens" for the lab model:
    # 2 GiB / (128 tokens x 46080 B) = 364.08 -> 364 blocks = 46,592 tokens; 2048 / 128 = 16 blocks each.
    cap = capacity(2 * GIB, kv_bytes_per_token(lab_shape, "float32"), max_model_len=2048, block_size=128)
    assert (cap.blocks, cap.tokens, cap.full_length_sequences) == (364, 46592, 22)


def test_capacity_of_a_gpu_budget() -> None:
    # 40 GiB / 128 KiB = 327,680 tokens; 8192-token sequences: 327,680 / 8192 = 40
    cap = capacity(40 * GIB, 131072, max_model_len=8192, block_size=16)
    assert (cap.blocks, cap.tokens, cap.full_length_sequences) == (20480, 327680, 40)


def test_static_vs_paged_waste() -> None:
    lengths = [100, 300, 50, 1000]
    static = static_allocation(lengths, max_len=2048)
    assert static.reserved_tokens == 4 * 2048 and static.used_tokens == 1450
    assert static.waste_percent == pytest.approx(100 * (1 - 1450 / 8192))
    paged = paged_allocation(lengths, block_size=16)
    assert paged.reserved_tokens == 112 + 304 + 64 + 1008
    assert paged.waste_percent < 3 < static.waste_percent
    with pytest.raises(ValueError):
        static_allocation([4096], max_len=2048)


def test_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        kv_bytes_per_token(REFERENCE_MODELS[0], "int3")


def test_config_without_head_dim_or_kv_heads(tmp_path: Path) -> None:
    # Multi-head attention (no num_key_value_heads) and an explicit head_dim that is not hidden / heads.
    config = '{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256, "head_dim": 96, '
    config += '"vocab_size": 1000, "intermediate_size": 512}'
    (tmp_path / "config.json").write_text(config)
    shape = AttentionShape.from_model_dir(tmp_path)
    assert (shape.num_kv_heads, shape.head_dim, shape.gqa_group) == (4, 96, 1)
