"""Small matplotlib helpers so notebook cells stay about the experiment, not the axes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "inline", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")  # scripts and CI have no display
import matplotlib.pyplot as plt  # noqa: E402


def bars(
    labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, ax: Any = None, color: Any = None
) -> Any:
    """A labelled bar chart with the value printed on each bar."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    drawn = ax.bar(range(len(values)), values, color=color)
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right")
    ax.bar_label(drawn, fmt="%.1f")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.figure.tight_layout()
    return ax


def save(ax: Any, path: str | Path) -> Path:
    """Write the figure of ``ax`` as PNG (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=110)
    return path
