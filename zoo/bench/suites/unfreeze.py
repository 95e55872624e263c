"""The ``unfreeze`` suite: step time with a frozen prefix of blocks (no backward through it) against full training."""

from __future__ import annotations

from pathlib import Path

from zoo.bench.arms import mean_by_arm
from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, run_arms
from zoo.measure.steps import seeded_model, train_step_fn
from zoo.measure.stopwatch import interleaved_times, median, speedup
from zoo.training.freezing import set_trainable_from

# ----------------------------------------------------------------------------------------------------- unfreeze
#: the fine-tuning arms (schedules/): the reference, the top-down schedules measured before, and bottom-up freezing:
#: FreezeOut's plain schedule (early, no annealing), FreezeOut annealed and scaled (chosen on validation; with and
#: without a cached frozen prefix, and a later variant), adaptive freezing, and the stem frozen and cached throughout
FINE_TUNES = {
    "full_ft": "fmnist_ft_5to9_full",
    "linear_probe": "fmnist_ft_5to9_linear",
    "full_ft_llrd": "fmnist_ft_5to9_llrd",
    "gradual_llrd": "fmnist_ft_5to9_gradual",
    "freezeout": "fmnist_ft_5to9_freezeout",
    "freezeout_scaled": "fmnist_ft_5to9_freezeout_scaled",
    "freezeout_scaled_cached": "fmnist_ft_5to9_freezeout_scaled_cached",
    "freezeout_scaled_late": "fmnist_ft_5to9_freezeout_scaled_late",
    "adaptive": "fmnist_ft_5to9_adaptive",
    "stem_cached": "fmnist_ft_5to9_stem_cached",
}
#: the schedule the goal is judged on, chosen on validation before the suite ran (CHANGELOG)
HEADLINE_ARM = "freezeout_scaled"


def _frozen(model, first_trainable: int):

    set_trainable_from(model, first_trainable)
    return model


@suite("unfreeze")
def unfreeze_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Step time with the bottom half frozen vs fully trainable (same model and batch), and the transfer experiment on
    the tuned baseline: pretrain on Fashion-MNIST classes 0-4 with the baseline recipe, fine-tune on 5-9 for 3 epochs
    each way (``FINE_TUNES``). Headline: ``arms`` (accuracy with 95% intervals, wall-clock speedup and peak memory
    against the full fine-tune, building a prefix cache included in its arm's time), and for ``HEADLINE_ARM``
    ``speedup`` (full fine-tune wall-clock over its wall-clock, means over seeds) and ``acc_delta`` (points)."""
    rounds = 4 if quick else 10
    name, batch = "zoo_vit_mini_p4", 128  # 192 wide, 12 blocks
    depth = 12
    fns = {
        "trainable": train_step_fn(seeded_model(name), batch),
        # group 0 is the stem, groups 1..12 the blocks: trainable from group 7 freezes the stem and blocks 0-5
        "frozen_half": train_step_fn(_frozen(seeded_model(name), 1 + depth // 2), batch),
    }
    t = interleaved_times(fns, rounds=rounds, warmup=1, progress="unfreeze step")
    res: dict = {
        "model": name,
        "batch": batch,
        "trainable_s": median(t["trainable"]),
        "frozen_half_s": median(t["frozen_half"]),
        "frozen_half_speedup": speedup(t, "trainable", "frozen_half"),
    }
    if not quick:
        pre_dir = out / "pretrain_0to4"
        run_arms([Arm("pretrain_0to4", "fmnist_pretrain_0to4")], [0], pre_dir, overrides, allow_mismatch)
        src = f"model.pretrained=local-dir:{pre_dir / 'pretrain_0to4' / 'seed0' / 'model'}"
        arms = [Arm(arm, recipe, [src]) for arm, recipe in FINE_TUNES.items()]
        records = run_arms(arms, seeds, out / "runs", extra_overrides=overrides, allow_mismatch=allow_mismatch)
        res.update(arms_report(records, "full_ft", out))
        res.update(freezing_headline(records))
    return res


def freezing_headline(records: list[dict], arm: str = HEADLINE_ARM, reference: str = "full_ft") -> dict:
    """The goal's numbers: ``speedup`` (the reference's mean wall-clock over the arm's) and ``acc_delta`` (mean
    accuracy difference, points)."""
    acc, wall = mean_by_arm(records, "acc"), mean_by_arm(records, "wall_clock_s")
    return {"headline_arm": arm, "speedup": wall[reference] / wall[arm], "acc_delta": 100 * (acc[arm] - acc[reference])}
