"""The growth suites: ``growth`` (3 epochs, every arm), ``growth-long`` (9 epochs, the long-run arms) and
``growth-equal-time`` (the long schedule given the dense run's wall-clock), with their arms and the compute-matched
control of each claimed arm declared here.

The arms of one comparison share their epoch count and warm-up fraction, set here rather than in the recipes.
"""

from __future__ import annotations

from pathlib import Path

from zoo.bench.arms import arm_spikes, epochs_from, mean_by_arm
from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, run_arms
from zoo.data.datasets import build_datasets
from zoo.measure.flops import step_flops
from zoo.training.budget import stage_models
from zoo.training.progress import boundaries_to_fractions
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path
from zoo.training.stage_plan import build_model, stage_steps

# ------------------------------------------------------------------------------------------------------- growth
#: growth arm -> recipe; every arm runs the suite's epochs with the same warm-up
GROWTH_ARMS = {
    "grow_depth": "fmnist_grow_depth",
    "grow_depth_late": "fmnist_grow_depth_late",
    "grow_depth_mlp": "fmnist_grow_depth_mlp",
    "grow_resolution": "fmnist_grow_resolution",
    "grow_both": "fmnist_grow_both",
}

#: the growth arm whose numbers the suite's headline (and the issue's goal) are judged on
GROWTH_HEADLINE = "grow_depth_mlp"

#: growth arms that get a compute-matched control: the headline, and the arm that grows depth and resolution
#: (`grow_depth_late` stays as the depth-only ablation of the headline; its control was measured at 3fc6035)
GROWTH_CONTROLLED = ("grow_depth_mlp", "grow_both")

#: the growth-long suite's arms (9 epochs): its headline, the same growth started earlier with the MLP widened last
#: (at 9 epochs the 3-epoch headline grows too late to catch up), and the 3-epoch headline side by side
GROWTH_LONG_ARMS = {"grow_depth_mlp_long": "fmnist_grow_depth_mlp_long", "grow_depth_mlp": "fmnist_grow_depth_mlp"}

#: the growth-long suite's headline arm; it alone gets a compute-matched control there
GROWTH_LONG_HEADLINE = "grow_depth_mlp_long"

#: the growth-long headline's wall-clock speedup as `zoo bench growth-long` measured it (commit 8344c5c, seeds 0-2:
#: 486.6 / 299.1 s): the equal-time suite gives that schedule this many times the dense run's epochs
GROWTH_LONG_SPEEDUP = 1.63

#: the growth recipes' warm-up, set for every arm of a growth comparison (dense included): the baseline's own 0.04
#: would be a second difference between the arms
GROWTH_WARMUP = "schedule.warmup=0.055"


def control_arm(growth_arm: str) -> str:
    """Name of the dense arm given ``growth_arm``'s compute (``grow_both`` -> ``dense_matched_both``)."""
    return "dense_matched_" + growth_arm.removeprefix("grow_")


def growth_arms(
    seeds: list[int],
    out: Path,
    overrides: list[str],
    allow_mismatch: bool,
    compute_fractions: dict[str, float],
    arms: dict[str, str] | None = None,
    default_epochs: float = 3.0,
) -> tuple[list[dict], dict]:
    """Full-depth dense baseline vs the growth ``arms`` (name -> recipe; default all of ``GROWTH_ARMS``) at equal
    epochs, and for each growth arm named in ``compute_fractions`` its compute-matched control: the baseline trained
    for that fraction of the epochs with its LR fully decayed in them (arm ``dense_matched_<schedule>``)."""
    growth = GROWTH_ARMS if arms is None else arms
    epochs = epochs_from(overrides, default_epochs)
    control_epochs = {arm: round(epochs * f, 2) for arm, f in compute_fractions.items()}
    common = [GROWTH_WARMUP, *overrides, f"schedule.epochs={epochs}"]
    runs = out / "runs"
    todo = [Arm("dense", "fmnist_micro_dense"), *(Arm(name, recipe) for name, recipe in growth.items())]
    todo += [Arm(control_arm(arm), "fmnist_micro_dense", [f"schedule.epochs={e}"]) for arm, e in control_epochs.items()]
    records = run_arms(todo, seeds, runs, extra_overrides=common, allow_mismatch=allow_mismatch)
    spikes = {name: arm_spikes(runs, name, seeds) for name in growth}
    return records, {"epochs": epochs, "control_epochs": control_epochs, "loss_spikes": spikes}


def compute_fraction(recipe_name: str) -> float:
    """Training FLOPs of a growth recipe relative to training its final architecture throughout (FLOPs per step of
    each stage, weighted by the stage's share of the steps)."""
    recipe = load_recipe(resolve_recipe_path(recipe_name))
    bundle = build_datasets(recipe.data.name, train_subset=16, test_subset=16)
    models = stage_models(build_model(recipe, bundle), recipe)
    costs = [step_flops(m, 8) for m in models]
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
    Headline keys (``speedup``, ``acc_delta``, ``acc_vs_control``) are those of ``GROWTH_HEADLINE``."""

    fractions = {arm: compute_fraction(GROWTH_ARMS[arm]) for arm in GROWTH_CONTROLLED}
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

    head = GROWTH_LONG_HEADLINE
    fractions = {head: compute_fraction(GROWTH_LONG_ARMS[head])}
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
