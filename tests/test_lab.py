"""`make lab` opens JupyterLab on the notebooks: its API, and a learner's first cells in Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
from browser import ARTIFACTS, launch_chromium

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


def _make_var(name: str) -> str:
    """A variable as the Makefile defines it (`make print-NAME`)."""
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", f"print-{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _lab_command(port: int, token: str, root: Path) -> list[str]:
    """JupyterLab started with `make lab`'s own flags (read from the Makefile), on a given port and folder."""
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ServerApp.port={port}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        *_make_var("LAB_FLAGS").split(),
    ]


@pytest.mark.slow
def test_a_learner_runs_module_1_in_jupyterlab_in_chromium(tmp_path: Path, monkeypatch) -> None:
    """Module 1 as a learner meets it: JupyterLab in headless Chromium, its first cells run with Shift+Enter
    up to the chat answer; no news popup, vLLM's log in a file, nothing left once the kernel stops."""
    from playwright.sync_api import expect, sync_playwright

    notebook = "01-offline-inference.ipynb"
    root = tmp_path / "notebooks"  # a copy: JupyterLab autosaves, and the repository's notebook stays clean
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / notebook, root / notebook)
    cells = json.loads((root / notebook).read_text())["cells"]
    through = next(i for i, c in enumerate(cells) if "capital of France" in "".join(c["source"])) + 1
    # No user settings of this machine's: what the learner sees comes from the lab's own settings
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path / "user-settings"))
    monkeypatch.setenv("JUPYTERLAB_WORKSPACES_DIR", str(tmp_path / "workspaces"))
    overrides = ROOT / _make_var("LAB_OVERRIDES")  # in this lane's venv
    notification = json.loads(overrides.read_text())["@jupyterlab/apputils-extension:notification"]
    assert notification["fetchNews"] == "false"  # installed by `make install`
    port, token = free_port(), "workshop-browser"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jupyterlab-module1.png"
    shot.unlink(missing_ok=True)
    lab = ManagedServer(
        _lab_command(port, token, root), name="jupyterlab", port=port, health_path="/api", log_dir=tmp_path
    )
    with lab, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{lab.base_url}/lab/tree/{notebook}?token={token}")
            expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=120_000)
            kernel = page.get_by_role("button", name="Python 3 (ipykernel) | Idle")  # the status bar
            expect(kernel).to_be_visible(timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.keyboard.press("Escape")  # command mode, as after clicking a cell's margin
            for _ in range(through):
                page.keyboard.press("Shift+Enter")
                page.wait_for_timeout(150)
            answer = page.locator(".jp-OutputArea-output", has_text="Paris")
            expect(answer.first).to_be_visible(timeout=600_000)
            answer.first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot))
            assert page.get_by_text("official Jupyter news").count() == 0, "the news popup is showing"
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            assert any("vLLM's engine log:" in text for text in outputs), outputs  # one line says where
            assert not any("Traceback" in text for text in outputs), outputs
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"))
            raise
        finally:
            browser.close()
        sessions = requests.get(f"{lab.base_url}/api/sessions", params={"token": token}, timeout=10).json()
        kernel = _kernel(lab.process.pid)
        children = kernel.children(recursive=True)
        engine = [c for c in children if c.name().startswith("VLLM")]
        assert engine, "the kernel runs no vLLM engine: the notebook's engine cell did not run"
        for session in sessions:  # what "Shut Down Kernel" does
            url = f"{lab.base_url}/api/sessions/{session['id']}"
            requests.delete(url, params={"token": token}, timeout=60)
        _, alive = psutil.wait_procs([kernel, *engine], timeout=60)
        assert not alive, [(p.pid, p.name()) for p in alive]
    assert shot.stat().st_size > 20_000


def _kernel(server_pid: int) -> psutil.Process:
    """The notebook's kernel: the ipykernel process JupyterLab started."""
    for process in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ipykernel_launcher" in " ".join(process.cmdline()):
                return process
    raise AssertionError("JupyterLab runs no ipykernel process")
