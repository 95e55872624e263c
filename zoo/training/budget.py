"""Compute-budget growth schedules: measure each growth stage's cost per step, then solve the stage lengths with
scipy so the whole run fits a FLOPs or wall-clock budget (``growth.budget_flops`` / ``growth.budget_seconds``).

The solved boundaries are written to the run folder (``budget_plan.json``) and reused on resume, so a resumed run
never re-measures (wall-clock costs would differ slightly) and keeps exactly the same stage steps.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from zoo.growth.operators import grow
from zoo.measure.flops import step_flops
from zoo.measure.steps import train_step_fn
from zoo.measure.stopwatch import interleaved_times, median
from zoo.training.progress import boundaries_to_fractions, fractions_to_boundaries, solve_stage_fractions
from zoo.training.recipe import Recipe, RecipeError


def stage_models(model: nn.Module, recipe: Recipe) -> list[nn.Module]:
    """The architecture of every stage: the initial model, then each growth stage applied in turn (on copies)."""

    out = [copy.deepcopy(model)]
    for st in recipe.growth.stages:
        m = copy.deepcopy(out[-1])
        grow(m, st.model_dump())
        out.append(m)
    return out


def step_costs(models: list[nn.Module], batch: int, kind: str) -> list[float]:
    """Cost of one training step of each stage model: counted FLOPs, or median seconds measured side by side."""
    if kind == "flops":
        return [float(step_flops(m, batch)) for m in models]
    times = interleaved_times({str(i): train_step_fn(m, batch) for i, m in enumerate(models)}, rounds=3, warmup=1)
    return [median(times[str(i)]) for i in range(len(models))]


def budget_boundaries(model: nn.Module, recipe: Recipe, total_steps: int, num_processes: int, out: Path) -> list[float]:
    """Growth stage starts (fractions of training) that fit the recipe's budget; measured once per run.

    FLOPs are those of the whole run (every process's share of the global batch); seconds are wall-clock, so they
    are measured on one process's share (processes run in parallel).
    """
    record = out / "budget_plan.json"
    if record.exists():
        return json.loads(record.read_text())["boundaries"]
    g = recipe.growth
    kind, budget = ("flops", g.budget_flops) if g.budget_flops is not None else ("seconds", g.budget_seconds)
    batch = recipe.data.batch_size if kind == "flops" else recipe.data.batch_size // num_processes
    costs = step_costs(stage_models(model, recipe), batch, kind)
    nominal = boundaries_to_fractions([s.at for s in g.stages])
    try:
        fractions = solve_stage_fractions(nominal, costs, total_steps, budget)
    except ValueError as e:
        raise RecipeError("recipe", f"growth.budget_{kind}", str(e)) from None
    boundaries = fractions_to_boundaries(fractions)
    plan = {"kind": kind, "budget": budget, "step_costs": costs, "nominal_boundaries": [s.at for s in g.stages],
            "boundaries": boundaries, "fractions": fractions, "total_steps": total_steps}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(plan, indent=2))
    print("growth budget plan (" + kind + "):")
    for i, (f, c) in enumerate(zip(fractions, costs)):
        print(f"  stage {i}: {f:6.1%} of {total_steps} steps, {c:.4g} {kind}/step")
    print(f"  total {total_steps * sum(f * c for f, c in zip(fractions, costs)):.4g} {kind} (budget {budget:.4g})")
    return boundaries
