"""Shared fixtures: the lane settings and the prepared lab model."""

from __future__ import annotations

import pytest

from vllm_workshop import LabSettings, lab_settings
from vllm_workshop.model import check_model_dir


@pytest.fixture(scope="session")
def settings() -> LabSettings:
    """The lane's settings; fails (not skips) when the model is not prepared, since make test prepares it."""
    lab = lab_settings()
    if lab.model_is_local:
        check_model_dir(lab.model)
    return lab
