"""The ``unfreeze`` suite: step time with a frozen prefix of blocks (no backward through it) against full training."""

from __future__ import annotations

from pathlib import Path

from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, run_arms
from zoo.measure.steps import seeded_model, train_step_fn
from zoo.measure.stopwatch import interleaved_times, median, speedup
from zoo.training.freezing import set_trainable_from


# ----------------------------------------------------------------------------------------------------- unfreeze
def _frozen(model, first_trainable: int):

    set_trainable_from(model, first_trainable)
    return model


@suite("unfreeze")
def unfreeze_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Step time with the bottom half frozen vs fully trainable (same model and batch), and the transfer experiment:
    pretrain on Fashion-MNIST classes 0-4, fine-tune on 5-9 with linear probe / full / full+LLRD / gradual+LLRD."""
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
        arms = [
            Arm("full_ft", "fmnist_ft_5to9_full", [src]),
            Arm("linear_probe", "fmnist_ft_5to9_linear", [src]),
            Arm("full_ft_llrd", "fmnist_ft_5to9_llrd", [src]),
            Arm("gradual_llrd", "fmnist_ft_5to9_gradual", [src]),
        ]
        records = run_arms(arms, seeds, out / "runs", extra_overrides=overrides, allow_mismatch=allow_mismatch)
        res.update(arms_report(records, "full_ft", out))
    return res
