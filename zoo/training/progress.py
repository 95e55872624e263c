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
    decay: str = "cosine",
    hold_steps: int = 0,
) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warmup, ``hold_steps`` at the peak,
    then a cosine or linear decay to ``min_ratio`` at the end of the run.

    With ``hold_steps > 0`` this is warmup-stable-decay: growth stages placed in the flat phase let new parameters
    train at the full LR, and only the final model is decayed. One continuous decay spans the whole run, across
    growth stages. ``rewarm_at`` lists steps (growth boundaries) after which the LR ramps linearly from 0 back to the
    schedule's value over ``rewarm_steps``: new parameters start with empty optimizer moments, and a short ramp
    avoids the loss spike of full-size first updates.
    """
    if step < warmup_steps:
        factor = (step + 1) / warmup_steps
    else:
        decay_start = warmup_steps + hold_steps
        span = max(total_steps - decay_start, 1)
        progress = min(max(step - decay_start, 0) / span, 1.0)
        shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        factor = min_ratio + (1.0 - min_ratio) * shape
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


def freezeout_steps(total_steps: int, num_groups: int, every: float, start: float | None = None) -> dict[int, int]:
    """FreezeOut's schedule: the step at which each layer group freezes, bottom-up: group g at ``start + g * every``
    of training (``start`` defaults to ``every``: group g at ``(g + 1) * every``); the top group never freezes, nor
    does a group whose time falls at or after the end. The first trainable group at step s is the number of groups
    frozen by then."""
    first = every if start is None else start
    out = {}
    for g in range(num_groups - 1):
        step = math.ceil((first + g * every - 1e-9) * total_steps)
        if step >= total_steps:
            break
        out[g] = step
    return out


def freezeout_lr_factors(
    step: int, freeze_at: dict[int, int], warmup_steps: int, decay: str = "cosine", scale_total: int | None = None
) -> dict[int, float]:
    """FreezeOut's per-group LR (Brock et al. 2017): each group that will freeze follows its own warm-up and decay
    to zero, ending at the step it freezes, so it stops learning smoothly instead of at full LR; groups that never
    freeze are absent (they follow the run's schedule). With ``scale_total`` (the run's steps), each group's factor
    is multiplied by ``scale_total / freeze step`` (FreezeOut's scaled variant: a group that trains for a fraction t
    of the run starts at LR alpha / t)."""
    return {
        g: lr_factor(step, s, min(warmup_steps, s), decay=decay) * (scale_total / s if scale_total else 1.0)
        for g, s in freeze_at.items()
        if step < s
    }


def stage_index(progress: float, boundaries: Sequence[float]) -> int:
    """Number of stage boundaries (fractions of training, increasing) reached at ``progress``."""
    return sum(1 for b in boundaries if progress >= b - 1e-12)


def boundary_steps(boundaries: Sequence[float], total_steps: int) -> list[int]:
    """The optimizer step at which each fractional boundary takes effect."""
    return [int(math.ceil(b * total_steps - 1e-9)) for b in boundaries]


def solve_stage_fractions(
    nominal: Sequence[float], step_costs: Sequence[float], total_steps: int, budget: float, min_fraction: float = 0.02
) -> list[float]:
    """Fractions of training per stage so the run's total cost equals ``budget``, staying close to ``nominal``.

    ``step_costs[i]`` is the cost of one optimizer step of stage i (FLOPs, or seconds measured on this machine).
    Minimises the squared relative deviation from the recipe's nominal fractions subject to
    ``sum(f) == 1`` and ``total_steps * sum(f_i * c_i) == budget`` (SLSQP), with every stage at least
    ``min_fraction`` long. Raises ValueError when the budget is outside what the stages can reach.
    """
    import numpy as np
    from scipy.optimize import minimize

    nominal = np.asarray(nominal, dtype=float)
    costs = np.asarray(step_costs, dtype=float)
    if len(nominal) != len(costs) or not np.isclose(nominal.sum(), 1.0):
        raise ValueError("nominal stage fractions must match the stages and sum to 1")
    k = len(costs)
    lo = min_fraction * (costs.sum() - costs.max()) + (1 - min_fraction * (k - 1)) * costs.max()
    hi_cheap = min_fraction * (costs.sum() - costs.min()) + (1 - min_fraction * (k - 1)) * costs.min()
    reach = sorted([hi_cheap * total_steps, lo * total_steps])
    if not reach[0] * (1 - 1e-9) <= budget <= reach[1] * (1 + 1e-9):
        raise ValueError(f"budget {budget:.4g} outside what these stages can reach ({reach[0]:.4g} .. {reach[1]:.4g})")
    constraints = [
        {"type": "eq", "fun": lambda f: f.sum() - 1.0},
        {"type": "eq", "fun": lambda f: (total_steps * (f * costs).sum() - budget) / budget},
    ]
    res = minimize(lambda f: (((f - nominal) / nominal) ** 2).sum(), nominal, method="SLSQP",
                   bounds=[(min_fraction, 1.0)] * k, constraints=constraints)  # fmt: skip
    if not res.success:
        raise ValueError(f"could not fit the stages to the budget: {res.message}")
    return [float(x) for x in res.x]


def fractions_to_boundaries(fractions: Sequence[float]) -> list[float]:
    """Stage fractions -> the starts of stages 2..k as fractions of training."""
    out, acc = [], 0.0
    for f in fractions[:-1]:
        acc += f
        out.append(acc)
    return out


def boundaries_to_fractions(boundaries: Sequence[float]) -> list[float]:
    edges = [0.0, *boundaries, 1.0]
    return [b - a for a, b in zip(edges, edges[1:])]
