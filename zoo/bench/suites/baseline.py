"""The ``baseline`` suite: the tuned dense baseline every efficiency comparison starts from, trained for several
seeds on the full training set and evaluated on the test split, with each run's training wall-clock and training
compute beside its accuracy.

Compute is stated so that machines can be compared: 3 x forward FLOPs per image (as ``zoo profile`` counts them) x
images seen. Wall-clock depends on the CPU: the 15-minute budget was set on an AVX-512 machine, so there the goal is
checked on seconds (``wall_clock_s_max``), and on any machine on compute (``train_tflop_max``).
"""

from __future__ import annotations

from pathlib import Path

from zoo.bench.arms import mean_by_arm
from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, run_arms
from zoo.bench.stats import mean_ci
from zoo.data.datasets import build_datasets
from zoo.measure.flops import step_flops
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path
from zoo.training.stage_plan import build_model

#: the dense baseline recipe (schedules/): its export is the reference model of the zoo
BASELINE_RECIPE = "fmnist_baseline"

#: the capability on which the wall-clock budget was set (``torch.backends.cpu.get_cpu_capability()``)
BUDGET_CAPABILITY = "AVX512"


def forward_flops_per_image(recipe_name: str, overrides: list[str]) -> float:
    """Forward FLOPs of one image through the recipe's model, counted as ``zoo profile`` counts them."""
    recipe = load_recipe(resolve_recipe_path(recipe_name), overrides)
    bundle = build_datasets(recipe.data.name, train_subset=16, test_subset=16)
    batch = 8
    return step_flops(build_model(recipe, bundle), batch, train=False) / batch


def training_tflop(fwd_flops_per_image: float, steps: int, batch_size: int) -> float:
    """Training compute of a run in TFLOP: 3 x forward FLOPs (forward + a backward of twice its cost) x images seen."""
    return 3 * fwd_flops_per_image * steps * batch_size / 1e12


def budget_keys(records: list[dict], capability: str | None) -> dict:
    """The headline numbers the goals judge: mean test accuracy in percent, the slowest run's wall-clock (only on a
    machine of ``BUDGET_CAPABILITY``: elsewhere seconds are not comparable with the budget) and the largest run's
    training compute."""
    acc = mean_ci([r["acc"] * 100 for r in records])
    keys = {"acc_mean_pct": acc["mean"], "acc_ci95_lo_pct": acc["ci_low"], "acc_ci95_hi_pct": acc["ci_high"]}
    if capability == BUDGET_CAPABILITY:
        keys["wall_clock_s_max"] = max(r["wall_clock_s"] for r in records)
    else:
        keys["wall_clock_s_max_unbudgeted"] = max(r["wall_clock_s"] for r in records)
    keys["train_tflop_max"] = max(r["train_tflop"] for r in records)
    return keys


@suite("baseline")
def baseline_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """``BASELINE_RECIPE`` for every seed (default 0, 1, 2) on the full training set, test accuracy with its 95%
    interval, each run's wall-clock and training TFLOP, and the machine's CPU capability.
    ``--quick``: a 10k-image subset for 1 epoch, one seed (checks the path, not the goal)."""

    overrides = list(overrides or [])
    if quick:
        overrides, seeds = ["data.train_subset=10000", "schedule.epochs=1", *overrides], seeds[:1]
    records = run_arms([Arm("baseline", BASELINE_RECIPE)], seeds, out / "runs", overrides, allow_mismatch)
    recipe = load_recipe(resolve_recipe_path(BASELINE_RECIPE), overrides)
    fwd = forward_flops_per_image(BASELINE_RECIPE, overrides)
    for r in records:
        r["train_tflop"] = training_tflop(fwd, r["steps"], recipe.data.batch_size)
    capability = records[0]["manifest"].get("cpu_capability")
    res: dict = {"recipe": BASELINE_RECIPE, "cpu_capability": capability, "fwd_gflop_per_image": fwd / 1e9}
    res.update(budget_keys(records, capability))
    res["img_per_s_mean"] = mean_by_arm(records, "img_per_s")["baseline"]
    res["rows"] = [
        {"seed": r["seed"], "test acc %": 100 * r["acc"], "wall-clock s": r["wall_clock_s"],
         "train TFLOP": r["train_tflop"], "img/s": r["img_per_s"]}
        for r in records
    ]  # fmt: skip
    res.update(arms_report(records, "baseline", out))
    return res
