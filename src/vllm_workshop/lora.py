"""LoRA: train a small adapter for the lab model on the CPU with PEFT, and measure what it changed.

The data is a tiny persona set shipped with the lab (``data/persona.json``: answers in a pirate's voice). The
loss is taken on the answer tokens only (the prompt is masked), the adapter is saved in PEFT's format, which
``vllm serve --enable-lora --lora-modules name=path`` loads as is.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LabError

if TYPE_CHECKING:
    from .planning import ModelShape

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def adapter_parameters(shape: ModelShape, rank: int) -> int:
    """Weights a rank-``rank`` adapter of :data:`TARGET_MODULES` trains: ``r x (d_in + d_out)`` per matrix and
    layer (q_proj hidden -> heads x head_dim, k/v_proj hidden -> KV heads x head_dim, o_proj back)."""
    d = shape.hidden_size
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    sizes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}
    return shape.num_hidden_layers * rank * sum(sum(sizes[m]) for m in TARGET_MODULES)


class LoraError(LabError):
    """An adapter that cannot be trained or loaded as asked."""


def persona_data() -> dict[str, Any]:
    """The shipped persona set: ``train`` and ``heldout`` question/answer pairs and the style ``markers``."""
    return json.loads(resources.files("vllm_workshop").joinpath("data/persona.json").read_text())


def style_score(texts: Sequence[str], markers: Sequence[str]) -> float:
    """Share of ``texts`` that contain at least one of the persona's ``markers`` (case-insensitive)."""
    if not texts:
        raise LoraError("no answers to score")
    return sum(any(m in t.lower() for m in markers) for t in texts) / len(texts)


@dataclass(frozen=True)
class LoraTraining:
    """What one training run did and measured."""

    adapter_dir: Path
    rank: int
    steps: int
    seconds: float
    trainable_params: int
    total_params: int
    first_loss: float
    last_loss: float
    heldout_loss_base: float  # mean answer-token loss on held-out questions, adapter off
    heldout_loss_adapter: float  # the same, adapter on

    @property
    def heldout_perplexity(self) -> tuple[float, float]:
        """Perplexity of the held-out persona answers without and with the adapter."""
        return math.exp(self.heldout_loss_base), math.exp(self.heldout_loss_adapter)


def _examples(tokenizer: Any, pairs: Sequence[dict[str, str]]) -> list[tuple[list[int], int]]:
    """Token ids of each chat (question + answer) and where the answer starts."""
    out = []
    for pair in pairs:
        ask = [{"role": "user", "content": pair["question"]}]
        prompt = tokenizer.apply_chat_template(ask, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*ask, {"role": "assistant", "content": pair["answer"]}], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out.append((tokenizer(full, add_special_tokens=False)["input_ids"], len(prompt_ids)))
    return out


def _batch(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (tokens, start) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, start : len(tokens)] = torch.tensor(tokens[start:])
        mask[row, : len(tokens)] = 1
    return ids, labels, mask


def _mean_loss(model: Any, examples: Sequence[tuple[list[int], int]], pad_id: int) -> float:
    import torch

    with torch.no_grad():
        ids, labels, mask = _batch(examples, pad_id)
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def train_adapter(
    model_dir: str | Path,
    out_dir: str | Path,
    rank: int = 8,
    epochs: int = 3,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> LoraTraining:
    """Train a LoRA adapter (attention projections, ``rank``) on the persona set; save it to ``out_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if rank < 1 or epochs < 1 or batch_size < 1:
        raise LoraError(f"rank, epochs and batch size must be positive (got {rank}, {epochs}, {batch_size})")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise LoraError(
            f"{model_dir} is not a local model folder (no config.json). Training runs on a local folder: "
            "`make model` builds the lab model's; for a hub model, download it, set LAB_MODEL to its folder."
        )
    torch.manual_seed(seed)
    data = persona_data()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(TARGET_MODULES))
    model = get_peft_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    train, heldout = _examples(tokenizer, data["train"]), _examples(tokenizer, data["heldout"])
    with model.disable_adapter():
        heldout_base = _mean_loss(model, heldout, pad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for i in range(0, len(order), batch_size):
            ids, labels, mask = _batch([train[j] for j in order[i : i + batch_size]], pad)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
        if progress:
            elapsed = time.perf_counter() - started
            print(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f} ({elapsed:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    heldout_adapter = _mean_loss(model, heldout, pad)
    out = Path(out_dir)
    model.save_pretrained(out)
    losses_kept = (losses[0], losses[-1], heldout_base, heldout_adapter)
    return LoraTraining(out, rank, len(losses), seconds, trainable, total, *losses_kept)
