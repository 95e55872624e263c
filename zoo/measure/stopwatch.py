"""The one stopwatch: step functions timed round-robin (A, B, C, A, B, C, ...) after warm-up, so drift in machine
load hits every arm alike; medians are compared. Benchmarks, ``zoo profile``, ``zoo plan``, ``precision: auto`` and
the budget solver all time through it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from scipy import stats
from tqdm.auto import tqdm


def sync(device: str | None = None) -> None:
    """Wait for queued CUDA work (``device`` None: the current CUDA device, if any); a no-op on CPU."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    rounds: int = 5,
    warmup: int = 2,
    progress: str | None = None,
    device: str | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in tqdm(range(rounds), desc=progress, disable=progress is None, leave=False):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def median_time(fn: Callable[[], object], rounds: int = 5, warmup: int = 2, device: str | None = None) -> float:
    """Median seconds per call of one function."""
    return median(interleaved_times({"fn": fn}, rounds=rounds, warmup=warmup, device=device)["fn"])


def speedup(times: dict[str, list[float]], base: str, arm: str) -> float:
    """Median time of ``base`` over median time of ``arm`` (> 1: the arm is faster)."""
    return median(times[base]) / median(times[arm])


def paired_speedup(
    times: dict[str, list[float]], base: str, arm: str, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(median, low, high)`` of the per-round ratio ``base`` time / ``arm`` time, with a distribution-free interval
    for that median.

    Each round times every function once, back to back, so the ratio taken within a round pairs the two under the
    same machine state: a slow spell that hits one round hits both sides of its ratio (across whole runs on a quiet
    2-core VM, the ratio of medians moved by 0.1 at 1.4x: CHANGELOG). The interval is the binomial order-statistic
    one for a median (no normality assumed; covers at least ``confidence``): with 10 rounds it runs from the 2nd to
    the 9th smallest ratio. Below 6 rounds it is the whole range, whose coverage is then less than 95%."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    b, a = times[base], times[arm]
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_speedup: {base!r} and {arm!r} need the same number (>= 1) of rounds")
    ratios = sorted(tb / ta for tb, ta in zip(b, a))
    n = len(ratios)
    # the k-th smallest and k-th largest bound the median with probability 1 - 2 * P(Binomial(n, 1/2) <= k - 1)
    k = max(int(stats.binom.ppf((1 - confidence) / 2, n, 0.5)), 1)
    return statistics.median(ratios), ratios[k - 1], ratios[n - k]


def interval_text(low: float, high: float) -> str:
    """A speed-up interval as the tables print it: ``[1.29, 1.50]``."""
    return f"[{low:.2f}, {high:.2f}]"
