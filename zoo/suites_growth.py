"""The growth suites, registered in ``zoo.suites.SUITES`` on import: ``growth`` (3 epochs, every arm),
``growth-long`` (9 epochs, the long-run arms) and ``growth-equal-time`` (the long schedule given the dense run's
wall-clock). Their arms and controls are declared in ``zoo.experiments``."""

from __future__ import annotations

from pathlib import Path

from zoo.bench import Arm, run_arms
from zoo.experiments import mean_by_arm
from zoo.suites import arms_report, suite


def _growth_compute_fraction(recipe_name: str) -> float:
    """Training FLOPs of a growth recipe relative to training its final architecture throughout (FLOPs per step of
    each stage, weighted by the stage's share of the steps)."""
    import torch.nn.functional as F

    from zoo.budget import stage_models
    from zoo.cli import resolve_recipe_path
    from zoo.data import build_datasets
    from zoo.flops import count_flops
    from zoo.recipe import load_recipe
    from zoo.schedule import boundaries_to_fractions
    from zoo.stages import build_model, stage_steps
    from zoo.steps import random_batch

    recipe = load_recipe(resolve_recipe_path(recipe_name))
    bundle = build_datasets(recipe.data.name, train_subset=16, test_subset=16)
    models = stage_models(build_model(recipe, bundle), recipe)
    costs = []
    for m in models:
        x, y = random_batch(m, 8)
        costs.append(count_flops(m.train(), x, loss_fn=lambda out, y=y: F.cross_entropy(out, y))[0])
    total = 10_000  # any run length: `step:` stages become fractions of it, `at:` stages are fractions already
    fractions = boundaries_to_fractions([step / total for step in stage_steps(recipe.growth.stages, total, "growth")])
    return sum(f * c for f, c in zip(fractions, costs)) / costs[-1]


@suite("growth")
def growth_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Full-depth dense baseline vs growth schedules (depth early / late, depth + MLP, resolution, both), plus the
    control the literature asks for (No Train No Gain): the baseline given a growth run's compute, its LR fully
    decayed in it.
    Headline keys (``speedup``, ``acc_delta``, ``acc_vs_control``) are those of ``experiments.GROWTH_HEADLINE``."""
    from zoo.experiments import GROWTH_ARMS, GROWTH_CONTROLLED, GROWTH_HEADLINE, GROWTH_WARMUP, growth_arms

    fractions = {arm: _growth_compute_fraction(GROWTH_ARMS[arm]) for arm in GROWTH_CONTROLLED}
    res: dict = {"headline_arm": GROWTH_HEADLINE, "compute_fraction": fractions}
    if quick:  # real runs on a 10k-image subset for 2 epochs: wall-clock and accuracy deltas, one seed
        short = ["data.train_subset=10000", "schedule.epochs=2", GROWTH_WARMUP, *(overrides or [])]
        arms = [Arm("dense", "fmnist_micro_dense"), Arm(GROWTH_HEADLINE, GROWTH_ARMS[GROWTH_HEADLINE])]
        records = run_arms(arms, seeds[:1], out / "runs", extra_overrides=short, allow_mismatch=allow_mismatch)
    else:
        records, extra = growth_arms(seeds, out, overrides or [], allow_mismatch, fractions)
        res.update(extra)
    return _growth_headline(records, res, out, report=not quick)


def _long_quick(quick: bool, overrides: list[str] | None, seeds: list[int]) -> tuple[list[str], list[int]]:
    """The 9-epoch suites' ``--quick``: a 10k-image subset for 3 epochs, one seed (user overrides still win)."""
    overrides = list(overrides or [])
    if quick:
        return ["data.train_subset=10000", "schedule.epochs=3", *overrides], seeds[:1]
    return overrides, seeds


@suite("growth-long")
def growth_long_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """The growth suite at 9 epochs, where the arms are nearly trained (``growth`` runs every arm for 3, and there
    growth looks better than it is at length): the dense baseline, ``experiments.GROWTH_LONG_ARMS`` and the
    compute-matched control of the headline ``GROWTH_LONG_HEADLINE``.
    ``--quick``: the same arms on a 10k-image subset for 3 epochs, one seed."""
    from zoo.experiments import GROWTH_LONG_ARMS, GROWTH_LONG_HEADLINE, growth_arms

    head = GROWTH_LONG_HEADLINE
    fractions = {head: _growth_compute_fraction(GROWTH_LONG_ARMS[head])}
    res: dict = {"headline_arm": head, "compute_fraction": fractions}
    overrides, seeds = _long_quick(quick, overrides, seeds)
    records, extra = growth_arms(seeds, out, overrides, allow_mismatch, fractions, GROWTH_LONG_ARMS, 9.0)
    res.update(extra)
    return _growth_headline(records, res, out, report=True)


@suite("growth-equal-time")
def growth_equal_time_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """The dense baseline (9 epochs) vs the growth-long headline given about the dense run's wall-clock instead of its
    epochs: what growth buys a user whose budget is time (the routing suite's equal-time arm, for growth). The
    growth arm trains ``experiments.GROWTH_LONG_SPEEDUP`` times the dense epochs; the wall-clock ratio this run
    measures (``time_ratio``) is reported beside the accuracy, so a drifted speedup shows.
    ``--quick``: a 10k-image subset, 3 epochs, one seed."""
    from zoo.experiments import (
        GROWTH_LONG_ARMS,
        GROWTH_LONG_HEADLINE,
        GROWTH_LONG_SPEEDUP,
        GROWTH_WARMUP,
        epochs_from,
    )

    overrides, seeds = _long_quick(quick, overrides, seeds)
    epochs = epochs_from(overrides, 9.0)
    equal_epochs = round(epochs * GROWTH_LONG_SPEEDUP, 2)
    head = f"{GROWTH_LONG_HEADLINE}_equal_time"
    common = [GROWTH_WARMUP, *overrides, f"schedule.epochs={epochs}"]  # the arm's own epochs win
    growth = Arm(head, GROWTH_LONG_ARMS[GROWTH_LONG_HEADLINE], [f"schedule.epochs={equal_epochs}"])
    records = run_arms([Arm("dense", "fmnist_micro_dense"), growth], seeds, out / "runs", common, allow_mismatch)
    acc, wall = mean_by_arm(records, "acc"), mean_by_arm(records, "wall_clock_s")
    res: dict = {"headline_arm": head, "epochs": epochs, "equal_time_epochs": equal_epochs}
    res["time_ratio"] = wall[head] / wall["dense"]
    res["acc_delta_equal_time"] = 100 * (acc[head] - acc["dense"])
    res.update(arms_report(records, "dense", out, target_acc=acc["dense"]))
    return res


def _growth_headline(records: list[dict], res: dict, out: Path, report: bool) -> dict:
    """The growth suites' headline keys (``speedup``, ``acc_delta``, ``acc_vs_control``: those of
    ``res["headline_arm"]``; controls are those of the arms in ``res["compute_fraction"]``) added to ``res``; with
    ``report`` also the arms table, whose time-to-target is the time to the baseline's final accuracy (mean over its
    seeds), read from each run's eval curve."""
    from zoo.experiments import control_arm

    headline, controlled = res["headline_arm"], list(res["compute_fraction"])
    acc, wall = mean_by_arm(records, "acc"), mean_by_arm(records, "wall_clock_s")
    if report:
        res.update(arms_report(records, "dense", out, target_acc=acc["dense"]))
    res["speedup"] = wall["dense"] / wall[headline]
    res["acc_delta"] = 100 * (acc[headline] - acc["dense"])
    vs_control = {arm: 100 * (acc[arm] - acc[control_arm(arm)]) for arm in controlled if control_arm(arm) in acc}
    if vs_control:
        res["acc_vs_control"] = vs_control[headline]
        res["acc_vs_control_by_arm"] = vs_control
    return res
