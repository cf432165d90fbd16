"""Errors a learner can act on: each message says what went wrong and the command that fixes it."""


class LabError(RuntimeError):
    """Base class for workshop errors with an actionable message."""


class ModelNotReadyError(LabError):
    """The lab model is missing, half-built or not a Hugging Face model folder."""


class PortInUseError(LabError):
    """A server was asked to listen on a port that another process already holds."""


class ServerStartError(LabError):
    """A server process exited or never became healthy."""


class ClusterNotConfiguredError(LabError):
    """No reachable Kubernetes cluster is configured."""


class SettingsError(LabError):
    """An environment variable that configures the lab holds a value the lab cannot use."""


class VllmArgsError(LabError):
    """A ``vllm serve`` command line that the pinned vLLM's own argument parser rejects."""
