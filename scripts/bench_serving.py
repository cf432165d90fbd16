"""Serving benchmark with vLLM's own tool: a Poisson request-rate sweep, goodput against an SLO, a plot.

Without --base-url it starts `vllm serve` for the lab settings. It first saturates the server (all requests
at once, --saturate-concurrency in flight) to find its ceiling, then sends Poisson arrivals at the given
fractions of that ceiling. Every run is bounded: --requests per point and --timeout seconds per run.
Writes artifacts/bench/sweep.json and artifacts/bench/frontier.png.

    make bench
    python scripts/bench_serving.py --base-url http://localhost:8000 --model my-model --slo-ttft-ms 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllm_workshop import LabError, lab_settings
from vllm_workshop.benchmarks import Workload, frontier_knee, frontier_plot, rate_sweep, save_points, table
from vllm_workshop.benchmarks import vllm_bench as run_vllm_bench
from vllm_workshop.capacity import Slo, best_goodput
from vllm_workshop.model import resolve_model
from vllm_workshop.offline import format_table
from vllm_workshop.paths import project_root
from vllm_workshop.server import VllmServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    scale = lab_settings().scale
    out = project_root() / "artifacts" / "bench"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", help="server URL, http://host:port (default: start a local vllm serve)")
    parser.add_argument("--model", help="model name at --base-url (default: the first of /v1/models)")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the served model)")
    parser.add_argument("--api-key", help="API key, for a gateway")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    parser.add_argument("--requests", type=int, default=100 * scale, help="requests per point")
    parser.add_argument("--saturate-concurrency", type=int, default=32)
    parser.add_argument("--input-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--slo-ttft-ms", type=float, default=2000)
    parser.add_argument("--slo-tpot-ms", type=float, default=250)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--out", default=str(out))
    return parser.parse_args(argv)


def sweep(base_url: str, model: str, tokenizer: str, args: argparse.Namespace) -> int:
    workload = Workload(args.input_tokens, args.output_tokens)
    slo = Slo(args.slo_ttft_ms, args.slo_tpot_ms)
    common = {"api_key": args.api_key, "out_dir": args.out, "timeout_s": args.timeout}
    print(f"saturating {base_url}: {args.requests} requests, {args.saturate_concurrency} at once", flush=True)
    ceiling = run_vllm_bench(
        base_url, model, tokenizer, workload, args.requests,
        concurrency=args.saturate_concurrency, slo=slo, label="saturated", **common,
    )  # fmt: skip
    rates = [round(f * ceiling.req_s, 2) for f in args.fractions]
    print(f"ceiling {ceiling.req_s:.2f} req/s; Poisson rates {rates}", flush=True)
    points = rate_sweep(base_url, model, tokenizer, workload, rates, args.requests, slo, **common)
    print(format_table(table([*points, ceiling])))
    knee = points[frontier_knee(points)]
    print(f"knee: {knee.label} ({knee.out_tok_s:.1f} output tok/s, E2E p50 {knee.e2e_p50_ms:.0f} ms)")
    try:
        best = best_goodput(points, slo)
        print(f"best goodput at {slo}: {best.goodput_req_s:.2f} req/s at {best.label}")
    except LabError as exc:
        print(f"goodput: {exc}")
    out = Path(args.out)
    meta = {"workload": workload.__dict__, "slo": slo.__dict__, "base_url": base_url, "model": model}
    print(f"results: {save_points([*points, ceiling], out / 'sweep.json', **meta)}")
    frontier_plot(points, f"vllm bench serve, {model}: knee at {knee.label}", out / "frontier.png")
    print(f"plot: {out / 'frontier.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.base_url:
            from vllm_workshop.benchmarks import check_endpoint

            model = args.model or check_endpoint(args.base_url, args.api_key)[0]
            # The served model's own tokenizer (its name is a hub id for a hub model) unless one is given.
            return sweep(args.base_url, model, args.tokenizer or model, args)
        tokenizer = args.tokenizer or resolve_model(lab_settings().model)
        settings = lab_settings()
        print(f"starting vllm serve ({settings.describe()}; {settings.binding_summary()})", flush=True)
        with VllmServer(settings, max_num_seqs=args.saturate_concurrency) as server:
            return sweep(server.base_url, server.served_model_name, tokenizer, args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
