"""KV cache math against values worked out by hand from the published configs."""

from __future__ import annotations

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

BY_NAME = {m.name: m for m in REFERENCE_MODELS}


@pytest.mark.parametrize(
    ("name", "bf16_bytes", "gqa"),
    [
        ("Llama-3.1-8B", 2 * 32 * 8 * 128 * 2, 4),  # 131072 B = 128 KiB
        ("Llama-3.1-70B", 2 * 80 * 8 * 128 * 2, 8),  # 327680 B = 320 KiB
        ("Qwen2.5-7B", 2 * 28 * 4 * 128 * 2, 7),  # 57344 B = 56 KiB
        ("Mixtral-8x7B", 2 * 32 * 8 * 128 * 2, 4),  # experts do not multiply the KV cache
    ],
)
def test_reference_models(name: str, bf16_bytes: int, gqa: int) -> None:
    shape = BY_NAME[name]
    assert kv_bytes_per_token(shape, "bfloat16") == bf16_bytes
    assert naive_kv_bytes_per_token(shape, "bfloat16") == bf16_bytes * gqa
    assert shape.gqa_group == gqa
    assert kv_bytes_per_token(shape, "fp8") == bf16_bytes // 2


def test_lab_model_from_its_config() -> None:
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    shape = AttentionShape.from_config(config, "SmolLM2-135M")
    assert shape.head_dim == 64
    assert kv_bytes_per_token(shape, "float32") == 46080  # 2 * 30 * 3 * 64 * 4
    assert human_bytes(46080) == "45.0 KiB"


def test_head_dim_and_mha_defaults() -> None:
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256, "head_dim": 96}
    shape = AttentionShape.from_config(config)
    assert (shape.num_kv_heads, shape.head_dim, shape.gqa_group) == (4, 96, 1)


def test_capacity_matches_vllm_cpu_start_up_log() -> None:
    # vLLM 0.32 CPU with VLLM_CPU_KVCACHE_SPACE=2 logged "CPU KV cache size: 46,592 tokens" for the lab model.
    cap = capacity(2 * GIB, 46080, max_model_len=2048, block_size=128)
    assert (cap.blocks, cap.tokens, cap.full_length_sequences) == (364, 46592, 22)


def test_capacity_of_a_gpu_budget() -> None:
    cap = capacity(40 * GIB, kv_bytes_per_token(BY_NAME["Llama-3.1-8B"]), max_model_len=8192, block_size=16)
    assert cap.tokens == 327680 and cap.full_length_sequences == 40


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
