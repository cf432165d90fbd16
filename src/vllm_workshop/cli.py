"""Command line for the Makefile and terminal cells: ``python -m vllm_workshop <command>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vllm_workshop.errors import LabError


def _model(args: argparse.Namespace) -> None:
    from vllm_workshop.model import prepare_lab_model

    prepare_lab_model(force=args.force)


def _settings(_: argparse.Namespace) -> None:
    from vllm_workshop.settings import lab_settings

    print(lab_settings().describe())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per task."""
    parser = argparse.ArgumentParser(prog="python -m vllm_workshop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="build the lab model folder once (make model)")
    model.add_argument("--force", action="store_true", help="rebuild even if the marker says it is ready")
    model.set_defaults(func=_model)
    settings = commands.add_parser("settings", help="print the lane settings read from the environment")
    settings.set_defaults(func=_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; workshop errors print their fix and exit 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
