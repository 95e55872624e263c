"""The multi-seed training experiments behind the full benchmark suites (routing accuracy, growth, attention variants).

Each experiment is a list of arms run by :func:`zoo.bench.run_arms` (one subprocess per run, resumable: finished
runs in ``out`` are reused) and summarised with :func:`zoo.report.summarize_arms`. The arms of one comparison
always share their epoch count and warm-up fraction, set here rather than in the recipes, so that the recipes'
own lengths (13 epochs for the baseline, 9 for the others) cannot make a comparison unequal by accident.
Suite-wide ``--set`` overrides from ``zoo bench`` come first and each arm's own overrides last, so an arm's
defining change (its capacity, its epoch count) always wins.

The pure parts (reading a suite's epoch count, the loss spikes of growth events, per-arm means) are separate
functions so they can be tested without training.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from zoo.bench import Arm, check_comparable, run_arms


def epochs_from(overrides: list[str], default: float) -> float:
    """The ``schedule.epochs`` a list of ``--set`` overrides asks for (the last one wins), else ``default``."""
    epochs = default
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "schedule.steps":  # would silently give the equal-time and compute-matched arms its length
            raise ValueError("zoo bench: --set schedule.steps: suites size their arms in epochs; use schedule.epochs")
        if key.strip() == "schedule.epochs":
            try:
                epochs = float(value)
            except ValueError:
                raise ValueError(f"zoo bench: --set schedule.epochs: not a number: {value!r}") from None
    return epochs


def without_key(overrides: list[str], key: str) -> list[str]:
    """``overrides`` minus those setting ``key``."""
    return [o for o in overrides if o.partition("=")[0].strip() != key]


def mean_by_arm(records: list[dict], key: str) -> dict[str, float]:
    """Mean of ``key`` over the seeds of each arm."""
    groups: dict[str, list[float]] = {}
    for r in records:
        groups.setdefault(r["arm"], []).append(float(r[key]))
    return {arm: statistics.fmean(v) for arm, v in groups.items()}


def growth_events(metrics_lines: list[str]) -> list[dict]:
    """Growth / unfreeze events of a run's metrics.jsonl with the training loss on the step before and after.

    The training loop logs ``{"step", "event", "loss_before"}`` at a stage boundary and ``{"step",
    "loss_after_event"}`` on the first step of the new stage; ``spike`` is after minus before (positive: the change
    cost loss). Single-step losses are noisy, so read spikes averaged over seeds.
    """
    events: list[dict] = []
    for line in metrics_lines:
        rec = json.loads(line)
        if "event" in rec:
            events.append({"step": rec["step"], "event": rec["event"], "loss_before": rec["loss_before"]})
        elif "loss_after_event" in rec and events and "loss_after" not in events[-1]:
            events[-1]["loss_after"] = rec["loss_after_event"]
            events[-1]["spike"] = rec["loss_after_event"] - events[-1]["loss_before"]
    return events


def mean_spikes(per_seed: list[list[dict]]) -> list[dict]:
    """Average the loss spike of the i-th event over seeds (runs of one arm share their event steps)."""
    if not per_seed:
        return []
    out = []
    for i, first in enumerate(per_seed[0]):
        spikes = [events[i]["spike"] for events in per_seed if i < len(events) and "spike" in events[i]]
        out.append(
            {
                "step": first["step"],
                "event": first["event"],
                "mean_spike": statistics.fmean(spikes) if spikes else None,
                "n": len(spikes),
            }
        )
    return out


def _arm_spikes(runs_dir: Path, arm: str, seeds: list[int]) -> list[dict]:
    per_seed = []
    for s in seeds:
        path = runs_dir / arm / f"seed{s}" / "metrics.jsonl"
        per_seed.append(growth_events(path.read_text().splitlines()))
    return mean_spikes(per_seed)


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
    from zoo.bench import interleaved_times, speedup
    from zoo.hub import load_model
    from zoo.steps import infer_step_fn, train_step_fn

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
    spikes = {name: _arm_spikes(runs, name, seeds) for name in growth}
    return records, {"epochs": epochs, "control_epochs": control_epochs, "loss_spikes": spikes}


# ------------------------------------------------------------------------------------------- attention variants
#: variant -> model args on zoo_vit_micro_p7 (4 x 4 patch grid): windows of 2 x 2, keys/values pooled 2 x 2,
#: keys/values projected from 16 to 8 tokens, one shared query/key projection.
ATTENTION_ARMS: dict[str, dict] = {
    "dense": {},
    "window": {"attn_type": "window", "attn_args": {"window_size": 2}},
    "spatial_reduction": {"attn_type": "spatial_reduction", "attn_args": {"sr_ratio": 2}},
    "lowrank": {"attn_type": "lowrank", "attn_args": {"k_len": 8}},
    "shared_qk": {"attn_type": "shared_qk"},
}


#: the attention variants at ViT-Ti/16 shape (14 x 14 grid), where attention is a real share of the cost
TINY_ATTENTION = {
    "dense": {},
    "window": {"attn_type": "window", "attn_args": {"window_size": 7}},
    "spatial_reduction": {"attn_type": "spatial_reduction", "attn_args": {"sr_ratio": 2}},
    "lowrank": {"attn_type": "lowrank", "attn_args": {"k_len": 64}},
    "shared_qk": {"attn_type": "shared_qk"},
}


def _args_override(args: dict) -> list[str]:
    return [f"model.args={json.dumps(args)}"] if args else []


def attention_arms(seeds: list[int], out: Path, overrides: list[str], allow_mismatch: bool) -> list[dict]:
    """Each attention variant in the baseline recipe (same epochs, LR and seed) on Fashion-MNIST."""
    epochs = epochs_from(overrides, 2.0)
    common = [*overrides, f"schedule.epochs={epochs}"]
    arms = [Arm(name, "fmnist_micro_dense", _args_override(args)) for name, args in ATTENTION_ARMS.items()]
    return run_arms(arms, seeds, out / "runs", extra_overrides=common, allow_mismatch=allow_mismatch)
