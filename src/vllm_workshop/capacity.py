"""Capacity and cost: SLOs, goodput from benchmark points, replicas, and self-hosting vs an API.

Goodput is the request rate that meets a latency SLO (``vllm bench serve --goodput``); capacity planning
sizes replicas from it, not from raw throughput. Prices come from ``data/prices.json``: dated list prices
with their source, which the learner checks and edits. KV and weight memory come from
:mod:`vllm_workshop.planning`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from vllm_workshop.errors import LabError
from vllm_workshop.planning import (
    GIB,
    Lane,
    kv_bytes_per_token,
    kv_plan,
    model_shape,
    naive_kv_bytes_per_token,
    weight_memory_for,
)

HOURS_PER_MONTH = 730  # 365 x 24 / 12, the figure cloud price pages use


class CapacityError(LabError):
    """A capacity or cost question with inputs that make no sense, or a price table that cannot be read."""


def _number(name: str, value: Any, strict: bool = True, at_most: float = math.inf) -> float:
    """``value`` as a finite float > 0 (``strict``) or >= 0, and <= ``at_most``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (strict and value == 0) or value > at_most:
        span = ("> 0" if strict else ">= 0") + (f" and <= {at_most:g}" if at_most < math.inf else "")
        raise CapacityError(f"{name} must be a number {span}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Slo:
    """Latency objective per request: time to first token and time per output token, in milliseconds."""

    ttft_ms: float
    tpot_ms: float

    def __post_init__(self) -> None:
        _number("Slo.ttft_ms (time to first token, ms)", self.ttft_ms)
        _number("Slo.tpot_ms (time per output token, ms)", self.tpot_ms)

    def goodput_args(self) -> list[str]:
        """Values for ``vllm bench serve --goodput`` (milliseconds): ``['ttft:500', 'tpot:50']``."""
        return [f"ttft:{self.ttft_ms:g}", f"tpot:{self.tpot_ms:g}"]

    def __str__(self) -> str:
        return f"TTFT <= {self.ttft_ms:g} ms, TPOT <= {self.tpot_ms:g} ms"


@dataclass(frozen=True)
class BenchPoint:
    """One load level of a benchmark: ``load`` is the request rate (req/s) or the concurrency."""

    label: str
    load: float
    req_s: float  # completed requests per second
    goodput_req_s: float  # requests per second that met the SLO
    out_tok_s: float
    in_tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    e2e_p50_ms: float
    completed: int
    errored: int = 0
    itl_p50_ms: float = math.nan
    e2e_p99_ms: float = math.nan
    ttft_p90_ms: float = math.nan
    tpot_p90_ms: float = math.nan
    e2e_p90_ms: float = math.nan
    tool: str = ""  # which tool measured it
    result_path: str = ""  # the tool's own result file (per-request detail for vllm bench serve)


def best_goodput(points: Iterable[BenchPoint], slo_name: str | Slo = "") -> BenchPoint:
    """The point with the highest goodput; :class:`CapacityError` when none met the SLO."""
    points = list(points)
    if not points:
        raise CapacityError("no benchmark points: run the load sweep first")
    best = max(points, key=lambda p: p.goodput_req_s)
    if best.goodput_req_s > 0:
        return best
    slo = f"the SLO ({slo_name})" if str(slo_name) else "the SLO"
    raise CapacityError(
        f"No load level met {slo}: the best TTFT p99 seen was {min(p.ttft_p99_ms for p in points):.0f} ms "
        f"and the best TPOT p99 {min(p.tpot_p99_ms for p in points):.1f} ms over {len(points)} points. "
        "Fix: loosen the SLO, or benchmark at a lower load (request rate or concurrency)."
    )


def replicas_needed(target_req_s: float, goodput_per_replica_req_s: float, headroom: float = 0.0) -> int:
    """Replicas serving ``target_req_s`` within the SLO: ``ceil(target x (1 + headroom) / per_replica)``."""
    target = _number("target_req_s", target_req_s, strict=False)
    per_replica = _number("goodput_per_replica_req_s", goodput_per_replica_req_s)
    extra = _number("headroom", headroom, strict=False)
    # round first: float noise (100 x 1.1 / 110 = 1.0000000000000002) must not add a replica
    return math.ceil(round(target * (1 + extra) / per_replica, 9))


@dataclass(frozen=True)
class TokenMix:
    """Tokens of an average request."""

    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            _number(f"TokenMix.{name}", getattr(self, name), strict=False)
        if self.input_tokens + self.output_tokens == 0:
            raise CapacityError("TokenMix needs at least one input or output token per request")


def cost_per_million(usd_per_hour: float, out_tok_s: float, utilization: float) -> float:
    """USD per million output tokens for an instance that makes ``out_tok_s`` at full load and is busy a
    ``utilization`` share of the hours it is paid for."""
    price = _number("usd_per_hour", usd_per_hour, strict=False)
    rate = _number("out_tok_s", out_tok_s)
    busy = _number("utilization (share of the time busy)", utilization, at_most=1)
    return price / (rate * 3600 * busy) * 1e6


# ------------------------------------------------------------------------------------------------ prices


@dataclass(frozen=True)
class InstancePrice:
    """An instance's hourly list price."""

    name: str
    usd_per_hour: float
    accelerator: str = ""
    region: str = ""
    kind: str = ""
    source: str = ""
    as_of: str = ""


@dataclass(frozen=True)
class ApiPrice:
    """A hosted model's list price per million tokens."""

    name: str
    usd_per_m_input: float
    usd_per_m_output: float
    provider: str = ""
    source: str = ""
    as_of: str = ""

    def cost_per_request(self, mix: TokenMix) -> float:
        """USD for one request of ``mix``."""
        return (mix.input_tokens * self.usd_per_m_input + mix.output_tokens * self.usd_per_m_output) / 1e6


@dataclass(frozen=True)
class Prices:
    """The price table: instances, APIs and the note on how old the figures are."""

    instances: tuple[InstancePrice, ...]
    apis: tuple[ApiPrice, ...]
    note: str = ""

    def instance(self, name: str) -> InstancePrice:
        """An instance by name."""
        return _by_name(self.instances, name, "instance")

    def api(self, name: str) -> ApiPrice:
        """An API model by name."""
        return _by_name(self.apis, name, "API model")


_API_PRICES = ("usd_per_m_input", "usd_per_m_output")


def _by_name(entries: Sequence[Any], name: str, what: str) -> Any:
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries)
    raise CapacityError(f"no {what} {name!r} in the price table; known: {known}")


def _entry(cls: type, raw: Any, where: str, price_fields: tuple[str, ...]) -> Any:
    if not isinstance(raw, Mapping) or not raw.get("name"):
        raise CapacityError(f"{where}: each entry must be an object with a name, got {raw!r}")
    where = f"{where} {raw['name']!r}"
    for key in price_fields:
        if key not in raw:
            raise CapacityError(f"{where} has no {key}. Fix: add it from the entry's source page.")
        _number(f"{where}: {key}", raw[key], strict=False)
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in known})


def load_prices(path: str | Path | None = None) -> Prices:
    """Read a price table (default: the packaged ``data/prices.json``)."""
    file = resources.files("vllm_workshop").joinpath("data/prices.json") if path is None else Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise CapacityError(
            f"price table {file} cannot be read ({err.strerror}). Fix: pass a prices.json"
        ) from None
    except ValueError as err:  # json.JSONDecodeError, or bytes that are not UTF-8
        raise CapacityError(f"price table {file} is not valid JSON ({err}). Fix: repair the file") from None
    if not isinstance(data, Mapping) or not all(isinstance(data.get(k), list) for k in ("instances", "apis")):
        raise CapacityError(f"price table {file} needs an 'instances' list and an 'apis' list")
    instances = [_entry(InstancePrice, r, f"{file}: instance", ("usd_per_hour",)) for r in data["instances"]]
    apis = [_entry(ApiPrice, r, f"{file}: API", _API_PRICES) for r in data["apis"]]
    return Prices(tuple(instances), tuple(apis), str(data.get("note", "")))


# -------------------------------------------------------------------------------------- self-host vs API


def api_cost_per_request(api: ApiPrice | Mapping[str, Any], mix: TokenMix) -> float:
    """USD an API charges for one request of ``mix`` (an :class:`ApiPrice` or a prices.json entry)."""
    if not isinstance(api, ApiPrice):
        api = _entry(ApiPrice, api, "API", _API_PRICES)
    return api.cost_per_request(mix)


def monthly_api_cost(requests_per_month: float, mix: TokenMix, api: ApiPrice | Mapping[str, Any]) -> float:
    """USD per month for ``requests_per_month`` requests of ``mix`` on an API."""
    return _number("requests_per_month", requests_per_month, strict=False) * api_cost_per_request(api, mix)


def monthly_self_host_cost(usd_per_hour: float, replicas: int, hours: float = HOURS_PER_MONTH) -> float:
    """USD per month for ``replicas`` instances running ``hours`` (busy or idle, they are paid)."""
    price = _number("usd_per_hour", usd_per_hour, strict=False)
    return price * _number("replicas", replicas) * _number("hours", hours)


def break_even_requests_per_month(
    usd_per_hour: float,
    replicas: int,
    mix: TokenMix,
    api: ApiPrice | Mapping[str, Any],
    hours: float = HOURS_PER_MONTH,
) -> float:
    """Requests per month above which self-hosting is cheaper: fixed monthly cost / API cost per request."""
    per_request = api_cost_per_request(api, mix)
    if per_request <= 0:
        raise CapacityError("the API costs nothing per request for this mix: there is no break-even")
    return monthly_self_host_cost(usd_per_hour, replicas, hours) / per_request


def max_requests_per_month(
    goodput_req_s: float, replicas: int, utilization: float = 1.0, hours: float = HOURS_PER_MONTH
) -> float:
    """Requests per month ``replicas`` serve within the SLO when busy a ``utilization`` share of the time."""
    busy = _number("utilization (share of the time busy)", utilization, at_most=1)
    rate = _number("goodput_req_s", goodput_req_s, strict=False)
    return rate * _number("replicas", replicas) * busy * _number("hours", hours) * 3600


def cost_table(
    points_or_tok_s: BenchPoint | float | Iterable[BenchPoint | float],
    instance: InstancePrice | float,
    utilizations: Sequence[float] = (0.25, 0.5, 0.9),
) -> list[dict[str, Any]]:
    """Rows of USD per million output tokens for each throughput and utilization (plain dicts to print)."""
    if isinstance(points_or_tok_s, (BenchPoint, int, float)):
        points_or_tok_s = [points_or_tok_s]
    if isinstance(instance, InstancePrice):
        name, usd_per_hour = instance.name, instance.usd_per_hour
    else:
        name, usd_per_hour = "instance", instance
    rows = []
    for point in points_or_tok_s:
        label, tok_s = (point.label, point.out_tok_s) if isinstance(point, BenchPoint) else ("", point)
        for u in utilizations:
            rows.append(
                {
                    "instance": name,
                    "usd_per_hour": usd_per_hour,
                    "point": label or f"{tok_s:g} tok/s",
                    "out_tok_s": tok_s,
                    "utilization": u,
                    "usd_per_m_output": cost_per_million(usd_per_hour, tok_s, u),
                }
            )
    return rows


# ------------------------------------------------------------------------------------------ memory myths


def kv_mistake(
    model: str = "meta-llama/Llama-3.1-8B-Instruct", dtype: str = "bfloat16", budget_bytes: int = 4 * GIB
) -> dict[str, Any]:
    """KV bytes per token counted right (KV heads: GQA) and wrong (query heads); tokens a budget holds."""
    shape = model_shape(model)
    right, naive = kv_bytes_per_token(shape, dtype), naive_kv_bytes_per_token(shape, dtype)
    return {
        "model": model,
        "dtype": dtype,
        "attention_heads": shape.num_attention_heads,
        "kv_heads": shape.num_key_value_heads,
        "bytes_per_token": right,
        "naive_bytes_per_token": naive,
        "ratio": naive / right,
        "budget_bytes": budget_bytes,
        "tokens": budget_bytes // right,
        "naive_tokens": budget_bytes // naive,
    }


def vram_rule_of_thumb(
    model: str,
    gpu_memory_bytes: int,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int = 8192,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """The "VRAM = 1.5-2x model size" rule next to the KV cache vLLM would actually get on one GPU."""
    weights = weight_memory_for(model, dtype, dtype)
    lane = Lane(
        device="cuda",
        dtype=dtype,
        gpu_memory_bytes=gpu_memory_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
    )
    plan = kv_plan(model_shape(model), lane, server=True)
    return {
        "model": model,
        "gpu_memory_bytes": gpu_memory_bytes,
        "weights_bytes": weights,
        "rule_1_5x_bytes": 1.5 * weights,
        "rule_2x_bytes": 2 * weights,
        "rule_says_fits": 1.5 * weights <= gpu_memory_bytes,
        "requested_bytes": plan.requested_bytes,
        "reserve_bytes": plan.reserve_bytes,
        "kv_budget_bytes": max(0, plan.budget_bytes),
        "kv_bytes_per_token": plan.bytes_per_token,
        "kv_tokens": plan.tokens,
        "kv_tokens_range": (plan.low_tokens, plan.high_tokens),
        "full_length_sequences": plan.full_length_sequences,
        "max_model_len": max_model_len,
        "starts": plan.ok,
        "problems": list(plan.problems),
    }
