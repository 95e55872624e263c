"""The ``routing`` suite: routed vs dense step time and FLOPs, and its multi-seed accuracy arms (from scratch at
equal epochs and equal time, and the dense -> routed fine-tune against a no-routing control).

The arms of one comparison share their epoch count and warm-up fraction, set here rather than in the recipes, so the
recipes' own lengths cannot make a comparison unequal by accident. Suite-wide ``--set`` overrides come first and each
arm's own overrides last, so an arm's defining change (its capacity, its epoch count) always wins.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from zoo.bench.arms import epochs_from, mean_by_arm, without_key
from zoo.bench.registry import suite
from zoo.bench.report import arms_report
from zoo.bench.runner import Arm, check_comparable, run_arms
from zoo.hub import load_model
from zoo.measure.flops import step_flops
from zoo.measure.steps import infer_step_fn, seeded_model, train_step_fn
from zoo.measure.stopwatch import interleaved_times, speedup


@suite("routing")
def routing_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Routed vs dense ViT-Ti/16 shape (192 wide, 12 blocks, 196 patch tokens): every other block routed."""
    capacities = [0.25] if quick else [0.5, 0.25, 0.125]
    batches = [1, 128] if quick else [1, 32, 128]
    rounds = 3 if quick else 8
    name = "zoo_vit_tiny_p16"
    res: dict = {"model": name, "configs": []}
    for cap in capacities:
        routing = {"capacity": cap, "layers": "every_other"}
        flops_ratio = step_flops(seeded_model(name), 1, train=False) / step_flops(
            seeded_model(name, routing=routing), 1, train=False
        )
        train_flops_ratio = step_flops(seeded_model(name), 2, train=True) / step_flops(
            seeded_model(name, routing=routing), 2, train=True
        )
        for batch in batches:
            row = {"capacity": cap, "batch": batch, "flops_ratio": flops_ratio, "train_flops_ratio": train_flops_ratio}
            infer = {
                "dense": infer_step_fn(seeded_model(name), batch),
                "routed": infer_step_fn(seeded_model(name, routing=routing), batch),
            }
            t = interleaved_times(
                infer, rounds=rounds * (3 if batch == 1 else 1), warmup=2, progress=f"infer c{cap} b{batch}"
            )
            row["infer_speedup"] = speedup(t, "dense", "routed")
            if batch > 1:
                tr = {
                    "dense": train_step_fn(seeded_model(name), batch),
                    "routed": train_step_fn(seeded_model(name, routing=routing), batch),
                }
                t = interleaved_times(tr, rounds=rounds, warmup=1, progress=f"train c{cap} b{batch}")
                row["train_speedup"] = speedup(t, "dense", "routed")
                row["train_vs_flops"] = row["train_speedup"] / train_flops_ratio
            row["infer_vs_flops"] = row["infer_speedup"] / flops_ratio
            res["configs"].append(row)
    head = next(r for r in res["configs"] if r["capacity"] == 0.25 and r["batch"] == 128)
    b1 = next(r for r in res["configs"] if r["capacity"] == 0.25 and r["batch"] == 1)
    res.update(train_speedup=head["train_speedup"], infer_speedup=head["infer_speedup"],
               infer_speedup_b1=b1["infer_speedup"], flops_ratio=head["flops_ratio"])  # fmt: skip
    if not quick:
        records, extra = routing_accuracy(capacities, seeds, out, overrides or [], allow_mismatch)
        res.update(extra)
        res.update(arms_report(records, "dense", out))
    return res


# ------------------------------------------------------------------------------------------------------ routing
def routing_accuracy(
    capacities: list[float], seeds: list[int], out: Path, overrides: list[str], allow_mismatch: bool
) -> tuple[list[dict], dict]:
    """Dense vs routed (every other block) at equal epochs, the headline capacity at the dense arm's wall-clock,
    and a trained dense model fine-tuned into a routed one.

    Returns (records for the arms table, extra summary keys).
    """
    epochs = epochs_from(overrides, 3.0)
    common = ["schedule.warmup=0.05", *overrides, f"schedule.epochs={epochs}"]
    runs = out / "runs"
    arms = [Arm("dense", "fmnist_micro_dense")] + [
        Arm(f"routed_c{c}", "fmnist_micro_routed", [f"routing.capacity={c}"]) for c in capacities
    ]
    records = run_arms(arms, seeds, runs, extra_overrides=common, allow_mismatch=allow_mismatch)
    walls = mean_by_arm(records, "wall_clock_s")
    head = "routed_c0.25"
    # equal wall-clock: the routed arm gets as many more epochs as its speed buys (measured on the equal-epoch runs)
    equal_epochs = round(epochs * walls["dense"] / walls[head], 2)
    equal = Arm(
        f"{head}_equal_time", "fmnist_micro_routed", ["routing.capacity=0.25", f"schedule.epochs={equal_epochs}"]
    )
    records += run_arms([equal], seeds, runs, extra_overrides=common, allow_mismatch=allow_mismatch)
    check_comparable(records, allow_mismatch)
    accs = mean_by_arm(records, "acc")
    extra = {
        "accuracy_epochs": epochs,
        "equal_time_epochs": equal_epochs,
        "acc_delta_equal_epochs": 100 * (accs[head] - accs["dense"]),
        "acc_delta_equal_time": 100 * (accs[equal.name] - accs["dense"]),
        # the fine-tune keeps its recipe's own length; other suite-wide overrides (data, precision) apply
        "finetune": routing_finetune(seeds, runs, without_key(overrides, "schedule.epochs"), allow_mismatch),
    }
    return records, extra


def routing_finetune(seeds: list[int], runs: Path, overrides: list[str], allow_mismatch: bool) -> dict:
    """Each seed's trained dense model fine-tuned into a routed one (schedules/fmnist_dense_to_routed.yaml: capacity
    annealed 1.0 -> 0.25) and, as the control, with the same recipe without routing: accuracy before and after,
    and the measured speed of the dense and routed models side by side."""

    before, after, control, records = [], [], [], []
    for s in seeds:
        src = runs / "dense" / f"seed{s}"
        source = f"model.pretrained=local-dir:{src / 'model'}"
        # the control continues training the same dense model with the same recipe minus routing: the source is
        # still improving, so "after - before" alone would credit routing with the extra epochs
        arms = [
            Arm("dense_to_routed", "fmnist_dense_to_routed", [source]),
            Arm("dense_finetune_control", "fmnist_dense_to_routed", [source, "routing=null"]),
        ]
        recs = run_arms(arms, [s], runs, extra_overrides=overrides, allow_mismatch=allow_mismatch)
        records += recs
        before.append(json.loads((src / "result.json").read_text())["final_acc"])
        after.append(next(r["acc"] for r in recs if r["arm"] == "dense_to_routed"))
        control.append(next(r["acc"] for r in recs if r["arm"] == "dense_finetune_control"))
    check_comparable(records, allow_mismatch)
    dense_dir, routed_dir = runs / "dense" / f"seed{seeds[0]}" / "model", runs / "dense_to_routed" / f"seed{seeds[0]}"
    models = {"dense": f"local-dir:{dense_dir}", "routed": f"local-dir:{routed_dir / 'model'}"}
    t_inf = interleaved_times({k: infer_step_fn(load_model(v), 256) for k, v in models.items()}, rounds=8, warmup=2)
    t_tr = interleaved_times({k: train_step_fn(load_model(v), 128) for k, v in models.items()}, rounds=6, warmup=1)
    return {
        "acc_before": statistics.fmean(before),
        "acc_after": statistics.fmean(after),
        "acc_control": statistics.fmean(control),
        "acc_delta_pt": 100 * (statistics.fmean(after) - statistics.fmean(before)),
        # the cost of routing itself: routed fine-tune minus the same fine-tune without routing
        "acc_vs_control_pt": 100 * (statistics.fmean(after) - statistics.fmean(control)),
        "per_seed": [
            {"seed": s, "before": b, "after": a, "control": c} for s, b, a, c in zip(seeds, before, after, control)
        ],
        "infer_speedup_b256": speedup(t_inf, "dense", "routed"),
        "train_speedup_b128": speedup(t_tr, "dense", "routed"),
    }
