"""Bad input is named: which file or value is wrong, and how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_workshop import LabError


def test_corrupt_keys_file_names_the_file_and_the_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vllm_workshop.gateway import ensure_keys, gateway_dir

    monkeypatch.setenv("LAB_HOME", str(tmp_path))
    keys = ensure_keys()  # a fresh, valid file
    assert ensure_keys() == keys  # read back unchanged
    path = gateway_dir() / "keys.json"
    path.write_text('{"master": "sk-1", "keys": [{"alias": "learner"')  # cut off mid-write
    with pytest.raises(LabError, match=rf"{path} is not a valid lab key file.*rm {path}"):
        ensure_keys()
    path.write_text('{"master": "sk-1", "keys": [{"alias": "learner", "key": ""}]}')
    with pytest.raises(LabError, match="not a valid lab key file"):
        ensure_keys()


def test_unknown_quantization_scheme_lists_the_known_ones(tmp_path: Path) -> None:
    from vllm_workshop.quantize import SCHEMES, quantize

    with pytest.raises(LabError, match="Unknown quantization scheme 'w3a5'. Known schemes: ") as info:
        quantize(tmp_path, "w3a5")
    assert all(name in str(info.value) for name in SCHEMES)
