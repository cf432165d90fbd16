"""vllm-router in front of vLLM replicas, and what its routing policy does to their prefix caches.

``vllm-router`` (PyPI, a Rust binary) forwards OpenAI requests to workers by a policy. ``round_robin``
alternates; ``cache_aware`` keeps, per worker, a tree of the prompts it sent there and routes a request to the
worker whose tree shares the longest prefix with it (above ``--cache-threshold``), unless the load is out of
balance (``--balance-abs-threshold`` and ``--balance-rel-threshold``), then to the least loaded. It asks the
workers to tokenize each request through their ``/render`` endpoints, which vLLM serves only with
``--enable-scale-out`` (:data:`REPLICA_ARGS`): without it the router has no tokens and no affinity.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import LabError
from .loadgen import Conversation, percentile, run_conversations
from .observe import PrometheusError, query, value
from .server import ManagedServer, free_port

POLICIES = ("round_robin", "cache_aware", "random", "power_of_two", "consistent_hash")
REPLICA_ARGS = ["--enable-scale-out"]  # vLLM's /render endpoints, which cache_aware routing tokenizes with


class RouterServer(ManagedServer):
    """A ``vllm-router`` process; its own metrics are on :attr:`metrics_port` (``/metrics`` on the router
    port is forwarded to a worker)."""

    metrics_port: int
    policy: str


def router_server(
    workers: Sequence[str],
    policy: str,
    port: int | None = None,
    metrics_port: int | None = None,
    extra_args: Sequence[str] = (),
) -> RouterServer:
    """``vllm-router`` over ``workers`` (``http://host:port``) with ``policy``; ready when ``/readiness`` says
    a worker is healthy (it waits for all of them first). Requests time out after 10 minutes."""
    if policy not in POLICIES:
        raise LabError(f"unknown routing policy {policy!r}; vllm-router offers {', '.join(POLICIES)}")
    if not workers:
        raise LabError("the router needs at least one worker URL")
    exe = Path(sys.executable).with_name("vllm-router")
    if not exe.exists():
        raise LabError(f"{exe} is missing: `make install` installs vllm-router (the lab extra)")
    port = port or free_port()
    metrics_port = metrics_port or free_port()
    command = [
        str(exe), "--worker-urls", *workers, "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
        "--worker-startup-timeout-secs", "300", "--worker-startup-check-interval", "1",
        "--health-check-interval-secs", "2", "--request-timeout-secs", "600", "--log-level", "warning",
        *extra_args,
    ]  # fmt: skip
    server = RouterServer(command, name=f"router-{policy}", port=port, health_path="/readiness")
    server.metrics_port = metrics_port
    server.policy = policy
    return server


@dataclass(frozen=True)
class PolicyRun:
    """One workload through one policy, measured by the client and by Prometheus (counter deltas)."""

    policy: str
    workload: str
    requests: int
    errors: int
    prefix_hit_rate: (
        float  # prompt tokens found in the prefix caches / prompt tokens looked up (all replicas)
    )
    ttft_p50_ms: float  # client side, every turn
    ttft_p95_ms: float
    followup_ttft_p50_ms: float  # client side, turns 2 and later (the ones whose history may be cached)
    prom_ttft_p50_ms: float  # histogram_quantile over vLLM's TTFT buckets during the run
    prom_ttft_p95_ms: float
    out_tok_s: float
    per_replica: dict[str, int]  # requests finished per replica (pod label)

    def row(self) -> dict[str, Any]:
        """A table row."""
        out = {k: v for k, v in asdict(self).items() if k != "per_replica"}
        out = {
            k: round(v, 3 if k == "prefix_hit_rate" else 1) if isinstance(v, float) else v
            for k, v in out.items()
        }
        return out | {
            "requests per replica": " / ".join(f"{k} {v}" for k, v in sorted(self.per_replica.items()))
        }


def _counters(prometheus: str, at: float, job: str) -> dict[str, Any]:
    sel = f'{{job="{job}"}}'
    return {
        "hits": value(prometheus, f"sum(vllm:prefix_cache_hits_total{sel})", at),
        "queries": value(prometheus, f"sum(vllm:prefix_cache_queries_total{sel})", at),
        "done": {
            r["metric"].get("pod", "?"): r["value"]
            for r in query(prometheus, f"sum by (pod) (vllm:request_success_total{sel})", at=at)
        },
    }


def settle(scrape_interval_s: float = 1.0) -> float:
    """Wait for two scrapes, so Prometheus holds the counters as they are now; returns the time."""
    time.sleep(2.5 * scrape_interval_s)
    return time.time()


def measure_policy(
    prometheus: str,
    base_url: str,
    policy: str,
    model: str,
    chats: Sequence[Conversation],
    workload: str,
    concurrency: int = 4,
    max_tokens: int = 16,
    job: str = "vllm",
    api_key: str = "none",
    extra_body: dict[str, Any] | None = None,
    one_at_a_time: bool = False,
) -> PolicyRun:
    """Run ``chats`` through ``base_url`` (a router, or a gateway in front of one, routing by ``policy``) and
    read what the replicas did from Prometheus: prefix-cache hit rate, TTFT quantiles and finished requests
    per replica, as counter differences over the run. ``one_at_a_time``: the conversations one after
    another, one request in flight (``concurrency`` is ignored)."""
    start = settle()
    before = _counters(prometheus, start, job)
    url = base_url + "/v1"
    records, wall = run_conversations(
        url, model, chats, concurrency, max_tokens, api_key, extra_body, one_at_a_time=one_at_a_time
    )
    end = settle()
    after = _counters(prometheus, end, job)
    if set(before["done"]) != set(after["done"]):
        raise PrometheusError(
            f"the scraped replicas changed during the run ({sorted(before['done'])} before, "
            f"{sorted(after['done'])} after): counter differences would mix replicas; the client measured "
            f"{len(records)} requests, {sum(r.error is not None for r in records)} failed"
        )
    window = f"{math.ceil(end - start) + 1}s"
    prom_q = {
        q: 1000
        * value(
            prometheus,
            f"histogram_quantile({q}, sum by (le) (increase(vllm:time_to_first_token_seconds_bucket"
            f'{{job="{job}"}}[{window}])))',
            end,
        )
        for q in (0.5, 0.95)
    }
    ok = [r for r in records if r.error is None]
    ttft = [1000 * r.ttft for r in ok if r.ttft is not None]
    followups = [1000 * r.ttft for r in ok if r.ttft is not None and not r.label.endswith("/turn 1")]
    queries = after["queries"] - before["queries"]
    return PolicyRun(
        policy=policy,
        workload=workload,
        requests=len(records),
        errors=len(records) - len(ok),
        prefix_hit_rate=(after["hits"] - before["hits"]) / queries if queries else math.nan,
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p95_ms=percentile(ttft, 95),
        followup_ttft_p50_ms=percentile(followups, 50),
        prom_ttft_p50_ms=prom_q[0.5],
        prom_ttft_p95_ms=prom_q[0.95],
        out_tok_s=sum(r.tokens for r in ok) / wall,
        per_replica={pod: round(n - before["done"].get(pod, 0)) for pod, n in after["done"].items()},
    )


def imbalance(run: PolicyRun) -> float:
    """Share of the requests the busiest replica got (0.5 is an even split over two)."""
    total = sum(run.per_replica.values())
    return max(run.per_replica.values()) / total if total else math.nan
