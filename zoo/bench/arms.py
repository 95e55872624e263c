"""Pure helpers over training arms and their records: the epoch count a suite's overrides set, per-arm means, and
the loss spikes around growth events (tested without training)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from zoo.training.run_folder import METRICS_FILE


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


def arm_spikes(runs_dir: Path, arm: str, seeds: list[int]) -> list[dict]:
    per_seed = []
    for s in seeds:
        path = runs_dir / arm / f"seed{s}" / METRICS_FILE
        per_seed.append(growth_events(path.read_text().splitlines()))
    return mean_spikes(per_seed)
