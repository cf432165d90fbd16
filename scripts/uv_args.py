"""Print the `uv pip install` options that make uv find packages where this machine's pip finds them.

The Makefile installs with uv (four to five times faster than pip here: parallel downloads and bytecode
compilation), but uv does not read pip's configuration. This reads it (`pip config list`: pip.conf files and
PIP_* variables, the later scope winning) and turns the index, find-links, constraint and no-cache settings
into uv's flags, so an install sees the same packages whichever tool runs it. Standard library only: it runs
with the system Python before any venv exists.
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys

# pip's option -> uv's flag (each value of a multi-valued option becomes one flag)
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
# pip applies its config files' [global] section, then [install], then PIP_* variables (the later wins);
# `pip config list` prints the keys sorted instead, so the order is restored here.
SCOPES = ("global", "install", ":env:")
TRUE = {"1", "true", "yes", "on"}


def pip_config(listing: str) -> dict[str, str]:
    """`pip config list` lines (`scope.key='value'`) -> {key: value}, in pip's order of precedence."""
    by_scope: dict[str, dict[str, str]] = {scope: {} for scope in SCOPES}
    for line in listing.splitlines():
        name, sep, value = line.partition("=")
        if not sep or "." not in name:
            continue
        scope, key = name.rsplit(".", 1)
        if scope not in by_scope:
            continue  # options for other pip commands (download, wheel, ...)
        try:
            by_scope[scope][key] = str(ast.literal_eval(value))
        except (SyntaxError, ValueError):
            by_scope[scope][key] = value.strip("'\"")
    found: dict[str, str] = {}
    for scope in SCOPES:
        found.update(by_scope[scope])
    return found


def uv_args(config: dict[str, str]) -> list[str]:
    """uv flags for pip's settings; pip's semantics of picking the best version across all indexes kept."""
    args = ["--index-strategy", "unsafe-best-match", "--native-tls"]
    for key, flag in FLAGS.items():
        for value in config.get(key, "").split():
            args += [flag, value]
    if config.get("no-index", "").lower() in TRUE:
        args.append("--no-index")
    if config.get("no-cache-dir", "").lower() in TRUE:
        args.append("--no-cache")  # PIP_NO_CACHE_DIR=1 (the empty-cache check): an empty cache for uv too
    return args


def main() -> int:
    """Print the flags, shell-quoted, on one line."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    print(shlex.join(uv_args(pip_config(listing))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
