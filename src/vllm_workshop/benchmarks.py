"""Serving benchmarks with the field's own tools: ``vllm bench serve`` and GuideLLM, plus a cross-check.

Each run is a subprocess bounded in requests and in time, against any OpenAI-compatible endpoint (a local
``vllm serve``, a gateway in front of it, a cluster Service). Results come back as
:class:`~vllm_workshop.capacity.BenchPoint` rows, so the capacity and cost arithmetic reads them all alike.
The lab's own load generator (:mod:`vllm_workshop.loadgen`) stays for experiments the tools do not shape
(delayed arrivals, labelled request mixes); here it is only the third opinion in the cross-check.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .capacity import BenchPoint, Slo
from .errors import LabError
from .loadgen import LoadRequest, RequestRecord, knee, run_load
from .paths import project_root
from .server import vllm_executable

PERCENTILES = "50,90,99"


class BenchError(LabError):
    """A benchmark could not run or did not finish: no server, a tool that failed, a run over its time."""


@dataclass(frozen=True)
class Workload:
    """Synthetic requests: fixed prompt and output lengths (``ignore_eos``), so every tool sends the same."""

    input_tokens: int = 64
    output_tokens: int = 16
    seed: int = 7


def check_endpoint(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> list[str]:
    """Model ids served at ``base_url`` (``http://host:port``, no ``/v1``); :class:`BenchError` if none."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return [m["id"] for m in json.load(response)["data"]]
    except urllib.error.HTTPError as exc:
        raise BenchError(
            f"{base_url} answered /v1/models with HTTP {exc.code}: check the API key (gateways need one)."
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(
            f"No OpenAI-compatible server answers at {base_url} ({exc}). Start one first (the notebook's "
            "server cell, or `vllm serve`), or pass the right URL."
        ) from exc


def _run(command: list[str], timeout_s: float, env: dict[str, str], what: str) -> str:
    """Run a tool in its own process group; past ``timeout_s`` the whole group (its workers too) is killed.
    A line when it starts and one when it ends: these runs take tens of seconds."""
    print(f"running {what} ...", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise BenchError(
            f"{what} did not finish within {timeout_s:.0f} s: the load is more than the server can serve in "
            "that time (lower the rate or the number of requests), or the server stopped answering."
        ) from exc
    if process.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {process.returncode}):\n{tail}")
    print(f"... done in {time.perf_counter() - started:.0f} s", flush=True)
    return output


def _tool_env(api_key: str | None, tokenizer: str | Path = "") -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if Path(tokenizer).is_dir():  # a local tokenizer: never reach for the hub
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    return env


def _latencies(
    ttft: dict[int, float], tpot: dict[int, float], e2e_ms: dict[int, float], itl_p50: float
) -> dict:
    """The latency fields of a :class:`BenchPoint` from ``{50: .., 90: .., 99: ..}`` percentiles in ms."""
    fields = {
        f"{name}_p{q}_ms": float(values[q])
        for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e_ms))
        for q in (50, 90, 99)
    }
    return {**fields, "itl_p50_ms": float(itl_p50)}


def vllm_bench_point(result: dict[str, Any], label: str, load: float) -> BenchPoint:
    """A :class:`BenchPoint` from the JSON ``vllm bench serve --save-result`` writes (times in ms)."""
    duration = float(result["duration"])
    pct = {
        name: {q: result[f"p{q}_{key}_ms"] for q in (50, 90, 99)}
        for name, key in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2el"))
    }
    return BenchPoint(
        label=label,
        load=load,
        req_s=float(result["request_throughput"]),
        goodput_req_s=float(result.get("request_goodput") or 0.0),
        out_tok_s=float(result["output_throughput"]),
        in_tok_s=float(result["total_input_tokens"]) / duration if duration else 0.0,
        completed=int(result["completed"]),
        errored=int(result["failed"]),
        **_latencies(pct["ttft"], pct["tpot"], pct["e2e"], result["p50_itl_ms"]),
        tool="vllm bench serve",
    )


def vllm_bench(
    base_url: str,
    model: str,
    tokenizer: str | Path,
    workload: Workload,
    requests: int,
    *,
    rate: float = math.inf,
    concurrency: int | None = None,
    slo: Slo | None = None,
    api_key: str | None = None,
    extra_body: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    label: str = "",
    timeout_s: float = 600,
) -> BenchPoint:
    """One ``vllm bench serve`` run: ``requests`` chat requests at ``rate`` req/s (Poisson arrivals; ``inf``
    sends them all at once) with at most ``concurrency`` in flight. Goodput counts requests within ``slo``."""
    if requests < 1:
        raise BenchError("a benchmark needs at least one request")
    check_endpoint(base_url, api_key)
    out = Path(out_dir or project_root() / "artifacts" / "bench")
    out.mkdir(parents=True, exist_ok=True)
    name = label or (f"c{concurrency}" if concurrency else f"r{rate:g}")
    filename = f"vllm-bench-{name}.json".replace(" ", "_")
    command = [
        *vllm_executable(), "bench", "serve",
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", base_url, "--model", model, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--input-len", str(workload.input_tokens),
        "--output-len", str(workload.output_tokens), "--ignore-eos", "--seed", str(workload.seed),
        "--num-prompts", str(requests), "--request-rate", "inf" if math.isinf(rate) else f"{rate:g}",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", PERCENTILES,
        "--save-result", "--save-detailed", "--result-dir", str(out), "--result-filename", filename,
        "--disable-tqdm",
    ]  # fmt: skip
    if concurrency:
        command += ["--max-concurrency", str(concurrency)]
    if slo is not None:
        command += ["--goodput", *slo.goodput_args()]
    if extra_body:
        command += ["--extra-body", json.dumps(extra_body)]
    _run(command, timeout_s, _tool_env(api_key, tokenizer), f"vllm bench serve ({name}, {requests} requests)")
    result = json.loads((out / filename).read_text())
    point = replace(
        vllm_bench_point(result, name, float(concurrency) if concurrency else rate),
        result_path=str(out / filename),
    )
    if point.completed == 0:
        raise BenchError(f"vllm bench serve ({name}): every request failed; see {out / filename}")
    return point


def goodput_at(point: BenchPoint, slo: Slo) -> float:
    """Requests/s of ``point`` that meet ``slo``, recomputed from vLLM's per-request detail.

    vLLM's definition (vllm/benchmarks/serve.py ``calculate_metrics``): a completed request is good when its
    TTFT and its TPOT, ``(latency - ttft) / (output tokens - 1)``, are each within the SLO; goodput is good
    requests over the run's duration. So any SLO can be tried on one run, without sending the load again.
    """
    if not point.result_path:
        raise BenchError(f"{point.label}: no per-request detail (only vllm bench serve runs keep it)")
    result = json.loads(Path(point.result_path).read_text())
    good = 0
    for error, out, ttft, latency in zip(
        result["errors"], result["output_lens"], result["ttfts"], result["latencies"], strict=True
    ):
        if error or not out:
            continue
        tpot = (latency - ttft) / (out - 1) if out > 1 else 0.0
        good += ttft <= slo.ttft_ms / 1000 and tpot <= slo.tpot_ms / 1000
    return good / float(result["duration"])


def rate_sweep(
    base_url: str,
    model: str,
    tokenizer: str | Path,
    workload: Workload,
    rates: Sequence[float],
    requests: int,
    slo: Slo,
    **kwargs: Any,
) -> list[BenchPoint]:
    """``vllm bench serve`` at each rate (Poisson arrivals), ``requests`` each, goodput against ``slo``."""
    return [
        vllm_bench(
            base_url, model, tokenizer, workload, requests, rate=r, slo=slo, label=f"rate {r:g}", **kwargs
        )
        for r in rates
    ]


def guidellm_sweep(
    base_url: str,
    model: str,
    tokenizer: str | Path,
    workload: Workload,
    streams: Sequence[int],
    requests: int,
    *,
    api_key: str | None = None,
    out_dir: str | Path | None = None,
    timeout_s: float = 600,
) -> list[BenchPoint]:
    """GuideLLM's concurrent profile: ``requests`` requests at each number of streams."""
    check_endpoint(base_url, api_key)
    out = Path(out_dir or project_root() / "artifacts" / "bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "guidellm.json"
    path.unlink(missing_ok=True)
    per_level = max(10.0, (timeout_s - 30) / len(streams))  # each level stops in time for the report
    command = guidellm_command(base_url, model, tokenizer, workload, streams, requests, path, per_level)
    what = f"guidellm (streams {list(streams)}, {requests} requests each)"
    _run(command, timeout_s, _guidellm_env(api_key, tokenizer), what)
    return guidellm_points(path)


def guidellm_command(
    base_url: str,
    model: str,
    tokenizer: str | Path,
    workload: Workload,
    streams: Sequence[int],
    requests: int,
    path: Path,
    max_seconds: float = 300,
) -> list[str]:
    """The ``guidellm run`` command line (GuideLLM 0.8's ``kind=...`` options): its concurrent profile, one
    benchmark per entry of ``streams``, each bounded by ``requests`` and ``max_seconds``."""
    return [
        str(Path(sys.executable).with_name("guidellm")), "run",
        "--backend", f"kind=openai_http,target={base_url.rstrip('/')}/v1,model={model},"
        "request_format=/v1/chat/completions,stream=true,validate_backend=false",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
        "--data", f"kind=synthetic_text,prompt_tokens={workload.input_tokens},"
        f"output_tokens={workload.output_tokens}",
        "--profile", "kind=concurrent", "--override", "profile.streams", ",".join(map(str, streams)),
        "--constraint", f"kind=max_requests,count={requests}",
        "--constraint", f"kind=max_duration,seconds={max_seconds:g}",
        "--seed", f"kind=static,value={workload.seed}",
        "--output", f"kind=json,path={path}", "--disable-console",
    ]  # fmt: skip


def _guidellm_env(api_key: str | None, tokenizer: str | Path) -> dict[str, str]:
    env = _tool_env(None, tokenizer)
    # One worker process: on 2 cores GuideLLM's default (up to 10) competes with the server it measures.
    env.update({"GUIDELLM__MAX_WORKER_PROCESSES": "1", "GUIDELLM__LOGGING__CONSOLE_LOG_LEVEL": "WARNING"})
    if api_key:
        env["GUIDELLM__SPEC__BACKEND__API_KEY"] = api_key  # off the command line; masked in the report
    return env


def guidellm_points(path: Path) -> list[BenchPoint]:
    """One :class:`BenchPoint` per benchmark of a GuideLLM JSON report.

    GuideLLM's names differ from vLLM's: its ``time_per_output_token`` includes the first token, while its
    ``inter_token_latency`` (per request, ``(last - first token) / (n - 1)``) is what ``vllm bench serve``
    calls TPOT; that one is used for ``tpot_*`` here. End-to-end latency comes in seconds, the rest in ms.
    """
    report = json.loads(Path(path).read_text())

    def dist(metrics: dict[str, Any], name: str) -> dict[str, Any]:
        return metrics[name]["successful"]

    points = []
    for bench in report["benchmarks"]:
        strategy, metrics = bench["config"]["strategy"], bench["metrics"]
        totals = metrics["request_totals"]
        ttft = dist(metrics, "time_to_first_token_ms")["percentiles"]
        itl = dist(metrics, "inter_token_latency_ms")["percentiles"]
        e2e = dist(metrics, "request_latency")["percentiles"]
        streams = strategy.get("streams")
        points.append(
            BenchPoint(
                label=f"c{streams}" if streams else f"r{strategy.get('rate')}",
                load=float(streams or strategy.get("rate") or 0),
                req_s=float(dist(metrics, "requests_per_second")["mean"]),
                goodput_req_s=math.nan,
                out_tok_s=float(dist(metrics, "output_tokens_per_second")["mean"]),
                in_tok_s=float(dist(metrics, "prompt_tokens_per_second")["mean"]),
                completed=int(totals["successful"]),
                errored=int(totals["errored"]),
                **_latencies(
                    {q: ttft[f"p{q}"] for q in (50, 90, 99)},
                    {q: itl[f"p{q}"] for q in (50, 90, 99)},
                    {q: 1000 * e2e[f"p{q}"] for q in (50, 90, 99)},
                    itl["p50"],
                ),
                tool="GuideLLM",
            )
        )
    return points


def prompts_of_length(tokenizer: Any, count: int, tokens: int) -> list[str]:
    """``count`` distinct prompts of ``tokens`` tokens each (by ``tokenizer``), different from their first
    token on, so prefix caching cannot share them (like the tools' random and synthetic data)."""
    filler = " ".join([FILLER] * (1 + tokens // 8))
    prompts = []
    for i in range(count):
        ids = tokenizer(f"{i} {filler}", add_special_tokens=False)["input_ids"][:tokens]
        prompts.append(tokenizer.decode(ids))
    return prompts


FILLER = "the river carries sand to the sea while the wind moves clouds over hills and towns"


def loadgen_point(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    workload: Workload,
    concurrency: int,
    api_key: str = "none",
) -> BenchPoint:
    """The lab's own load generator at one concurrency: one chat request per prompt, ``ignore_eos``."""
    load = [LoadRequest("own", [{"role": "user", "content": p}], workload.output_tokens) for p in prompts]
    records, wall = run_load(base_url.rstrip("/") + "/v1", model, load, concurrency, api_key)
    return records_point(records, wall, f"c{concurrency}", concurrency)


@dataclass(frozen=True)
class StreamTiming:
    """When a streamed answer's first and last tokens arrived, and in how many separate arrivals."""

    ttft_s: float
    total_s: float
    arrivals: int  # distinct chunk arrival times: 1 means the answer came in one piece (buffered)
    tokens: int

    @property
    def first_share(self) -> float:
        """First-token time as a share of the whole answer's time (near 1: buffered, not streamed)."""
        return self.ttft_s / self.total_s


def stream_timing(
    base_url: str, model: str, prompt: str, max_tokens: int = 48, api_key: str = "none"
) -> StreamTiming:
    """Stream one answer of ``max_tokens`` tokens and time its arrivals, client side."""
    request = LoadRequest("stream", [{"role": "user", "content": prompt}], max_tokens)
    (record,), _ = run_load(base_url.rstrip("/") + "/v1", model, [request], 1, api_key)
    if record.error or record.ttft is None or record.latency is None:
        raise BenchError(f"the streamed request to {base_url} failed: {record.error}")
    arrivals = len({round(t, 3) for t in record.token_times})
    return StreamTiming(record.ttft, record.latency, arrivals, record.tokens)


def records_point(records: Sequence[RequestRecord], wall_s: float, label: str, load: float) -> BenchPoint:
    """A :class:`BenchPoint` from the load generator's per-request records."""
    ok = [r for r in records if r.error is None and r.ttft is not None and r.latency is not None]
    if not ok:
        errors = sorted({str(r.error) for r in records})[:2]
        raise BenchError(f"the load generator got no answer to {len(records)} requests: {errors}")
    ttft = [1000 * r.ttft for r in ok if r.ttft is not None]
    tpot = [1000 * (r.latency - r.ttft) / (r.tokens - 1) for r in ok if r.tokens > 1]  # type: ignore[operator]
    itl = [1000 * gap for r in ok for gap in r.inter_token]
    e2e = [1000 * r.latency for r in ok if r.latency is not None]
    q = lambda v, p: float(np.percentile(v, p)) if v else math.nan  # noqa: E731
    return BenchPoint(
        label=label,
        load=load,
        req_s=len(ok) / wall_s,
        goodput_req_s=math.nan,
        out_tok_s=sum(r.tokens for r in ok) / wall_s,
        in_tok_s=math.nan,
        completed=len(ok),
        errored=len(records) - len(ok),
        **_latencies(*({p: q(v, p) for p in (50, 90, 99)} for v in (ttft, tpot, e2e)), q(itl, 50)),
        tool="lab loadgen",
    )


AGREEMENT_METRICS = ("out_tok_s", "ttft_p50_ms", "tpot_p50_ms", "e2e_p50_ms")


def agreement(points: Sequence[BenchPoint], tolerance: float = 0.25) -> list[dict[str, Any]]:
    """Each metric of each point as a ratio to the first point's, and whether it lies within ``tolerance``."""
    if len(points) < 2:
        raise BenchError("a cross-check needs at least two measurements of the same point")
    reference = points[0]
    rows = []
    for metric in AGREEMENT_METRICS:
        base = getattr(reference, metric)
        row: dict[str, Any] = {"metric": metric, reference.tool: round(base, 1)}
        for point in points[1:]:
            value = getattr(point, metric)
            ratio = value / base if base else math.nan
            row[point.tool] = round(value, 1)
            row[f"{point.tool} / {reference.tool}"] = round(ratio, 2)
            row.setdefault("within", True)
            row["within"] = row["within"] and abs(ratio - 1) <= tolerance
        rows.append(row)
    return rows


def frontier_knee(points: Sequence[BenchPoint]) -> int:
    """Index of the knee of the throughput-latency frontier (output tok/s against p50 end-to-end latency)."""
    return knee([p.load for p in points], [p.out_tok_s for p in points], [p.e2e_p50_ms for p in points])


def frontier_plot(points: Sequence[BenchPoint], title: str, path: str | Path | None = None) -> Any:
    """Output tokens/s (x) against TTFT and TPOT p50 (two panels), one dot per load level, knee ringed."""
    from .plots import plt, save

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    at = frontier_knee(points)
    x = [p.out_tok_s for p in points]
    panels = ((axes[0], "ttft_p50_ms", "TTFT p50 (ms)"), (axes[1], "tpot_p50_ms", "TPOT p50 (ms)"))
    for ax, metric, name in panels:
        y = [getattr(p, metric) for p in points]
        ax.plot(x, y, "o-")
        for p, xi, yi in zip(points, x, y, strict=True):
            ax.annotate(p.label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.scatter([x[at]], [y[at]], s=180, facecolors="none", edgecolors="red", label="knee")
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(name)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        save(axes[0], path)
    return axes


def table(points: Sequence[BenchPoint]) -> list[dict[str, Any]]:
    """Rows for printing: the load, throughput, goodput and latency percentiles of each point."""
    rows = []
    for p in points:
        rows.append(
            {
                "point": p.label,
                "tool": p.tool,
                "requests": p.completed,
                "req/s": round(p.req_s, 2),
                "goodput req/s": "-" if math.isnan(p.goodput_req_s) else round(p.goodput_req_s, 2),
                "out tok/s": round(p.out_tok_s, 1),
                "TTFT p50/p90/p99 ms": f"{p.ttft_p50_ms:.0f} / {p.ttft_p90_ms:.0f} / {p.ttft_p99_ms:.0f}",
                "TPOT p50/p90/p99 ms": f"{p.tpot_p50_ms:.0f} / {p.tpot_p90_ms:.0f} / {p.tpot_p99_ms:.0f}",
                "E2E p50/p90/p99 ms": f"{p.e2e_p50_ms:.0f} / {p.e2e_p90_ms:.0f} / {p.e2e_p99_ms:.0f}",
            }
        )
    return rows


def above_p99(requests: int) -> int:
    """How many of ``requests`` samples lie wholly above their p99 (numpy's linear interpolation puts p99 at
    rank ``0.99 (n - 1)``). Under 100 requests that is only the maximum, which then dominates the p99."""
    return requests - 1 - math.floor(0.99 * (requests - 1))


def save_points(points: Sequence[BenchPoint], path: str | Path, **meta: Any) -> Path:
    """Write points (and ``meta``: workload, SLO, server settings) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, "points": [p.__dict__ for p in points]}
    path.write_text(json.dumps(body, indent=1, default=str))
    return path


def relabel(points: Sequence[BenchPoint], tool: str) -> list[BenchPoint]:
    """The same points with another ``tool`` name (e.g. ``"through LiteLLM"``)."""
    return [replace(p, tool=tool) for p in points]
