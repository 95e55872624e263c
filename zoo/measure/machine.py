"""What this machine can do, measured: the best matmul FLOP/s at each precision (the GEMM peak that MFU is relative
to, and that run manifests record beside the CPU's capability so numbers from different machines can be told apart).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache

import torch

from zoo.measure.steps import check_precision, resolve_device
from zoo.measure.stopwatch import sync

GEMM_SIZES = (1024, 2048)
# the quick peak a run's manifest records: small enough to cost a fraction of a second even where bf16 is emulated
RUN_GEMM_SIZE = 512


def measure_gemm_peak(
    precision: str = "fp32", size: int | Sequence[int] = GEMM_SIZES, device: str | None = None, min_time: float = 0.2
) -> float:
    """Best FLOP/s of square ``size x size`` matmuls at ``precision`` (bf16 matmuls run on bf16 tensors).

    Each size is warmed up once, then timed repeatedly (at least 3 times and ``min_time`` seconds); the fastest run
    of the fastest size is returned. Best-of rather than median because the question is what the hardware can do,
    and other load on the machine only ever makes a run slower.
    """
    dtype = check_precision(precision) or torch.float32
    device = resolve_device(device)
    sizes = [size] if isinstance(size, int) else list(size)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        sync(device)
        runs: list[float] = []
        start = time.perf_counter()
        while len(runs) < 3 or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            runs.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / min(runs))
    return best


@cache
def gemm_peaks_gflops() -> dict[str, float]:
    """Quick fp32 and bf16 GEMM peaks (GFLOP/s at ``RUN_GEMM_SIZE``) of this process's CPU threads, measured once per
    process: recorded with every run, ignored when runs are compared (they vary from run to run by a few percent)."""
    return {
        p: round(measure_gemm_peak(p, size=RUN_GEMM_SIZE, device="cpu", min_time=0.1) / 1e9, 1)
        for p in ("fp32", "bf16")
    }
