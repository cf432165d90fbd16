"""`make gpu-smoke`: every notebook on the GPU lane under nbval, one at a time, with pass/fail and time each.

Not part of CI (CI has no GPU). Run it on a machine with an NVIDIA GPU; it writes ``artifacts/gpu-smoke.json``
and one log per notebook under ``artifacts/gpu-smoke/``, so a GPU run can be recorded in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vllm_workshop.settings import installed_build, lab_settings

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(notebook: Path, cell_timeout: int, log_dir: Path) -> dict[str, object]:
    """nbval over one notebook; returns its name, status, seconds and log path."""
    log = log_dir / f"{notebook.stem}.log"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--nbval-lax",
        "--nbval-current-env",
        f"--nbval-cell-timeout={cell_timeout}",
        f"--timeout={cell_timeout}",
        "-o",
        "testpaths=",
        str(notebook),
    ]
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=cell_timeout * 10)
        status = "pass" if done.returncode == 0 else f"fail (pytest exit {done.returncode})"
        log.write_text(done.stdout + done.stderr)
    except subprocess.TimeoutExpired as exc:
        status = f"fail (timed out after {exc.timeout:.0f} s)"
        log.write_text(f"{exc.stdout or ''}{exc.stderr or ''}")
    seconds = round(time.monotonic() - start)
    return {"notebook": notebook.name, "status": status, "seconds": seconds, "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks, print a table, write the JSON record; exit 1 when any notebook failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell-timeout", type=int, default=1800)
    parser.add_argument("notebooks", nargs="*", help="notebook paths (default: every notebook)")
    args = parser.parse_args(argv)
    settings = lab_settings()
    if settings.device != "cuda":
        print(f"error: the GPU lane needs LAB_DEVICE=cuda and the CUDA vLLM build (has {installed_build()})")
        return 2
    out = ROOT / "artifacts" / "gpu-smoke"
    out.mkdir(parents=True, exist_ok=True)
    notebooks = [Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    rows = []
    for notebook in notebooks:
        print(f"==> {notebook.name} ...", flush=True)
        rows.append(run_notebook(notebook, args.cell_timeout, out))
        print(f"    {rows[-1]['status']} in {rows[-1]['seconds']} s", flush=True)
    gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": gpu,
        "vllm": installed_build(),
        "settings": settings.describe(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("LAB_")},
        "notebooks": rows,
    }
    (ROOT / "artifacts" / "gpu-smoke.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{'notebook':40} {'status':32} seconds")
    for row in rows:
        print(f"{row['notebook']:40} {row['status']:32} {row['seconds']}")
    print(f"\nrecord: {ROOT / 'artifacts' / 'gpu-smoke.json'}")
    return 0 if all(row["status"] == "pass" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
