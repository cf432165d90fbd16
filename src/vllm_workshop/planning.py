"""Lane planning: the one place where numbers that differ between the CPU and the GPU lane are derived.

A notebook cell whose numbers depend on the lane (KV cache block size and budget, the preemption override,
tensor/pipeline sizes, the memory share of servers on one device, weight memory after load) asks this module
instead of hard-coding a CPU-lane value. The formulas follow vLLM 0.32's own code; each docstring names the
place it mirrors, and ``tests/test_planning.py`` checks them with GPU-lane inputs.

Model shapes come from ``data/model_shapes.json`` (the ``config.json`` fields of the models the README names,
keyed by hub id, each with its source URL and published parameter count) or from the ``config.json`` of a
local model folder. Entries added to that table are picked up as they are.

What is measured rather than derived on a GPU is marked as an estimate: the activation peak, CUDA graph and
runtime memory vLLM profiles at start-up. :class:`KvPlan` gives a range for the engine's KV capacity
because of them; everything else (block size, bytes per block, blocks from a budget, the override,
divisibility rules) is exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from vllm_workshop.errors import LabError

GIB = 1024**3
MIB = 1024**2

# KV cache block size per lane. CPU: vllm/platforms/cpu.py (CpuPlatform.check_and_update_config sets 128 when
# the user gave no --block-size). CUDA: vllm/config/cache.py (CacheConfig.DEFAULT_BLOCK_SIZE = 16), which the
# FlashAttention backend keeps (Platform.update_block_size_for_backend).
CPU_BLOCK_SIZE = 128
CUDA_BLOCK_SIZE = 16
BLOCK_SIZES = {"cpu": CPU_BLOCK_SIZE, "cuda": CUDA_BLOCK_SIZE}

# vllm/model_executor/layers/vocab_parallel_embedding.py: DEFAULT_VOCAB_PADDING_SIZE
VOCAB_PADDING = 64

# GPU estimates (vLLM measures these at start-up; they are not derivable from the config):
# the CUDA context each process creates before vLLM's memory snapshot, so outside gpu_memory_utilization;
CUDA_CONTEXT_BYTES = 1 * GIB
# memory that is not torch tensors but counts against the budget (cuBLAS/attention workspaces; NCCL and
# custom all-reduce buffers when several GPUs work together);
RUNTIME_BYTES = 512 * MIB
MULTI_GPU_RUNTIME_BYTES = 2 * GIB
# CUDA graphs (vLLM >= 0.21 profiles them and subtracts the estimate; none with enforce_eager).
CUDA_GRAPH_BYTES = 1 * GIB

DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "int8": 1,
}


class PlanningError(LabError):
    """The lane cannot run what was asked (weights do not fit, servers cannot share, no preemption...)."""


class UnknownModelError(PlanningError):
    """A model that is neither in the shape table nor a local folder with a ``config.json``."""


def cdiv(a: int, b: int) -> int:
    """Ceiling division, as vLLM's ``cdiv``."""
    return -(a // -b)


def human_bytes(value: float) -> str:
    """``46080`` -> ``'45.0 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name."""
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


# --------------------------------------------------------------------------------------------- model shapes


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a model: embedding, LM head (0 when tied to the embedding) and the rest.

    ``rest`` splits into ``linear`` (the matrices quantization schemes compress) and ``other`` (norms, biases,
    MoE router: kept in 16 bits by every scheme).
    """

    embedding: int
    lm_head: int
    linear: int
    other: int

    @property
    def rest(self) -> int:
        """Everything but the embedding and the LM head."""
        return self.linear + self.other

    @property
    def total(self) -> int:
        """All parameters (a tied LM head counted once)."""
        return self.embedding + self.lm_head + self.rest


@dataclass(frozen=True)
class ModelShape:
    """The ``config.json`` fields that size a decoder-only model's weights, KV cache and parallel layout."""

    name: str
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    hidden_size: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    tie_word_embeddings: bool
    num_experts: int = 1
    experts_per_token: int = 1
    qkv_bias: bool = False
    max_position_embeddings: int = 0
    torch_dtype: str = "bfloat16"
    num_parameters: int | None = None
    source: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str = "model", source: str = "") -> ModelShape:
        """Read a Hugging Face ``config.json`` dict (Llama, Qwen2, Mistral, Mixtral style)."""
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        experts = int(config.get("num_local_experts") or config.get("num_experts") or 1)
        model_type = str(config.get("model_type", ""))
        return cls(
            name=name,
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            num_hidden_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
            intermediate_size=int(config["intermediate_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            num_experts=experts,
            experts_per_token=int(config.get("num_experts_per_tok") or 1) if experts > 1 else 1,
            # Qwen2 has q/k/v biases without saying so in its config; Llama-style configs say attention_bias.
            qkv_bias=model_type.startswith("qwen2") or bool(config.get("attention_bias", False)),
            max_position_embeddings=int(config.get("max_position_embeddings") or 0),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
            num_parameters=config.get("num_parameters"),
            source=source or str(config.get("source", "")),
        )

    @classmethod
    def from_model_dir(cls, folder: str | Path) -> ModelShape:
        """Read ``config.json`` from a model folder."""
        path = Path(folder).expanduser()
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UnknownModelError(
                f"{path} has no config.json. Fix: prepare the lab model with `make model`, or pass one of: "
                f"{', '.join(known_models())}."
            )
        return cls.from_config(json.loads(config_file.read_text()), name=path.name, source=str(config_file))

    # Names the KV cache lesson (notebook 02) uses.
    @property
    def num_layers(self) -> int:
        """``num_hidden_layers``."""
        return self.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        """``num_key_value_heads``."""
        return self.num_key_value_heads

    @property
    def gqa_group(self) -> int:
        """Query heads sharing one KV head (1: classic multi-head attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    def parameter_counts(self) -> ParameterCounts:
        """Parameters split into embedding, LM head and the rest (from the config alone)."""
        per_layer = _layer_params(self, tensor_parallel_size=1)
        return ParameterCounts(
            embedding=self.vocab_size * self.hidden_size,
            lm_head=0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size,
            linear=self.num_hidden_layers * sum(rows * cols for rows, cols in per_layer.linear),
            other=self.num_hidden_layers * per_layer.other + self.hidden_size,  # + the final norm
        )


@lru_cache(maxsize=1)
def _table() -> dict[str, ModelShape]:
    text = resources.files("vllm_workshop").joinpath("data/model_shapes.json").read_text()
    return {
        name: ModelShape.from_config(fields, name=name)
        for name, fields in json.loads(text).items()
        if isinstance(fields, Mapping)
    }


def known_models() -> dict[str, ModelShape]:
    """Every model of the shape table, by hub id."""
    return dict(_table())


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def model_shape(name: str) -> ModelShape:
    """The shape of a hub id from the table, or of a local model folder (its ``config.json``)."""
    table = _table()
    if name in table:
        return table[name]
    if _looks_local(name):
        return ModelShape.from_model_dir(name)
    raise UnknownModelError(
        f"No shape known for {name!r}. Known hub ids: {', '.join(table)}. Fix: use one of them, a local "
        "model folder with a config.json, or add the model's config.json fields to "
        "src/vllm_workshop/data/model_shapes.json."
    )


def resolve_dtype(dtype: str | None, shape: ModelShape) -> str:
    """The dtype vLLM runs with: ``auto`` is the checkpoint's, and float32 checkpoints are served in bfloat16.

    Mirrors vllm/config/model.py ``_resolve_auto_dtype`` ("Downcast for float32 models").
    """
    if dtype and dtype != "auto":
        dtype_bytes(dtype)
        return dtype
    config_dtype = shape.torch_dtype.lower()
    return "bfloat16" if config_dtype in ("float32", "fp32") else config_dtype


# ------------------------------------------------------------------------------------------ weight memory


@dataclass(frozen=True)
class WeightScheme:
    """How a scheme stores the linear layers' weights; embeddings, LM head, norms and biases stay unquantized.

    ``group_size`` weights share one scale (+ zero point): ``overhead_bits_per_group``. ``channel_scale_bits``
    is a scale per output row (INT8 per channel). ``bits >= 16`` means an unquantized checkpoint: every tensor
    is stored at ``bits``.
    """

    name: str
    bits: float
    group_size: int | None = None
    overhead_bits_per_group: float = 0.0
    channel_scale_bits: float = 0.0
    label: str = ""

    @property
    def quantized(self) -> bool:
        """True when only the linear layers use ``bits`` (the rest stays at the activation dtype)."""
        return self.bits < 16

    @property
    def bytes_per_param(self) -> float:
        """Average bytes per linear weight, group scales included (per-channel scales are per matrix)."""
        overhead = self.overhead_bits_per_group / self.group_size if self.group_size else 0.0
        return (self.bits + overhead) / 8

    def matrix_bytes(self, rows: int, cols: int) -> float:
        """Bytes of one ``rows x cols`` linear weight (``rows`` output channels)."""
        size = rows * cols * self.bits / 8
        if self.group_size:
            size += rows * cdiv(cols, self.group_size) * self.overhead_bits_per_group / 8
        return size + rows * self.channel_scale_bits / 8


SCHEMES = {
    "fp32": WeightScheme("fp32", 32, label="fp32"),
    "bf16": WeightScheme("bf16", 16, label="bf16 / fp16"),
    "fp16": WeightScheme("fp16", 16, label="fp16"),
    # vLLM FP8 (online or W8A8 checkpoints): one byte per weight, one scale per tensor (ignored here).
    "fp8": WeightScheme("fp8", 8, label="FP8 (W8A8)"),
    # compressed-tensors W8A8 INT8: one byte per weight + a float32 scale per output channel.
    "int8": WeightScheme("int8", 8, channel_scale_bits=32, label="INT8 (W8A8 / W8A16)"),
    # The lab's llm-compressor W4A16 variant: symmetric INT4, one 16-bit scale per 64 weights.
    "int4-g64": WeightScheme("int4-g64", 4, 64, 16, label="INT4 W4A16 (g64)"),
    # AWQ / GPTQ: INT4, per 128 weights one fp16 scale + one 4-bit zero point.
    "awq": WeightScheme("awq", 4, 128, 16 + 4, label="INT4 AWQ / GPTQ (g128)"),
    "gptq": WeightScheme("gptq", 4, 128, 16 + 4, label="INT4 GPTQ (g128)"),
    # bitsandbytes NF4, double quantization: an 8-bit absmax per 64 weights (+ a small second-level table).
    "nf4": WeightScheme("nf4", 4, 64, 8.127, label="NF4 (bitsandbytes, double quant)"),
}
SCHEME_ALIASES = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "auto": "bf16",
    "fp32 (reference)": "fp32",
    "bf16 (reference)": "bf16",
    "fp8 (online)": "fp8",
    "w8a8-int8": "int8",
    "w4a16-g64": "int4-g64",
    "gptq-int4": "gptq",
    "bitsandbytes": "nf4",
    "bitsandbytes nf4": "nf4",
}


def weight_scheme(scheme: str | WeightScheme) -> WeightScheme:
    """A scheme by name (``bf16``, ``fp8``, ``int8``, ``awq``, ``nf4``...; notebook variant names work)."""
    if isinstance(scheme, WeightScheme):
        return scheme
    key = SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
    try:
        return SCHEMES[key]
    except KeyError:
        known = ", ".join([*SCHEMES, *SCHEME_ALIASES])
        raise PlanningError(f"unknown weight scheme {scheme!r}; known: {known}") from None


@dataclass(frozen=True)
class _LayerParams:
    linear: tuple[tuple[int, int], ...]  # (rows, cols) of each linear weight on one rank
    other: int  # norms, biases, router on one rank


def kv_heads_per_rank(shape: ModelShape, tensor_parallel_size: int = 1) -> int:
    """KV heads each TP rank holds: split when TP <= KV heads, else replicated (one per rank).

    Mirrors ``max(1, total_num_kv_heads // tp_size)`` in vllm/config/model.py ``get_num_kv_heads``.
    """
    return max(1, shape.num_key_value_heads // tensor_parallel_size)


def _layer_params(shape: ModelShape, tensor_parallel_size: int) -> _LayerParams:
    tp, hidden, hd = tensor_parallel_size, shape.hidden_size, shape.head_dim
    q_rows = shape.num_attention_heads // tp * hd
    kv_rows = kv_heads_per_rank(shape, tp) * hd
    inter = shape.intermediate_size // tp
    linear = [(q_rows, hidden), (kv_rows, hidden), (kv_rows, hidden), (hidden, q_rows)]
    linear += [(inter, hidden), (inter, hidden), (hidden, inter)] * shape.num_experts  # gate, up, down
    other = 2 * hidden  # input and post-attention norms
    if shape.qkv_bias:
        other += q_rows + 2 * kv_rows
    if shape.num_experts > 1:
        other += shape.num_experts * hidden  # router (replicated, not quantized)
    return _LayerParams(tuple(linear), other)


def pp_partitions(num_layers: int, pipeline_parallel_size: int) -> tuple[int, ...]:
    """Layers per pipeline stage, as vllm/distributed/utils.py ``get_pp_indices`` splits them."""
    parts = [num_layers // pipeline_parallel_size] * pipeline_parallel_size
    for i in range(2, num_layers % pipeline_parallel_size + 2):
        parts[-i] += 1
    return tuple(parts)


def stage_weight_bytes(
    shape: ModelShape,
    scheme: str | WeightScheme = "bf16",
    dtype: str = "bfloat16",
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> tuple[int, ...]:
    """Weight bytes one device of each pipeline stage holds after load.

    Quantized schemes keep the embedding, LM head, norms and biases in ``dtype``. The first stage holds the
    embedding, the last the LM head (with tied embeddings, the last stage holds a copy of the embedding as its
    LM head when PP > 1: vllm/model_executor/models/llama.py).
    """
    method = weight_scheme(scheme)
    plain = method.bits / 8 if not method.quantized else dtype_bytes(dtype)
    layer = _layer_params(shape, tensor_parallel_size)
    if method.quantized:
        layer_bytes = sum(method.matrix_bytes(r, c) for r, c in layer.linear) + layer.other * plain
    else:
        layer_bytes = (sum(r * c for r, c in layer.linear) + layer.other) * plain
    vocab_rank = cdiv(shape.vocab_size, VOCAB_PADDING) * VOCAB_PADDING // tensor_parallel_size
    table = vocab_rank * shape.hidden_size * plain  # embedding or LM head of one rank
    stages = pp_partitions(shape.num_hidden_layers, pipeline_parallel_size)
    sizes = []
    for index, layers in enumerate(stages):
        first, last = index == 0, index == len(stages) - 1
        size = layers * layer_bytes
        if first:
            size += table
        if last:
            size += shape.hidden_size * plain  # final norm
            if not shape.tie_word_embeddings or not first:
                size += table
        sizes.append(math.ceil(size))
    return tuple(sizes)


def weight_memory(
    shape: ModelShape,
    scheme: str | WeightScheme = "bf16",
    dtype: str = "bfloat16",
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> int:
    """Weight bytes on the fullest device after load (all of them with TP = PP = 1)."""
    return max(stage_weight_bytes(shape, scheme, dtype, tensor_parallel_size, pipeline_parallel_size))


def weight_memory_for(model: str, scheme: str | WeightScheme = "bf16", dtype: str = "bfloat16") -> int:
    """Planned weight bytes after load for a hub id or a local folder (a hub id has no disk size here)."""
    return weight_memory(model_shape(model), scheme, dtype)


# ------------------------------------------------------------------------------------------- parallelism


def parallel_problems(
    shape: ModelShape, tensor_parallel_size: int, pipeline_parallel_size: int = 1
) -> list[str]:
    """Why vLLM would refuse these parallel sizes for this model (empty when it accepts them).

    Rules: attention heads divisible by TP (vllm/config/model.py ``verify_with_parallel_config``); KV heads
    divisible by TP, or TP divisible by KV heads when they are replicated (the attention layers of
    vllm/model_executor/models/llama.py, qwen2.py, mixtral.py); the padded vocabulary and the MLP width
    divisible by TP (``divide`` in the vocab-parallel embedding and the column-parallel linears);
    PP <= layers.
    """
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    if tp < 1 or pp < 1:
        return [f"tensor_parallel_size ({tp}) and pipeline_parallel_size ({pp}) must be at least 1"]
    problems = []
    heads, kv = shape.num_attention_heads, shape.num_key_value_heads
    if heads % tp:
        problems.append(
            f"Total number of attention heads ({heads}) must be divisible by tensor parallel size ({tp})."
        )
    if kv >= tp and kv % tp:
        problems.append(f"the {kv} KV heads must be divisible by tensor parallel size ({tp}).")
    if kv < tp and tp % kv:
        problems.append(
            f"tensor parallel size ({tp}) must be divisible by the {kv} KV heads to replicate them."
        )
    padded_vocab = cdiv(shape.vocab_size, VOCAB_PADDING) * VOCAB_PADDING
    if padded_vocab % tp:
        problems.append(
            f"the padded vocabulary ({padded_vocab}) must be divisible by tensor parallel size ({tp})."
        )
    if shape.intermediate_size % tp:
        problems.append(
            f"the MLP width ({shape.intermediate_size}) must be divisible by tensor parallel size ({tp})."
        )
    if pp > shape.num_hidden_layers:
        problems.append(
            f"pipeline parallel size ({pp}) is larger than the number of layers ({shape.num_hidden_layers})."
        )
    return problems


@dataclass(frozen=True)
class ParallelPlan:
    """Tensor and pipeline sizes for a number of devices (GPUs, or worker processes on the CPU lane)."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    devices: int
    refused: tuple[tuple[int, str], ...] = ()  # TP sizes <= devices that vLLM would refuse, with the reason

    @property
    def world_size(self) -> int:
        """Devices the plan uses."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def engine_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``vllm.LLM`` / ``settings.engine_kwargs``."""
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
        }


def parallel_plan(shape: ModelShape, devices: int, fill_with_pipeline: bool = True) -> ParallelPlan:
    """The largest TP <= ``devices`` vLLM accepts; PP uses the devices left (``devices // TP``) if asked."""
    if devices < 1:
        raise PlanningError(f"need at least one device, got {devices}")
    refused = tuple(
        (tp, parallel_problems(shape, tp)[0]) for tp in range(2, devices + 1) if parallel_problems(shape, tp)
    )
    tp = max(t for t in range(1, devices + 1) if not parallel_problems(shape, t))
    pp = min(devices // tp, shape.num_hidden_layers) if fill_with_pipeline else 1
    return ParallelPlan(tp, pp, devices, refused)


def refused_tensor_parallel(shape: ModelShape, max_size: int) -> int | None:
    """The smallest TP in ``2..max_size`` vLLM refuses for this model (for the lesson), or None."""
    return next((tp for tp in range(2, max_size + 1) if parallel_problems(shape, tp)), None)


# ---------------------------------------------------------------------------------------- lanes and KV cache


def block_size(device: str) -> int:
    """vLLM's default KV cache block size on a lane (``cpu``: 128, ``cuda``: 16)."""
    try:
        return BLOCK_SIZES[device]
    except KeyError:
        raise PlanningError(f"unknown device {device!r}; known: {', '.join(BLOCK_SIZES)}") from None


def gpu_memory_bytes(index: int = 0) -> int:
    """Total memory of a visible CUDA device, as torch (and so vLLM's memory snapshot) reports it."""
    import torch

    return int(torch.cuda.get_device_properties(index).total_memory)


@dataclass(frozen=True)
class Lane:
    """What the KV cache budget depends on, per lane."""

    device: str
    dtype: str = "auto"
    max_model_len: int = 2048
    kv_cache_gib: int = 2  # CPU: VLLM_CPU_KVCACHE_SPACE, per worker
    gpu_memory_bytes: int = 0  # CUDA: total memory of one device
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    kv_cache_dtype: str = "auto"  # vLLM's --kv-cache-dtype: "auto" stores K and V in the model dtype

    @property
    def block_size(self) -> int:
        """The lane's KV cache block size."""
        return block_size(self.device)

    @classmethod
    def from_settings(cls, settings: Any, gpu_memory: int | None = None, **overrides: Any) -> Lane:
        """The lane of a :class:`~vllm_workshop.settings.LabSettings`; on CUDA, device 0's memory by default.

        ``overrides`` replace fields (e.g. ``max_model_len``).
        """
        memory = 0
        if settings.device == "cuda":
            memory = gpu_memory if gpu_memory is not None else gpu_memory_bytes()
        lane = cls(
            device=settings.device,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            kv_cache_gib=settings.kv_cache_gib,
            gpu_memory_bytes=memory,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager,
        )
        return replace(lane, **overrides)


def kv_bytes_per_token(shape: ModelShape, dtype: str = "bfloat16", tensor_parallel_size: int = 1) -> int:
    """K and V of every layer for one token on one TP rank.

    ``2 * layers * kv_heads_per_rank * head_dim * bytes``: GQA-aware, only the KV heads count, not the query
    heads.
    """
    heads = kv_heads_per_rank(shape, tensor_parallel_size)
    return 2 * shape.num_hidden_layers * heads * shape.head_dim * dtype_bytes(dtype)


def naive_kv_bytes_per_token(shape: ModelShape, dtype: str = "bfloat16") -> int:
    """The common mistake: counting every attention (query) head, as if there were no GQA."""
    return 2 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim * dtype_bytes(dtype)


def page_bytes(shape: ModelShape, block: int, dtype: str, tensor_parallel_size: int = 1) -> int:
    """One layer's KV page on one rank: vllm/v1/kv_cache_interface.py ``AttentionSpec.page_size_bytes``."""
    return block * kv_heads_per_rank(shape, tensor_parallel_size) * 2 * shape.head_dim * dtype_bytes(dtype)


@dataclass(frozen=True)
class Capacity:
    """How much a KV cache budget holds."""

    budget_bytes: int
    bytes_per_token: int
    block_size: int
    tokens: int
    blocks: int
    full_length_sequences: int


def capacity(budget_bytes: int, bytes_per_token: int, max_model_len: int, block_size: int) -> Capacity:
    """Blocks a budget holds (``budget // bytes per block``, as vLLM divides), and full-length sequences."""
    blocks = max(0, budget_bytes) // (bytes_per_token * block_size)
    per_sequence = cdiv(max_model_len, block_size)
    return Capacity(
        budget_bytes, bytes_per_token, block_size, blocks * block_size, blocks, blocks // per_sequence
    )


def default_batch_limits(gpu_memory: int, server: bool = False) -> tuple[int, int]:
    """vLLM's default ``(max_num_batched_tokens, max_num_seqs)`` for a GPU of this size.

    Mirrors vllm/engine/arg_utils.py (defaults by device memory and usage context: ``LLM`` or the API server).
    """
    if gpu_memory >= 160 * GIB:
        return 16384, 1024
    if gpu_memory >= 70 * GIB:
        return (8192 if server else 16384), 1024
    return (2048 if server else 8192), 256


def activation_bytes(
    shape: ModelShape,
    dtype: str = "bfloat16",
    tensor_parallel_size: int = 1,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 256,
) -> int:
    """Estimate of the activation peak vLLM's profile run measures (one rank).

    The profile run (vllm/v1/worker/gpu_model_runner.py ``profile_run``) pushes ``max_num_batched_tokens``
    through the model and samples ``max_num_seqs`` rows of logits. Peak ~ tokens x (gate+up, activation, qkv,
    residual) + float32 logits and their softmax. An estimate: vLLM measures it.
    """
    tp = tensor_parallel_size
    inter = shape.intermediate_size // tp * shape.experts_per_token
    qkv = (shape.num_attention_heads // tp + 2 * kv_heads_per_rank(shape, tp)) * shape.head_dim
    per_token = 3 * inter + qkv + 2 * shape.hidden_size
    logits = max_num_seqs * (shape.vocab_size // tp) * 4 * 2
    return max_num_batched_tokens * per_token * dtype_bytes(dtype) + logits


def gpu_reserve_bytes(
    shape: ModelShape,
    dtype: str,
    gpu_memory: int,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    enforce_eager: bool = False,
    server: bool = False,
) -> int:
    """Estimated non-KV, non-weight memory inside the budget: activation peak + runtime + CUDA graphs."""
    tokens, seqs = default_batch_limits(gpu_memory, server)
    runtime = MULTI_GPU_RUNTIME_BYTES if tensor_parallel_size * pipeline_parallel_size > 1 else RUNTIME_BYTES
    graphs = 0 if enforce_eager else CUDA_GRAPH_BYTES
    return activation_bytes(shape, dtype, tensor_parallel_size, tokens, seqs) + runtime + graphs


@dataclass(frozen=True)
class KvPlan:
    """The KV cache a lane gives a model: blocks, tokens, and (GPU) where the budget comes from.

    ``blocks`` is what vLLM allocates (``num_gpu_blocks``); on the GPU the activation/graph reserve is an
    estimate, so the engine's count lies between ``low_blocks`` (reserve doubled) and ``high_blocks`` (no
    reserve). On the CPU all three are equal: the budget is ``VLLM_CPU_KVCACHE_SPACE``.
    """

    device: str
    block_size: int
    dtype: str
    max_model_len: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    kv_heads_per_rank: int
    stage_layers: tuple[int, ...]
    stage_budgets: tuple[int, ...]  # KV bytes of one device in each pipeline stage
    page_bytes: int  # one layer's KV page on one device
    blocks: int
    low_blocks: int
    high_blocks: int
    requested_bytes: int = 0  # GPU: ceil(total memory x gpu_memory_utilization)
    weight_bytes: int = 0  # GPU: weights on the fullest device
    reserve_bytes: int = 0  # GPU: estimated activation + runtime + CUDA graph memory
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when vLLM can start with this plan."""
        return not self.problems

    @property
    def budget_bytes(self) -> int:
        """KV bytes of the limiting device."""
        return min(self.stage_budgets)

    @property
    def bytes_per_token(self) -> int:
        """KV bytes per token on the device with the most layers."""
        return max(self.stage_layers) * self.page_bytes // self.block_size

    def stage_bytes_per_block(self, stage: int) -> int:
        """Bytes of one block on a device of a pipeline stage (all its layers)."""
        return self.stage_layers[stage] * self.page_bytes

    @property
    def tokens(self) -> int:
        """Token slots of the KV cache (``num_gpu_blocks * block_size``)."""
        return self.blocks * self.block_size

    @property
    def low_tokens(self) -> int:
        """Lower end of the expected token slots."""
        return self.low_blocks * self.block_size

    @property
    def high_tokens(self) -> int:
        """Upper end of the expected token slots."""
        return self.high_blocks * self.block_size

    @property
    def max_concurrency(self) -> float:
        """Requests of ``max_model_len`` at once, as vLLM logs it (vllm/v1/core/kv_cache_utils.py)."""
        return self.blocks / cdiv(self.max_model_len, self.block_size)

    @property
    def logged_tokens(self) -> int:
        """The ``KV cache size: N tokens`` figure of vLLM's start-up log."""
        return int(self.max_concurrency * self.max_model_len)

    @property
    def full_length_sequences(self) -> int:
        """Whole sequences of ``max_model_len`` that fit at once."""
        return self.blocks // cdiv(self.max_model_len, self.block_size)

    @property
    def capacity(self) -> Capacity:
        """The same numbers as a :class:`Capacity` (for the notebook's print-out)."""
        return Capacity(
            self.budget_bytes,
            self.bytes_per_token,
            self.block_size,
            self.tokens,
            self.blocks,
            self.full_length_sequences,
        )

    def describe(self) -> str:
        """One line for a notebook."""
        text = (
            f"{self.device}: {human_bytes(self.budget_bytes)} KV budget per device / "
            f"{human_bytes(self.bytes_per_token)} per token -> {self.blocks} blocks of {self.block_size} = "
            f"{self.tokens:,} tokens, {self.full_length_sequences} sequences of {self.max_model_len}"
        )
        if self.device == "cuda":
            text += (
                f" (from {human_bytes(self.requested_bytes)} requested"
                f" - {human_bytes(self.weight_bytes)} weights"
                f" - ~{human_bytes(self.reserve_bytes)} activations/graphs; expect {self.low_tokens:,}.."
                f"{self.high_tokens:,} tokens)"
            )
        return text + ("" if self.ok else f"; cannot start: {' '.join(self.problems)}")


def kv_plan(
    shape: ModelShape,
    lane: Lane,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    scheme: str | WeightScheme | None = None,
    reserve_bytes: int | None = None,
    server: bool = False,
) -> KvPlan:
    """The KV cache vLLM will allocate for ``shape`` on ``lane``.

    Budget per device: CPU ``VLLM_CPU_KVCACHE_SPACE`` GiB (vllm/platforms/cpu.py sets
    ``kv_cache_memory_bytes`` from it; vllm/v1/worker/cpu_worker.py returns it). GPU:
    ``ceil(total x gpu_memory_utilization)`` (vllm/v1/worker/utils.py ``request_memory``) minus weights and
    the non-KV memory the profile run finds (vllm/v1/worker/gpu_worker.py ``determine_available_memory``;
    estimated here unless ``reserve_bytes`` is given). Blocks: ``budget // (layers x page)`` per device,
    the smallest over pipeline stages (vllm/v1/core/kv_cache_utils.py ``get_kv_cache_config_from_groups``
    and ``get_kv_cache_configs``). ``scheme``: weight scheme (default: unquantized at the lane's dtype).
    """
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    problems = parallel_problems(shape, tp, pp)
    if problems:
        raise PlanningError(f"{shape.name} cannot run with TP={tp} PP={pp}: {' '.join(problems)}")
    dtype = resolve_dtype(lane.dtype, shape)
    block = lane.block_size
    kv_dtype = dtype if lane.kv_cache_dtype == "auto" else lane.kv_cache_dtype
    page = page_bytes(shape, block, kv_dtype, tp)
    layers = pp_partitions(shape.num_hidden_layers, pp)
    requested = weights = reserve = 0
    if lane.device == "cpu":
        budgets = low_budgets = high_budgets = tuple(lane.kv_cache_gib * GIB for _ in layers)
    else:
        if lane.gpu_memory_bytes <= 0:
            raise PlanningError("a CUDA lane needs the device's total memory (gpu_memory_bytes)")
        requested = math.ceil(lane.gpu_memory_bytes * lane.gpu_memory_utilization)
        stages = stage_weight_bytes(shape, scheme or dtype, dtype, tp, pp)
        weights = max(stages)
        if reserve_bytes is None:
            reserve = gpu_reserve_bytes(
                shape, dtype, lane.gpu_memory_bytes, tp, pp, lane.enforce_eager, server
            )
        else:
            reserve = reserve_bytes
        budgets = tuple(requested - w - reserve for w in stages)
        low_budgets = tuple(requested - w - 2 * reserve for w in stages)
        high_budgets = tuple(requested - w for w in stages)

    def blocks_of(per_stage: tuple[int, ...]) -> int:
        return min(max(0, budget) // (n * page) for budget, n in zip(per_stage, layers, strict=True))

    blocks = blocks_of(budgets)
    problems = []
    if min(budgets) <= 0 and lane.device == "cpu":
        problems.append(f"VLLM_CPU_KVCACHE_SPACE={lane.kv_cache_gib} GiB leaves no KV cache.")
    elif min(budgets) <= 0:
        problems.append(
            f"weights ({human_bytes(weights)} per device) and ~{human_bytes(reserve)} of activations/graphs "
            f"leave no KV cache in the {human_bytes(requested)} vLLM may use "
            f"(gpu_memory_utilization={lane.gpu_memory_utilization} of {human_bytes(lane.gpu_memory_bytes)})."
        )
    elif blocks - 1 < cdiv(lane.max_model_len, block):  # vLLM keeps one null block out of the pool
        problems.append(
            f"{blocks} blocks of {block} cannot hold one sequence of max_model_len={lane.max_model_len} "
            "(vLLM refuses to start: lower max_model_len or give the KV cache more memory)."
        )
    return KvPlan(
        device=lane.device,
        block_size=block,
        dtype=dtype,
        max_model_len=lane.max_model_len,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        kv_heads_per_rank=kv_heads_per_rank(shape, tp),
        stage_layers=layers,
        stage_budgets=budgets,
        page_bytes=page,
        blocks=blocks,
        low_blocks=blocks_of(low_budgets),
        high_blocks=blocks_of(high_budgets),
        requested_bytes=requested,
        weight_bytes=weights,
        reserve_bytes=reserve,
        problems=tuple(problems),
    )


# -------------------------------------------------------------------------------------------- preemption


@dataclass(frozen=True)
class PreemptionPlan:
    """A KV cache small enough that concurrent requests preempt each other, big enough that each finishes."""

    block_size: int
    num_gpu_blocks_override: int
    max_model_len: int
    max_new_tokens: int
    prompt_tokens: tuple[int, ...]
    first_wave: int  # requests the scheduler admits together at the start
    first_wave_peak_blocks: int  # blocks they need together at their longest
    max_num_seqs: int = 256

    @property
    def usable_blocks(self) -> int:
        """Blocks requests can use: vLLM's block pool keeps one as null block (vllm/v1/core/block_pool.py)."""
        return self.num_gpu_blocks_override - 1

    @property
    def usable_tokens(self) -> int:
        """Token slots requests can use."""
        return self.usable_blocks * self.block_size

    def engine_kwargs(self) -> dict[str, int]:
        """Keyword arguments for the squeezed engine (the block size explicit, so the override means what
        it was planned for whatever attention backend the engine picks)."""
        return {
            "num_gpu_blocks_override": self.num_gpu_blocks_override,
            "block_size": self.block_size,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
        }

    def describe(self) -> str:
        """One line for a notebook."""
        return (
            f"KV cache: {self.num_gpu_blocks_override} blocks x {self.block_size} tokens "
            f"({self.usable_tokens} usable after vLLM's null block); the longest request needs "
            f"{max(self.prompt_tokens) + self.max_new_tokens} tokens alone; the first {self.first_wave} "
            f"requests together grow to {self.first_wave_peak_blocks} blocks, so some must be preempted"
        )


def preemption_plan(
    block_size: int,
    prompt_tokens: Sequence[int],
    max_new_tokens: int,
    max_model_len: int,
    max_num_seqs: int = 256,
    shared_prefix_tokens: int = 0,
) -> PreemptionPlan:
    """``num_gpu_blocks_override`` for the preemption lesson, from the lane's block size and the requests.

    The smallest override such that: the engine starts (usable blocks hold ``max_model_len``, vLLM's
    ``_check_enough_kv_cache_memory``); every request fits alone (so a preempted request finishes when it runs
    again); the requests the FCFS scheduler admits together at the start need more blocks than exist before
    they finish (so preemption happens). Requests are assumed to generate exactly ``max_new_tokens``
    (``ignore_eos``). ``shared_prefix_tokens``: a prompt prefix all requests share, when prefix caching is on
    (its full blocks are stored once).
    """
    prompts = tuple(int(p) for p in prompt_tokens)
    if len(prompts) < 2:
        raise PlanningError("preemption needs at least two concurrent requests")
    longest = max(prompts) + max_new_tokens
    if longest > max_model_len:
        raise PlanningError(
            f"a request of {longest} tokens does not fit max_model_len={max_model_len}: it would stop early. "
            f"Fix: max_model_len >= {longest}."
        )
    shared = shared_prefix_tokens // block_size if shared_prefix_tokens else 0

    def distinct(blocks: list[int]) -> int:  # blocks of requests admitted together, shared prefix stored once
        return blocks[0] + sum(b - shared for b in blocks[1:]) if blocks else 0

    # Alone, a request must fit with one spare slot (async scheduling may allocate a step ahead).
    alone = max(cdiv(p + max_new_tokens + 1, block_size) for p in prompts)
    usable = max(alone, cdiv(max_model_len, block_size))
    limit = distinct([cdiv(p + max_new_tokens, block_size) for p in prompts[:max_num_seqs]])
    while usable < limit:
        wave = 0
        while wave < min(len(prompts), max_num_seqs):
            if distinct([cdiv(p, block_size) for p in prompts[: wave + 1]]) > usable:
                break
            wave += 1
        # At its longest a request holds prompt + max_new_tokens - 1 tokens (the last one is never fed back).
        peak = distinct([cdiv(p + max_new_tokens - 1, block_size) for p in prompts[:wave]])
        if wave >= 2 and peak > usable:
            return PreemptionPlan(
                block_size, usable + 1, max_model_len, max_new_tokens, prompts, wave, peak, max_num_seqs
            )
        usable += 1
    raise PlanningError(
        f"{len(prompts)} requests of {min(prompts)}..{max(prompts)} prompt tokens + {max_new_tokens} new "
        f"tokens never run out of blocks of {block_size}: add requests or raise max_new_tokens."
    )


def common_prefix_length(token_ids: Sequence[Sequence[int]]) -> int:
    """Tokens all prompts start with (a chat template's system prompt): prefix caching stores them once."""
    if not token_ids:
        return 0
    first = token_ids[0]
    length = min(len(ids) for ids in token_ids)
    for index in range(length):
        if any(ids[index] != first[index] for ids in token_ids):
            return index
    return length


# ---------------------------------------------------------------------------------- servers sharing a device


def shared_device_problems(
    utilizations: Sequence[float], gpu_memory: int, context_bytes: int = CUDA_CONTEXT_BYTES
) -> list[str]:
    """Why servers started one after the other on one GPU with these ``gpu_memory_utilization`` values fail.

    vLLM checks at start-up that the free memory covers ``ceil(total x utilization)``
    (vllm/v1/worker/utils.py ``request_memory``); each running server holds that plus its CUDA context.
    """
    problems = []
    used = 0
    for number, utilization in enumerate(utilizations, 1):
        if not 0 < utilization <= 1:
            problems.append(f"server {number}: gpu_memory_utilization={utilization} is not in (0, 1].")
            continue
        requested = math.ceil(gpu_memory * utilization)
        free = gpu_memory - used - context_bytes
        if free < requested:
            problems.append(
                f"server {number} asks for gpu_memory_utilization={utilization} ({human_bytes(requested)}) "
                f"but only {human_bytes(max(free, 0))} of {human_bytes(gpu_memory)} are free once the "
                "servers before it run: vLLM refuses to start it (Free memory on device ... is less than "
                "desired GPU memory utilization)."
            )
        used += requested + context_bytes
    return problems


@dataclass(frozen=True)
class MemoryShare:
    """``gpu_memory_utilization`` for each of several servers on one device, and the KV cache each gets."""

    servers: int
    gpu_memory_utilization: float
    gpu_memory_bytes: int
    kv: KvPlan

    def engine_kwargs(self) -> dict[str, float]:
        """Keyword arguments (or ``serve_args`` overrides) for each server."""
        return {"gpu_memory_utilization": self.gpu_memory_utilization}


def memory_share(
    shape: ModelShape,
    servers: int,
    gpu_memory: int,
    max_model_len: int,
    dtype: str = "auto",
    scheme: str | WeightScheme | None = None,
    enforce_eager: bool = False,
    context_bytes: int = CUDA_CONTEXT_BYTES,
    reserve_bytes: int | None = None,
) -> MemoryShare:
    """Split one GPU between ``servers`` copies of a model; :class:`PlanningError` when they cannot fit.

    Each server gets ``floor(100 x (total / servers - CUDA context) / total) / 100``, so all of them start
    (:func:`shared_device_problems`), and must still hold its weights and a KV cache for one sequence of
    ``max_model_len``.
    """
    if servers < 1:
        raise PlanningError(f"need at least one server, got {servers}")
    utilization = math.floor(100 * (gpu_memory // servers - context_bytes) / gpu_memory) / 100
    if utilization <= 0:
        raise PlanningError(
            f"{servers} servers cannot share {human_bytes(gpu_memory)}: no memory left for any."
        )
    lane = Lane("cuda", dtype, max_model_len, gpu_memory_bytes=gpu_memory, gpu_memory_utilization=utilization)
    lane = replace(lane, enforce_eager=enforce_eager)
    plan = kv_plan(shape, lane, scheme=scheme, reserve_bytes=reserve_bytes, server=True)
    if not plan.ok:
        raise PlanningError(
            f"{servers} servers of {shape.name} cannot share one {human_bytes(gpu_memory)} GPU: each gets "
            f"gpu_memory_utilization={utilization} ({human_bytes(plan.requested_bytes)}). "
            f"{' '.join(plan.problems)} "
            "Fix: one server per GPU, a smaller or quantized model, or a shorter max_model_len."
        )
    problems = shared_device_problems([utilization] * servers, gpu_memory, context_bytes)
    if problems:  # cannot happen with the share above; kept as a guard against edits of the formula
        raise PlanningError(" ".join(problems))
    return MemoryShare(servers, utilization, gpu_memory, plan)


@dataclass(frozen=True)
class ReplicaPlan:
    """How ``replicas`` local servers of one model share this machine (module 6's two backends)."""

    engine_overrides: tuple[dict[str, Any], ...]
    bindings: tuple[dict[str, str] | None, ...]
    start_together: bool  # CPU: load in parallel; GPU: one after the other (vLLM profiles free memory)
    summary: str


def replica_plan(settings: Any, replicas: int = 2, gpu_memory: int | None = None) -> ReplicaPlan:
    """Per-replica engine overrides and CPU core bindings: own cores on the CPU, a memory share on one GPU."""
    from vllm_workshop.settings import cpu_binding

    if settings.device == "cpu":
        bindings = tuple(cpu_binding(i, replicas) for i in range(replicas))
        cores = ", ".join(
            f"replica {i}: cores {b['VLLM_CPU_OMP_THREADS_BIND']}" for i, b in enumerate(bindings)
        )
        return ReplicaPlan(tuple({} for _ in bindings), bindings, True, cores)
    memory = gpu_memory if gpu_memory is not None else gpu_memory_bytes()
    share = memory_share(
        model_shape(settings.model),
        replicas,
        memory,
        settings.max_model_len,
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
    )
    summary = (
        f"{replicas} servers share one {human_bytes(memory)} GPU at gpu_memory_utilization="
        f"{share.gpu_memory_utilization} each"
    )
    return ReplicaPlan(
        tuple(share.engine_kwargs() for _ in range(replicas)), (None,) * replicas, False, summary
    )
