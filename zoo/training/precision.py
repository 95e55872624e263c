"""``precision: auto``: pick fp32 or bf16 by measuring a few training steps of the actual model and micro-batch.

bf16 autocast pays on this class of CPU for ViT-S-sized matmuls (about 1.7x per step) and not at all for the tiny
CPU models (measured in the ``precision`` bench suite), so the choice depends on the model and batch; measuring it
is cheaper than guessing. bf16 must win by a margin, since it also costs some accuracy headroom.
"""

from __future__ import annotations

import copy

from torch import nn

from zoo.measure.steps import train_step_fn
from zoo.measure.stopwatch import interleaved_times, speedup

MARGIN = 1.10  # bf16 must be at least 10% faster to be chosen


def choose_precision(model: nn.Module, batch: int, device: str = "cpu", rounds: int = 3) -> tuple[str, float]:
    """Returns (precision, measured bf16 speedup) for training ``model`` at ``batch`` images per micro-step."""
    fns = {p: train_step_fn(copy.deepcopy(model), batch, p, device) for p in ("fp32", "bf16")}
    times = interleaved_times(fns, rounds=rounds, warmup=1)
    ratio = speedup(times, "fp32", "bf16")
    return ("bf16" if ratio >= MARGIN else "fp32"), ratio
