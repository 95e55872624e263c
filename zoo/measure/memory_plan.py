"""``zoo plan``: find, by measurement, the training configuration that fits a memory cap with the best throughput.

Candidates keep the recipe's effective batch: micro-batch ``m`` with ``accumulation = batch_size / m``, crossed with
activation checkpointing (none / full / selective, every block) and precision (fp32 / bf16). Each candidate's peak
training memory is measured with the profiler's tensor tracking (exact for tensors; allocator and library overhead
come on top, hence the ``margin``). Among the candidates that fit, the largest fitting micro-batch of each
(checkpointing, precision) pair is timed side by side, and the fastest in images/s wins.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from torch import nn

from zoo.measure.memory import measure_train_memory
from zoo.measure.steps import train_step_fn
from zoo.measure.stopwatch import interleaved_times, median

CHECKPOINTING = (None, "full", "selective")
PRECISIONS = ("fp32", "bf16")


def parse_bytes(text: str) -> int:
    """'4GB', '512MiB', '1.5G', '1000000' -> bytes (GB/G/GiB all mean 2**30: users read memory in binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise ValueError(f"--memory: cannot read {text!r} as a size (e.g. 4GB, 512MiB)")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def micro_batches(batch_size: int, smallest: int = 1) -> list[int]:
    """Divisors of the effective batch from largest to smallest, halving (keeps accumulation an integer)."""
    out, m = [], batch_size
    while m >= smallest:
        if batch_size % m == 0:
            out.append(m)
        if m == 1:
            break
        m //= 2
    return out


@dataclass
class Candidate:
    micro_batch: int
    accumulation: int
    checkpointing: str | None
    precision: str
    peak_bytes: int | None = None
    img_per_s: float | None = None

    @property
    def label(self) -> str:
        return f"mb{self.micro_batch}-{self.checkpointing or 'nockpt'}-{self.precision}"

    def overrides(self) -> list[str]:
        ckpt = "null" if self.checkpointing is None else self.checkpointing
        return [f"train.accumulation={self.accumulation}", f"train.grad_checkpointing={ckpt}",
                f"train.precision={self.precision}"]  # fmt: skip


def _configured(model: nn.Module, c: Candidate) -> nn.Module:
    m = copy.deepcopy(model)
    if c.checkpointing is not None:
        m.set_grad_checkpointing(True, every=1, policy=c.checkpointing)
    return m


def plan(
    model: nn.Module,
    batch_size: int,
    cap_bytes: int,
    margin: float = 0.9,
    precisions: tuple[str, ...] = PRECISIONS,
    rounds: int = 3,
    progress: bool = True,
) -> tuple[Candidate | None, list[Candidate]]:
    """Measure the candidates; returns (best fitting candidate or None, every candidate with its measurements)."""
    from tqdm.auto import tqdm

    cands = [
        Candidate(m, batch_size // m, ck, p)
        for p in precisions
        for ck in CHECKPOINTING
        for m in micro_batches(batch_size)
    ]
    budget = cap_bytes * margin
    fitting: dict[tuple, Candidate] = {}
    for c in tqdm(cands, desc="memory", disable=not progress):
        key = (c.checkpointing, c.precision)
        if key in fitting:  # a larger micro-batch of this pair already fits: smaller ones are slower, skip them
            continue
        c.peak_bytes = int(measure_train_memory(_configured(model, c), c.micro_batch, precision=c.precision)[
            "peak_mem_train_bytes"])  # fmt: skip
        if c.peak_bytes <= budget:
            fitting[key] = c
    if not fitting:
        return None, cands
    fns = {c.label: train_step_fn(_configured(model, c), c.micro_batch, c.precision) for c in fitting.values()}
    times = interleaved_times(fns, rounds=rounds, warmup=1, progress="timing" if progress else None)
    for c in fitting.values():
        c.img_per_s = c.micro_batch / median(times[c.label])
    best = max(fitting.values(), key=lambda c: c.img_per_s)
    return best, cands


def format_plan(best: Candidate | None, cands: list[Candidate], cap_bytes: int, margin: float) -> str:
    mib = 2**20
    lines = [f"memory cap {cap_bytes / mib:.0f} MiB (tensors may use {margin:.0%} of it: allocator overhead is extra)",
             f"{'candidate':<28}{'peak MiB':>10}{'fits':>6}{'img/s':>9}"]  # fmt: skip
    for c in cands:
        if c.peak_bytes is None:
            continue
        fits = "yes" if c.peak_bytes <= cap_bytes * margin else "no"
        ips = f"{c.img_per_s:.1f}" if c.img_per_s is not None else "-"
        lines.append(f"{c.label:<28}{c.peak_bytes / mib:>10.1f}{fits:>6}{ips:>9}")
    if best is None:
        lines.append("nothing fits: lower data.batch_size's micro-batch further or use a smaller model")
    else:
        lines.append(f"chosen: {best.label}  ->  " + " ".join(f"--set {o}" for o in best.overrides()))
    return "\n".join(lines)
