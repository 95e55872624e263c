"""Values over training progress: learning rate, routing capacity, unfreeze and growth stages.

Pure functions of the step, so a resumed run recomputes exactly the value an uninterrupted run had: nothing here
holds state that a checkpoint would have to carry. Structure (growth, trainability) changes only at stage
boundaries; numbers (LR, capacity) are read every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float = 0.0,
    rewarm_at: Sequence[int] = (),
    rewarm_steps: int = 0,
) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_ratio``.

    One continuous cosine spans the whole run, across growth stages. ``rewarm_at`` lists steps (growth boundaries)
    after which the LR ramps linearly from 0 back to the cosine value over ``rewarm_steps``: new parameters start with
    empty optimizer moments, and a short ramp avoids the loss spike of full-size first updates.
    """
    if step < warmup_steps:
        factor = (step + 1) / warmup_steps
    else:
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        factor = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    for start in rewarm_at:
        if rewarm_steps > 0 and start <= step < start + rewarm_steps:
            factor *= (step - start + 1) / rewarm_steps
    return factor


def anneal_value(progress: float, start: float, end: float, span: float) -> float:
    """Linear anneal from ``start`` to ``end`` over the first ``span`` of training (span 0: always ``end``)."""
    if span <= 0 or progress >= span:
        return end
    return start + (end - start) * progress / span


def gradual_unfreeze_from(progress: float, num_groups: int, start_groups: int, every: float) -> int:
    """ULMFiT top-down unfreezing: index of the first trainable group at ``progress`` (0 = all trainable).

    ``start_groups`` groups (from the top: head + final norm first) train from the start; one more group becomes
    trainable every ``every`` of training.
    """
    extra = int(progress / every + 1e-9) if every > 0 else num_groups
    trainable = min(num_groups, start_groups + extra)
    return num_groups - trainable


def stage_index(progress: float, boundaries: Sequence[float]) -> int:
    """Number of stage boundaries (fractions of training, increasing) reached at ``progress``."""
    return sum(1 for b in boundaries if progress >= b - 1e-12)


def boundary_steps(boundaries: Sequence[float], total_steps: int) -> list[int]:
    """The optimizer step at which each fractional boundary takes effect."""
    return [int(math.ceil(b * total_steps - 1e-9)) for b in boundaries]
