"""Module 3 memory math: weight memory per precision, and which GPU holds a model with room for its KV cache.

The formulas live in :mod:`vllm_workshop.planning` (weight schemes, weight memory after load with embeddings
and LM head kept in 16 bits, the GPU budget); this module keeps the names notebook 03 imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_workshop.planning import (
    GIB,
    SCHEMES,
    ModelShape,
    WeightScheme,
    gpu_reserve_bytes,
    kv_bytes_per_token,
    model_shape,
    weight_memory,
)

Precision = WeightScheme

# The precisions of the module 3 tables, in the order the notebook indexes them (1: bf16, 2: FP8, 4: INT4).
PRECISIONS = tuple(SCHEMES[name] for name in ("fp32", "bf16", "fp8", "int8", "awq", "nf4"))

MODEL_IDS = {
    "SmolLM2-135M (lab)": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "Llama-3.1-70B": "meta-llama/Llama-3.1-70B-Instruct",
    "Mixtral-8x7B": "mistralai/Mixtral-8x7B-Instruct-v0.1",
}
# Parameter counts derived from each config (equal to the published counts: tests/test_planning.py checks).
MODEL_PARAMS = {label: model_shape(hub_id).parameter_counts().total for label, hub_id in MODEL_IDS.items()}

# Memory torch reports for one device (GiB), as the notebook's fit table lists them.
GPUS_GIB = {
    "L4 (24 GB)": 22.5,
    "A10G (24 GB)": 22.5,
    "A100 40GB": 39.5,
    "A100/H100 80GB": 79.2,
    "H200 (141 GB)": 139.8,
}


def weight_bytes(params: int, precision: Precision) -> float:
    """Every parameter at the precision's average size (the naive figure; see :func:`model_weight_bytes`)."""
    return params * precision.bytes_per_param


def model_weight_bytes(model: str, precision: Precision) -> int:
    """Weight memory after load of a model of :data:`MODEL_IDS`, embeddings and LM head kept in 16 bits."""
    return weight_memory(shape_for(model), precision)


@dataclass(frozen=True)
class Fit:
    """Whether a model fits a GPU with a KV cache for ``sequences`` x ``context`` tokens."""

    gpu: str
    weights_gib: float
    kv_gib: float
    usable_gib: float
    reserve_gib: float = 1.0

    @property
    def fits(self) -> bool:
        """Weights + KV + activations/graphs/runtime fit the usable memory."""
        return self.weights_gib + self.kv_gib + self.reserve_gib <= self.usable_gib


def gpu_fit(
    shape: ModelShape,
    precision: Precision,
    gpu: str,
    sequences: int = 8,
    context: int = 8192,
    utilization: float = 0.9,
) -> Fit:
    """Fit of a model on one GPU (``gpu_memory_utilization`` of its memory), KV cache in bf16."""
    memory = int(GPUS_GIB[gpu] * GIB)
    kv = sequences * context * kv_bytes_per_token(shape, "bfloat16")
    reserve = gpu_reserve_bytes(shape, "bfloat16", memory)
    return Fit(
        gpu, weight_memory(shape, precision) / GIB, kv / GIB, GPUS_GIB[gpu] * utilization, reserve / GIB
    )


def shape_for(model: str, lab_shape: ModelShape | None = None) -> ModelShape:
    """The shape of a model of :data:`MODEL_IDS` (``lab_shape`` replaces the lab model's)."""
    if model.startswith("SmolLM2") and lab_shape is not None:
        return lab_shape
    return model_shape(MODEL_IDS.get(model, model))
