"""Shared code for the vllm-workshop notebooks: lanes, the lab model, servers and measurements."""

from vllm_workshop.errors import LabError, ModelNotReadyError, PortInUseError, ServerStartError
from vllm_workshop.settings import LabSettings, lab_settings

__all__ = [
    "LabError",
    "LabSettings",
    "ModelNotReadyError",
    "PortInUseError",
    "ServerStartError",
    "lab_settings",
]
