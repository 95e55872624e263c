"""The ``routing-baseline`` suite: token routing from scratch on the tuned 49-token baseline at its full schedule,
beside what users would try instead for the same training FLOPs.

Arms, each trained for the baseline recipe's epochs (``schedules/fmnist_baseline_conv16.yaml``), one run per seed:
- ``dense``: the baseline;
- ``routed`` (the headline, fixed before the suite runs): ``schedules/fmnist_conv16_routed.yaml``;
- ``dropped``: the baseline with random patch-token dropping in training (timm's ``PatchDropout``, identity at
  inference), keeping as many tokens as makes one training step cost the routed model's FLOPs;
- ``merged``: the baseline with ToMe token merging in training and inference, ``r`` matched the same way;
- the same three at a second, milder budget (suffix ``_c0.5``): the routed recipe with its routed blocks at capacity
  ``SECOND_CAPACITY``, dropping and merging matched to that model's training FLOPs. Two budgets, because a user
  choosing between the families needs to see whether their order holds as the saving shrinks.
Step times are taken round-robin on each arm's freshly built model beside the dense one (training at batch 128,
inference at batch 256), so the throughput ratios come from one run; accuracy and wall-clock come from the arms'
runs. The goals judge the headline's training speed-up (its runs' mean wall-clock against the dense arm's, so the
capacity anneal is paid for) and its accuracy against the dense arm at equal epochs. One more arm,
``routed_equal_time``, trains the headline for the dense arm's wall-clock (as many more epochs as its measured
speed-up buys), the other comparison a user with a fixed time budget makes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path

from zoo.bench.arms import epochs_from, mean_by_arm
from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, check_comparable, run_arms
from zoo.data.datasets import build_datasets
from zoo.measure.compare import compare_models
from zoo.measure.flops import step_flops
from zoo.measure.steps import train_step_fn
from zoo.measure.stopwatch import interleaved_times, interval_text, paired_speedup
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path
from zoo.training.stage_plan import build_model

DENSE_RECIPE = "fmnist_baseline_conv16"
ROUTED_RECIPE = "fmnist_conv16_routed"
HEADLINE = "routed"
#: the second budget: the routed recipe's routed blocks at this capacity (its own: 0.25), arms suffixed ``_c0.5``
SECOND_CAPACITY = 0.5
#: the batches the step times are taken at: training as the recipes train, inference as the convert suite serves
TRAIN_BATCH, INFER_BATCH = 128, 256


def nearest_setting(costs: dict[Hashable, float], target: float) -> Hashable:
    """The setting whose cost is nearest ``target``; on a tie the first listed (list the mildest reduction first)."""
    return min(costs, key=lambda k: abs(costs[k] - target))


def drop_rate_for(kept: int, num_patches: int) -> float:
    """The ``patch_drop_rate`` at which timm's PatchDropout keeps exactly ``kept`` of ``num_patches`` tokens (it keeps
    ``int(num_patches * (1 - rate))``: aiming half a token above the count keeps float rounding from losing one)."""
    if not 1 <= kept <= num_patches:
        raise ValueError(f"kept tokens must be in [1, {num_patches}], got {kept}")
    if kept == num_patches:
        return 0.0  # no dropping (PatchDropout is then not even built)
    return round(1.0 - (kept + 0.5) / num_patches, 6)


def matched_overrides(build: Callable[[list[str]], object], num_patches: int, target_flops: float) -> dict:
    """Dropping and merging settings whose training step costs ``target_flops`` (the routed model's), each searched
    over every setting there is (the counts are exact and cheap at batch 2). ``build(overrides)`` makes the dense
    recipe's model with ``overrides``. Returns {arm: {"overrides": [...], "train_flops": ...}}."""

    def train_flops(overrides: list[str]) -> float:
        return float(step_flops(build(overrides), 2, train=True))

    drops = {
        kept: [f"model.args.patch_drop_rate={drop_rate_for(kept, num_patches)}"] for kept in range(num_patches, 0, -1)
    }
    merges = {r: [f"merging.r={r}"] for r in range(0, num_patches // 2 + 1)}  # ToMe merges at most half per block
    out = {}
    for arm, options in (("dropped", drops), ("merged", merges)):
        costs = {k: train_flops(o) for k, o in options.items()}
        best = nearest_setting(costs, target_flops)
        out[arm] = {"overrides": options[best], "train_flops": costs[best]}
    return out


def capacity_override(capacities: float | list[float | None], capacity: float) -> str:
    """The override that puts every routed block of a ``routing.capacity`` (one value for all blocks, or a list
    where ``None`` is a dense block) at ``capacity`` and leaves the dense blocks dense."""
    if not isinstance(capacities, list):
        return f"routing.capacity={capacity:g}"
    return "routing.capacity=[" + ", ".join("null" if c is None else f"{capacity:g}" for c in capacities) + "]"


def budgets(routed_capacities: float | list[float | None]) -> dict[str, list[str]]:
    """Arm-name suffix -> the routed recipe's overrides, one entry per budget: the recipe as it is (no suffix: the
    headline) and its routed blocks at ``SECOND_CAPACITY``."""
    return {"": [], f"_c{SECOND_CAPACITY:g}": [capacity_override(routed_capacities, SECOND_CAPACITY)]}


def speed_rows(models: dict, rounds: int) -> list[dict]:
    """Per model: training and inference step-time speed-ups over ``dense``, timed round-robin in this run: the
    median per-round ratio with its 95% interval (``paired_speedup``)."""
    train = interleaved_times(
        {k: train_step_fn(m, TRAIN_BATCH) for k, m in models.items()}, rounds=rounds, warmup=1, progress="train steps"
    )
    infer = compare_models(models, batch=INFER_BATCH, rounds=rounds, reference="dense")  # switches them to eval
    rows = []
    for k, m in models.items():
        tr, tr_lo, tr_hi = paired_speedup(train, "dense", k)
        rows.append({
            "arm": k,
            "train MFLOP/img": step_flops(m, 2, train=True) / 2e6,
            "train_speedup": tr,
            "train 95% CI": interval_text(tr_lo, tr_hi),
            f"infer_speedup b{INFER_BATCH}": infer[k]["infer_speedup"],
            "infer 95% CI": interval_text(*infer[k]["infer_speedup_ci"]),
        })  # fmt: skip
    return rows


@suite("routing-baseline")
def routing_baseline_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Routed from scratch vs the dense baseline, token dropping and token merging at the routed model's training
    FLOPs at two budgets (``budgets``), at equal epochs; and the headline at the dense arm's wall-clock. ``--quick``:
    a 5,000-image subset for half an epoch, one seed (checks the path, not the goals)."""
    overrides = list(overrides or [])
    rounds = 3 if quick else 10
    if quick:
        overrides, seeds = ["data.train_subset=5000", "schedule.epochs=0.5", *overrides], seeds[:1]
    d = load_recipe(resolve_recipe_path(DENSE_RECIPE), overrides).data
    bundle = build_datasets(d.name, path=d.path, classes=d.classes, test_subset=d.test_subset, val_split=d.val_split)

    def build(recipe_name: str, extra: list[str]):
        return build_model(load_recipe(resolve_recipe_path(recipe_name), [*overrides, *extra]), bundle)

    dense = build(DENSE_RECIPE, [])
    num_patches = dense.patch_embed.num_patches
    routed_recipe = load_recipe(resolve_recipe_path(ROUTED_RECIPE), overrides)
    arms, models, matched = [Arm("dense", DENSE_RECIPE)], {"dense": dense}, {}
    for suffix, routed_extra in budgets(routed_recipe.routing.capacity).items():
        routed = build(ROUTED_RECIPE, routed_extra)
        found = matched_overrides(lambda o: build(DENSE_RECIPE, o), num_patches, step_flops(routed, 2, train=True))
        arms.append(Arm(HEADLINE + suffix, ROUTED_RECIPE, routed_extra))
        models[HEADLINE + suffix] = routed
        for name, m in found.items():
            arms.append(Arm(name + suffix, DENSE_RECIPE, m["overrides"]))
            models[name + suffix] = build(DENSE_RECIPE, m["overrides"])
            matched[name + suffix] = m
    (out / "matched.json").write_text(json.dumps(matched, indent=2) + "\n")
    res: dict = {"headline_arm": HEADLINE, "matched": {n: m["overrides"] for n, m in matched.items()}}
    res["rows"] = speed_rows(models, rounds)
    head = next(r for r in res["rows"] if r["arm"] == HEADLINE)
    # steady-state step ratios at the target capacity; the headline train_speedup below is the runs' own, which
    # also pays for the capacity anneal at the start
    res.update(step_train_speedup=head["train_speedup"], infer_speedup=head[f"infer_speedup b{INFER_BATCH}"])

    records = run_arms(arms, seeds, out / "runs", overrides, allow_mismatch)
    wall = mean_by_arm(records, "wall_clock_s")
    # equal wall-clock: the headline given as many more epochs as its measured speed buys (from the runs above, so a
    # rerun that reuses them asks for the same length and reuses this arm too)
    epochs = epochs_from(overrides, routed_recipe.schedule.epochs)
    res["equal_time_epochs"] = round(epochs * wall["dense"] / wall[HEADLINE], 2)
    equal = Arm(f"{HEADLINE}_equal_time", ROUTED_RECIPE, [f"schedule.epochs={res['equal_time_epochs']}"])
    records += run_arms([equal], seeds, out / "runs", overrides, allow_mismatch)
    check_comparable(records, allow_mismatch)
    acc = mean_by_arm(records, "acc")
    res["train_speedup"] = wall["dense"] / wall[HEADLINE]
    res["acc_delta"] = 100 * (acc[HEADLINE] - acc["dense"])
    res["acc_delta_equal_time"] = 100 * (acc[equal.name] - acc["dense"])
    res.update(arms_report(records, "dense", out))
    return res
