"""The one stopwatch: step functions timed round-robin (A, B, C, A, B, C, ...) after warm-up, so drift in machine
load hits every arm alike; medians are compared. Benchmarks, ``zoo profile``, ``zoo plan``, ``precision: auto`` and
the budget solver all time through it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
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
