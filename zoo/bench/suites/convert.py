"""The ``convert`` suite: the published dense baseline made faster for inference, and what each way costs.

Three kinds of rows, all against the dense source model on the same evaluation split:
- training-free token merging (ToMe) swept over ``r``: deterministic, so measured once;
- conversions fine-tuned with the dense model as teacher (``schedules/fmnist_baseline_to_merged.yaml``,
  ``schedules/fmnist_baseline_to_routed.yaml``), one run per seed;
- the control: the merged recipe without merging (the dense model fine-tuned the same way, distillation included),
  so that what a conversion keeps is not mistaken for what the extra training added.

Inference throughput is timed round-robin at batch 256 (``compare_models``), every model beside the dense one in
one run. The headline numbers are those of ``HEADLINE``, fixed before the suite runs (chosen on validation pilots,
see CHANGELOG.md), so the suite cannot pick its best arm after seeing the test split.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, check_comparable, run_arms
from zoo.data.datasets import build_datasets
from zoo.hub import load_model
from zoo.measure.compare import compare_models
from zoo.measure.stopwatch import interval_text
from zoo.models.pretrained import resolve_local_dir
from zoo.training.evaluation import accuracy
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path

MERGED_RECIPE = "fmnist_baseline_to_merged"
ROUTED_RECIPE = "fmnist_baseline_to_routed"
#: tokens merged per block in the training-free sweep (49 patch tokens, 4 blocks)
MERGE_SWEEP = (8, 12, 16, 24)
#: the arm whose numbers the goals judge: chosen on validation and CPU speed before the suite ran (CHANGELOG: the
#: conversion pilots; the cls-attention routed conversion kept the base's validation accuracy at 1.44x, merging r=16
#: at 1.28x)
HEADLINE = "routed_kd"


def conversion_arms() -> list[Arm]:
    return [
        Arm("merged_kd", MERGED_RECIPE),
        Arm("routed_kd", ROUTED_RECIPE),
        Arm("dense_kd_control", MERGED_RECIPE, ["merging=null"]),
    ]


def merged_copy(model, r: int):
    m = copy.deepcopy(model)
    m.set_merging({"r": r, "layers": "all"})
    return m


def speed_rows(models: dict, accs: dict[str, float], rounds: int) -> list[dict]:
    """One row per model: top-1, its difference to the dense source, forward MFLOP, img/s at batch 256 and the
    speed-up over the dense model (the median of per-round ratios, with its 95% interval), all timed side by side."""
    prof = compare_models(models, batch=256, rounds=rounds, reference="dense")
    return [
        {
            "model": name,
            "top-1 %": 100 * accs[name],
            "Δ pt": 100 * (accs[name] - accs["dense"]),
            "MFLOP": prof[name]["flops_per_img"] / 1e6,
            "img/s b256": prof[name]["infer_img_per_s"],
            "speedup": prof[name]["infer_speedup"],
            "speedup 95% CI": interval_text(*prof[name]["infer_speedup_ci"]),
        }
        for name in models
    ]


@suite("convert")
def convert_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Dense -> merged / routed conversions of the recipes' pretrained model. ``--quick``: the training-free sweep and
    one seed of each arm on a 5,000-image subset for a quarter epoch (checks the path, not the goal)."""
    overrides = list(overrides or [])
    rounds = 4 if quick else 10
    if quick:
        overrides, seeds = ["data.train_subset=5000", "schedule.epochs=0.25", *overrides], seeds[:1]
    recipe = load_recipe(resolve_recipe_path(MERGED_RECIPE), overrides)
    d = recipe.data
    source = resolve_local_dir(recipe.model.pretrained)
    dense = load_model(source)
    bundle = build_datasets(d.name, path=d.path, classes=d.classes, test_subset=d.test_subset, val_split=d.val_split)

    def top1(model) -> float:  # the split the fine-tune runs evaluate on (test, or the validation hold-out)
        return accuracy(model, bundle.test, None, bundle.mean, bundle.std, d.eval_batch_size)["acc"]

    free = {"dense": dense} | {f"merge_r{r}": merged_copy(dense, r) for r in MERGE_SWEEP}
    accs = {name: top1(m) for name, m in free.items()}
    res: dict = {"source": recipe.model.pretrained, "eval_split": bundle.eval_split, "dense_acc": accs["dense"]}
    res["training_free"] = speed_rows(free, accs, rounds)

    arms = conversion_arms()
    records = run_arms(arms, seeds, out / "runs", overrides, allow_mismatch)
    check_comparable(records, allow_mismatch)
    by_arm = {a.name: [r["acc"] for r in records if r["arm"] == a.name] for a in arms}
    first = {a.name: load_model(f"local-dir:{out / 'runs' / a.name / f'seed{seeds[0]}' / 'model'}") for a in arms}
    mean_accs = {"dense": accs["dense"], **{k: statistics.fmean(v) for k, v in by_arm.items()}}
    res["rows"] = speed_rows({"dense": dense, **first}, mean_accs, rounds)  # accuracy: mean over seeds
    head = next(r for r in res["rows"] if r["model"] == HEADLINE)
    res.update(headline_arm=HEADLINE, infer_speedup=head["speedup"], acc_delta=head["Δ pt"])
    res["infer_speedup_ci"] = head["speedup 95% CI"]
    res.update(arms_report(records, "dense_kd_control", out))
    return res
