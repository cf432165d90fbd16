"""`make lab` opens JupyterLab on the notebooks: start the same server and list the notebooks over its API."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import requests

from vllm_workshop.server import ManagedServer, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks(tmp_path: Path) -> None:
    port, token = free_port(), "workshop-test"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ServerApp.port={port}",
        f"--ServerApp.root_dir={ROOT / 'notebooks'}",
        f"--IdentityProvider.token={token}",
    ]
    if os.geteuid() == 0:  # containers often run as root; `make lab` passes the same flag there
        command.append("--allow-root")
    with ManagedServer(command, name="jupyterlab", port=port, health_path="/api", log_dir=tmp_path) as lab:
        listing = requests.get(f"{lab.base_url}/api/contents", params={"token": token}, timeout=10)
        listing.raise_for_status()
        names = {item["name"] for item in listing.json()["content"]}
        assert "01-offline-inference.ipynb" in names
        page = requests.get(f"{lab.base_url}/lab", params={"token": token}, timeout=10)
        assert page.status_code == 200 and "JupyterLab" in page.text
        kernels = requests.get(f"{lab.base_url}/api/kernelspecs", params={"token": token}, timeout=10).json()
        assert "python3" in kernels["kernelspecs"]
