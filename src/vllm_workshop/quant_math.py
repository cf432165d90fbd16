"""Weight memory per precision, and which GPU holds a model with room left for the KV cache."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_workshop.kvcache import GIB, REFERENCE_MODELS, AttentionShape, kv_bytes_per_token


@dataclass(frozen=True)
class Precision:
    """Storage cost of one weight, including the per-group scales and zero points 4-bit formats carry."""

    name: str
    bits: float
    group_size: int | None = None  # weights sharing one scale (+ zero point)
    overhead_bits_per_group: float = 0.0

    @property
    def bytes_per_param(self) -> float:
        """Average bytes per weight."""
        overhead = self.overhead_bits_per_group / self.group_size if self.group_size else 0.0
        return (self.bits + overhead) / 8


PRECISIONS = (
    Precision("fp32", 32),
    Precision("bf16 / fp16", 16),
    Precision("FP8 (W8A8)", 8),
    Precision("INT8 (W8A8 / W8A16)", 8),
    # 4-bit: one fp16 scale + one 4-bit zero point per 128 weights (AWQ, GPTQ)
    Precision("INT4 AWQ / GPTQ (g128)", 4, 128, 16 + 4),
    # NF4 (bitsandbytes): one absmax per 64 weights, double-quantised to 8 bits (+ a small second-level table)
    Precision("NF4 (bitsandbytes, double quant)", 4, 64, 8.127),
)

MODEL_PARAMS = {
    "SmolLM2-135M (lab)": 134_515_008,
    "Llama-3.1-8B": 8_030_261_248,
    "Llama-3.1-70B": 70_553_706_496,
    "Mixtral-8x7B": 46_702_792_704,
}

GPUS_GIB = {
    "L4 (24 GB)": 22.5,
    "A10G (24 GB)": 22.5,
    "A100 40GB": 39.5,
    "A100/H100 80GB": 79.2,
    "H200 (141 GB)": 139.8,
}


def weight_bytes(params: int, precision: Precision) -> float:
    """Bytes of weights at a precision."""
    return params * precision.bytes_per_param


@dataclass(frozen=True)
class Fit:
    """Whether a model fits a GPU with a KV cache for ``sequences`` x ``context`` tokens."""

    gpu: str
    weights_gib: float
    kv_gib: float
    usable_gib: float

    @property
    def fits(self) -> bool:
        """Weights + KV + 1 GiB of activations and runtime fit the usable memory."""
        return self.weights_gib + self.kv_gib + 1.0 <= self.usable_gib


def gpu_fit(
    params: int,
    precision: Precision,
    shape: AttentionShape,
    gpu: str,
    sequences: int = 8,
    context: int = 8192,
    utilization: float = 0.9,
) -> Fit:
    """Fit of a model on one GPU (``gpu_memory_utilization`` of its memory), KV cache in bf16."""
    usable = GPUS_GIB[gpu] * utilization
    kv = sequences * context * kv_bytes_per_token(shape, "bfloat16") / GIB
    return Fit(gpu, weight_bytes(params, precision) / GIB, kv, usable)


def shape_for(model: str, lab_shape: AttentionShape | None = None) -> AttentionShape:
    """The attention shape of a model in :data:`MODEL_PARAMS`."""
    if model.startswith("SmolLM2"):
        return lab_shape or AttentionShape("SmolLM2-135M", 30, 9, 3, 64)
    return next(m for m in REFERENCE_MODELS if m.name == model)
