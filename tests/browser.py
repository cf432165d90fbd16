"""Shared by the browser tests: Debian's Chromium, headless under Playwright; screenshots in artifacts/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def launch_chromium(playwright: Any) -> Any:
    """Headless Chromium (the Debian build `make test` installs), as a learner's browser."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
