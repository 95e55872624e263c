"""The growth suites on the tuned baseline.

``growth-baseline``: the dense baseline recipe at its full schedule, a growth recipe derived from it (same data,
epochs, augmentation), and the compute-matched dense control the literature asks for (No Train No Gain: the baseline
given the growth run's training FLOPs, its LR fully decayed in them).

``grow-pretrained``: the second user path, the published baseline grown into a bigger model while fine-tuning,
against that bigger model trained from scratch with the tuned recipe (bert2BERT / LiGO / G_stack's comparison).

The older ``growth`` / ``growth-long`` suites measure growth on the 16-token ``fmnist_micro_dense`` model; this one
measures it against ``fmnist_baseline``, the reference every other comparison of the zoo uses. No arm overrides the
recipes' schedules: the growth recipe's own LR schedule (e.g. warmup-stable-decay) is part of what is measured.
"""

from __future__ import annotations

from pathlib import Path

from zoo.bench.arms import arm_spikes, epochs_from, mean_by_arm
from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, run_arms
from zoo.bench.suites.baseline import BASELINE_RECIPE
from zoo.bench.suites.growth import compute_fraction, control_arm
from zoo.training.evaluation import evaluate_source
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path

#: the growth recipe judged against the baseline (schedules/)
GROWTH_BASELINE_RECIPE = "fmnist_baseline_grow"

#: its arm name
GROWTH_BASELINE_ARM = "grow"


@suite("growth-baseline")
def growth_baseline_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """``BASELINE_RECIPE`` vs ``GROWTH_BASELINE_RECIPE`` at the baseline's epochs, and the baseline given the growth
    run's training FLOPs (arm ``dense_matched_grow``). Headline keys as in ``growth``: ``speedup`` (dense wall-clock
    over growth wall-clock, means over seeds), ``acc_delta`` (points), ``acc_vs_control`` (points).
    ``--quick``: a 10k-image subset for 2 epochs, one seed (checks the path, not the goal)."""

    overrides = list(overrides or [])
    if quick:
        overrides, seeds = ["data.train_subset=10000", "schedule.epochs=2", *overrides], seeds[:1]
    head = GROWTH_BASELINE_ARM
    fraction = compute_fraction(GROWTH_BASELINE_RECIPE)
    control_epochs = round(epochs_from(overrides, _recipe_epochs(BASELINE_RECIPE)) * fraction, 2)
    arms = [
        Arm("dense", BASELINE_RECIPE),
        Arm(head, GROWTH_BASELINE_RECIPE),
        Arm(control_arm(head), BASELINE_RECIPE, [f"schedule.epochs={control_epochs}"]),
    ]
    runs = out / "runs"
    records = run_arms(arms, seeds, runs, overrides, allow_mismatch)
    acc, wall = mean_by_arm(records, "acc"), mean_by_arm(records, "wall_clock_s")
    res: dict = {"headline_arm": head, "compute_fraction": {head: fraction}, "control_epochs": {head: control_epochs}}
    res.update(arms_report(records, "dense", out, target_acc=acc["dense"]))
    res["speedup"] = wall["dense"] / wall[head]
    res["acc_delta"] = 100 * (acc[head] - acc["dense"])
    res["acc_vs_control"] = 100 * (acc[head] - acc[control_arm(head)])
    res["loss_spikes"] = {head: arm_spikes(runs, head, seeds)}
    return res


def _recipe_epochs(name: str) -> float:
    return float(load_recipe(resolve_recipe_path(name)).schedule.epochs)


# ------------------------------------------------------------------------------------------- grow-pretrained
#: per suite: the published baseline grown while fine-tuning, and the same final architecture trained from scratch
#: with the tuned recipe at its full schedule (schedules/). The conv16 pair grows the lighter-stem baseline, the
#: base of `zoo demo`, whose better model quotes this suite's from-scratch cost.
GROW_PRETRAINED = {
    "grow-pretrained": ("fmnist_baseline_grown", "fmnist_baseline_d8"),
    "grow-pretrained-conv16": ("fmnist_conv16_grown", "fmnist_conv16_d8"),
}


def _grow_pretrained_suite(suite_name: str):
    grown_recipe, scratch_recipe = GROW_PRETRAINED[suite_name]

    def run(
        quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
    ) -> dict:
        return grow_pretrained(grown_recipe, scratch_recipe, quick, out, seeds, allow_mismatch, overrides)

    run.__doc__ = f"``grow_pretrained`` with {grown_recipe} against {scratch_recipe} from scratch."
    return suite(suite_name)(run)


def grow_pretrained(
    grown_recipe: str,
    scratch_recipe: str,
    quick: bool,
    out: Path,
    seeds: list[int],
    allow_mismatch: bool = False,
    overrides: list[str] | None = None,
) -> dict:
    """Grow a published baseline into a bigger model (``grown_recipe``; its clock starts from the published
    weights) vs that architecture trained from scratch (``scratch_recipe``). Headline keys: ``time_ratio`` (grown
    wall-clock over scratch wall-clock, means over seeds), ``acc_delta`` (grown minus scratch, points) and
    ``acc_vs_base`` (grown minus the published model it started from, evaluated here on the same split, points).
    ``--quick``: a 10k-image subset, 1 epoch each, one seed (checks the path, not the goals)."""

    overrides = list(overrides or [])
    if quick:
        overrides, seeds = ["data.train_subset=10000", "schedule.epochs=1", *overrides], seeds[:1]
    grown = load_recipe(resolve_recipe_path(grown_recipe), overrides)
    d = grown.data
    if d.val_split is not None:  # the published model was trained on those images: no fair comparison with it
        raise ValueError(f"{grown_recipe}: data.val_split: the published base model saw the training set")
    base = evaluate_source(grown.model.pretrained, d.name, path=d.path, batch_size=d.eval_batch_size,
                           classes=d.classes, test_subset=d.test_subset)  # fmt: skip
    arms = [Arm("scratch", scratch_recipe), Arm("grown", grown_recipe)]
    records = run_arms(arms, seeds, out / "runs", overrides, allow_mismatch)
    acc, wall = mean_by_arm(records, "acc"), mean_by_arm(records, "wall_clock_s")
    res: dict = {"headline_arm": "grown", "base_model": grown.model.pretrained, "base_acc_pct": 100 * base["acc"]}
    res.update(arms_report(records, "scratch", out, target_acc=acc["scratch"]))
    res["time_ratio"] = wall["grown"] / wall["scratch"]
    res["acc_delta"] = 100 * (acc["grown"] - acc["scratch"])
    res["acc_vs_base"] = 100 * (acc["grown"] - base["acc"])
    return res


for _name in GROW_PRETRAINED:
    _grow_pretrained_suite(_name)
