"""The machine's own ceiling for decoding, measured: matrix-multiply FLOP/s and memory bandwidth.

Each decoded token costs about ``2 x parameters`` FLOPs and, per decoding step, one read of every weight. So
a large batch is bounded by compute (``FLOP/s / (2 x parameters)`` tokens per second) and one sequence by
bandwidth (``bytes/s / weight bytes`` tokens per second). The probes use torch on the same threads the engine
gets, so the bounds are this machine's, printed next to the engine's measured throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MachineProbe:
    """What this machine measured on ``threads`` threads."""

    threads: int
    matmul_flops: float  # float32 FLOP/s of a square matrix multiply
    bandwidth: float  # bytes/s of a large tensor copy (read + write)

    def describe(self) -> str:
        """One line for a notebook."""
        return (
            f"{self.threads} threads: float32 matmul {self.matmul_flops / 1e9:.0f} GFLOP/s, "
            f"memory copy {self.bandwidth / 1e9:.1f} GB/s"
        )


def probe(
    threads: int, size: int = 1024, copy_mib: int = 256, seconds: float = 1.5, windows: int = 5
) -> MachineProbe:
    """Measure float32 matmul FLOP/s and copy bandwidth for about ``seconds`` each, on ``threads`` threads.

    Each probe is timed in ``windows`` equal windows and the fastest counts (a ceiling is the best the machine
    does; a window slowed by a clock ramp or another process on a shared core says nothing about the bound).
    """
    import torch

    def fastest(work: Callable[[], object], amount: float) -> float:
        work()  # warm-up (first touch of the pages, threads woken)
        best = 0.0
        for _ in range(windows):
            runs, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / windows:
                work()
                runs += 1
            best = max(best, amount * runs / elapsed)
        return best

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        flops = fastest(lambda: torch.mm(a, b), 2 * size**3)
        src = torch.ones(copy_mib * 2**20 // 4)
        dst = torch.empty_like(src)
        bandwidth = fastest(lambda: dst.copy_(src), 2 * src.numel() * 4)  # read + write
    finally:
        torch.set_num_threads(before)
    return MachineProbe(threads, flops, bandwidth)


@dataclass(frozen=True)
class DecodeBounds:
    """Upper bounds on decoding speed for one model on a probed machine."""

    compute_tokens_per_s: float  # large batches: every token costs 2 x parameters FLOPs
    bandwidth_tokens_per_s: float  # batch 1: every step reads every weight once

    def share(self, measured_tokens_per_s: float, batch_one: bool = False) -> float:
        """A measured throughput as a share of the bound that applies to it."""
        bound = self.bandwidth_tokens_per_s if batch_one else self.compute_tokens_per_s
        return measured_tokens_per_s / bound


def decode_bounds(machine: MachineProbe, parameters: int, weight_bytes: int) -> DecodeBounds:
    """Tokens/s bounds of a model with ``parameters`` (FLOPs) and ``weight_bytes`` (read per step)."""
    return DecodeBounds(machine.matmul_flops / (2 * parameters), machine.bandwidth / weight_bytes)
