"""Module 3: memory math against hand-checked values, and the quantize-load-measure pipeline."""

from __future__ import annotations

import pytest

from vllm_workshop.kvcache import GIB
from vllm_workshop.quant_math import MODEL_PARAMS, PRECISIONS, Precision, gpu_fit, shape_for, weight_bytes
from vllm_workshop.quantize import VariantResult

BY_NAME = {p.name: p for p in PRECISIONS}


def test_bytes_per_param() -> None:
    assert BY_NAME["fp32"].bytes_per_param == 4
    assert BY_NAME["bf16 / fp16"].bytes_per_param == 2
    assert BY_NAME["INT8 (W8A8 / W8A16)"].bytes_per_param == 1
    # 4 bits + (16-bit scale + 4-bit zero point) / 128 weights = 4.15625 bits
    assert BY_NAME["INT4 AWQ / GPTQ (g128)"].bytes_per_param == pytest.approx(4.15625 / 8)
    assert Precision("x", 4, 32, 16).bytes_per_param == pytest.approx(0.5625)


def test_weight_memory_of_real_models() -> None:
    llama8b, llama70b = MODEL_PARAMS["Llama-3.1-8B"], MODEL_PARAMS["Llama-3.1-70B"]
    assert weight_bytes(llama8b, BY_NAME["bf16 / fp16"]) / GIB == pytest.approx(14.96, abs=0.01)
    assert weight_bytes(llama70b, BY_NAME["bf16 / fp16"]) / GIB == pytest.approx(131.4, abs=0.1)
    assert weight_bytes(llama70b, BY_NAME["INT4 AWQ / GPTQ (g128)"]) / GIB == pytest.approx(34.14, abs=0.01)


def test_gpu_fit() -> None:
    bf16, int4 = BY_NAME["bf16 / fp16"], BY_NAME["INT4 AWQ / GPTQ (g128)"]
    shape = shape_for("Llama-3.1-8B")
    on_l4 = gpu_fit(MODEL_PARAMS["Llama-3.1-8B"], bf16, shape, "L4 (24 GB)")
    # 8 x 8192 tokens x 128 KiB = 8 GiB of KV: 15 + 8 + 1 > 20.25 usable
    assert on_l4.kv_gib == pytest.approx(8.0) and not on_l4.fits
    assert gpu_fit(MODEL_PARAMS["Llama-3.1-8B"], int4, shape, "L4 (24 GB)").fits
    seventy = shape_for("Llama-3.1-70B")
    assert not gpu_fit(MODEL_PARAMS["Llama-3.1-70B"], bf16, seventy, "A100/H100 80GB").fits
    assert gpu_fit(MODEL_PARAMS["Llama-3.1-70B"], int4, seventy, "A100/H100 80GB").fits


def test_agreement_measures() -> None:
    ref = VariantResult("ref", True, answer_ids=[[1, 2, 3], [4, 5]])
    same = VariantResult("a", True, answer_ids=[[1, 2, 3], [4, 6]])
    assert same.agreement(ref) == 0.5
    assert same.token_agreement(ref) == pytest.approx(4 / 5)


@pytest.mark.slow
def test_quantize_load_measure_pipeline(settings) -> None:
    from vllm_workshop.quantize import evaluate, quantize

    reference = evaluate(settings, "fp32", settings.model)
    folder = quantize(settings.model, "w8a8-int8")
    int8 = evaluate(settings, "w8a8-int8", folder)
    assert reference.ok and int8.ok, int8.error
    assert int8.disk_mib < 0.5 * reference.disk_mib
    assert 1 < reference.perplexity < int8.perplexity < 2 * reference.perplexity
    assert len(int8.answers) == len(reference.answers) == 8
    assert int8.tokens_per_s > 0
