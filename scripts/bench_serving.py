"""Serving benchmark: the same load at several concurrencies against an OpenAI-compatible endpoint.

Prints TTFT p50/p99, inter-token latency, throughput and each concurrency's throughput ratio to the first one,
all measured in this run, and saves a plot. Without --base-url it starts `vllm serve` for the lab settings.

    make bench
    python scripts/bench_serving.py --base-url http://localhost:8000/v1 --model my-model --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllm_workshop import LabError, lab_settings
from vllm_workshop.loadgen import LoadRequest, run_load, summarize
from vllm_workshop.offline import format_table
from vllm_workshop.server import VllmServer
from vllm_workshop.workloads import chat_requests


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    scale = lab_settings().scale
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", help="OpenAI base URL (default: start a local vllm serve)")
    parser.add_argument("--model", help="model name at --base-url (default: the first of /v1/models)")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16 * scale, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--plot", default="artifacts/bench-serving.png")
    return parser.parse_args(argv)


def bench(base_url: str, model: str, args: argparse.Namespace) -> list[dict]:
    load = [LoadRequest("bench", chat, args.max_tokens) for chat in chat_requests(args.requests, seed=11)]
    run_load(base_url, model, load[:2], concurrency=2, api_key=args.api_key)  # warm-up
    rows = []
    for concurrency in args.concurrency:
        records, wall = run_load(base_url, model, load, concurrency, api_key=args.api_key)
        row = summarize(records, wall, f"concurrency {concurrency}")
        if row["errors"]:
            first = next(r.error for r in records if r.error)
            raise LabError(f"{row['errors']} requests failed at concurrency {concurrency}: {first}")
        rows.append(row)
        print(
            f"  concurrency {concurrency}: {row['tok/s']} tok/s, TTFT p50 {row['ttft_p50_s']} s", flush=True
        )
    for row in rows:
        row["x vs first"] = round(row["tok/s"] / rows[0]["tok/s"], 2)
    return rows


def plot(rows: list[dict], path: str) -> Path:
    from vllm_workshop.plots import plt, save

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    levels = [int(r["run"].split()[-1]) for r in rows]
    left.plot(levels, [r["tok/s"] for r in rows], marker="o")
    left.set(title="Throughput", xlabel="concurrency", ylabel="generated tokens/s", xscale="log")
    right.plot(levels, [r["ttft_p50_s"] for r in rows], marker="o", label="TTFT p50")
    right.plot(levels, [r["ttft_p99_s"] for r in rows], marker="o", label="TTFT p99")
    right.set(title="Time to first token", xlabel="concurrency", ylabel="seconds", xscale="log")
    right.legend()
    fig.tight_layout()
    return save(left, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.base_url:
            from openai import OpenAI

            model = (
                args.model or OpenAI(base_url=args.base_url, api_key=args.api_key).models.list().data[0].id
            )
            rows = bench(args.base_url, model, args)
        else:
            settings = lab_settings()
            print(f"starting vllm serve ({settings.describe()})", flush=True)
            with VllmServer(settings, max_num_seqs=max(args.concurrency)) as server:
                rows = bench(server.openai_base_url, server.served_model_name, args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"plot: {plot(rows, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
