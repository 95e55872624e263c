"""The suite registry: every ``zoo bench`` suite by name, and the issues' goals for its headline numbers.

A suite measures side by side in one run and returns a JSON-safe summary whose headline keys the goals name
(``bf16_speedup``, ``step_time_ratio``, ``train_speedup``, ...). ``quick`` suites take about two minutes and still
measure real ratios (fewer rounds, fewer configurations, no multi-seed training); full suites add the
configurations and the multi-seed accuracy arms. The suites register themselves from ``zoo.bench.suites``.
"""

from __future__ import annotations

from collections.abc import Callable

SUITES: dict[str, Callable[..., dict]] = {}

# the issues' targets for each suite's headline numbers: (comparison, value)
GOALS: dict[str, dict[str, tuple[str, float]]] = {
    # mean test top-1 over the seeds; every run within 15 minutes on an AVX-512 CPU and within the old baseline's
    # training compute (0.0278 GFLOP x 3 x 779k images) on any CPU
    "baseline": {"acc_mean_pct": (">=", 92.0), "wall_clock_s_max": ("<=", 900.0), "train_tflop_max": ("<=", 65.0)},
    "overhead": {"step_time_ratio": ("<=", 1.03)},
    "precision": {"bf16_speedup": (">=", 1.7)},
    "routing": {
        "train_speedup": (">=", 1.55),
        "infer_speedup": (">=", 1.5),
        "infer_speedup_b1": (">=", 0.95),
        "acc_delta_equal_epochs": (">=", -0.5),  # routed c0.25 minus dense, points
        "acc_delta_equal_time": (">", 0.0),
    },
    # and a fine-tune that freezes: >= 1.3x the full fine-tune's speed at <= 0.5 pt accuracy loss
    "unfreeze": {"frozen_half_speedup": (">=", 1.5), "speedup": (">=", 1.3), "acc_delta": (">=", -0.5)},
    # the headline conversion of the published dense baseline: inference at batch 256, accuracy vs the dense model
    "convert": {"infer_speedup": (">=", 1.4), "acc_delta": (">=", -0.5)},
    "memory": {"ckpt_mem_ratio": (">=", 3.0), "ckpt_time_ratio": ("<=", 1.35), "rev_depth_mem_ratio": ("<=", 1.2)},
    "growth": {"speedup": (">=", 1.6), "acc_delta": (">=", -0.3), "acc_vs_control": (">", 0.0)},
}

# routed from scratch on the 49-token baseline at its full schedule: >= 1.3x training throughput (the runs' mean
# wall-clock, anneal included) within 0.5 pt of the dense arm's accuracy at equal epochs
GOALS["routing-baseline"] = {"train_speedup": (">=", 1.3), "acc_delta": (">=", -0.5)}
GOALS["growth-long"] = GOALS["growth"]  # the same goals, checked at a length where the arms are nearly trained
GOALS["growth-baseline"] = GOALS["growth"]  # and against the tuned baseline at its full schedule
# the published baseline grown while fine-tuning: at most half the from-scratch run's wall-clock, at least its
# accuracy, and better than the model it started from
GOALS["grow-pretrained"] = {"time_ratio": ("<=", 0.5), "acc_delta": (">=", 0.0), "acc_vs_base": (">", 0.0)}
GOALS["grow-pretrained-conv16"] = GOALS["grow-pretrained"]

# growth given the dense run's time: ahead of dense, and the time really equal (within this machine's ~5% noise)
GOALS["growth-equal-time"] = {"time_ratio": ("<=", 1.05), "acc_delta_equal_time": (">", 0.0)}


def suite(name: str):
    def deco(fn):
        SUITES[name] = fn
        return fn

    return deco
