"""What a run did, read from its recipe and its ``metrics.jsonl`` records: the structure history (growth and
unfreezing events with the loss around each), one-line summaries of its routing and unfreezing schedules, and the
series the training-curve plot draws. Pure functions of run data; ``zoo.publish.card`` renders them into a card.
"""

from __future__ import annotations

from typing import Any


def fmt_value(v: Any) -> str:
    """A recipe value as a card shows it: floats without trailing zeros (``0.25``, ``1e-05``), others as ``str``."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_growth(stage: dict) -> str:
    parts = []
    if stage.get("depth") is not None:
        parts.append(f"depth -> {stage['depth']} ({stage.get('depth_op', 'zero')})")
    for key, label in (
        ("embed_dim", "width"),
        ("num_heads", "heads"),
        ("mlp_hidden", "MLP hidden"),
        ("img_size", "resolution"),
    ):
        if stage.get(key) is not None:
            parts.append(f"{label} -> {stage[key]}")
    if stage.get("noise"):
        parts.append(f"noise {stage['noise']:g}")
    return ", ".join(parts) or "no change"


def stage_start(stage: dict) -> str:
    """Where a growth / unfreeze stage starts: ``at 25%`` (fraction of training) or ``at step 1053``."""
    if stage.get("step") is not None:
        return f"at step {stage['step']}"
    return f"at {stage['at']:.0%}"


def ranges(values: list[int]) -> str:
    """[5, 6, 7, 9] -> '5-7, 9'."""
    out: list[list[int]] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def _blocks(a: int, b: int) -> str:
    return f"block {a}" if a == b else f"blocks {a}-{b}"


def _describe_trainable(g: int, depth: int | None) -> str:
    if g == 0:
        return "unfreeze: everything trains"
    if depth is None:
        return f"unfreeze: layer groups >= {g} train (group 0 = stem, 1..depth = blocks, then norm, head)"
    if g <= depth:
        frozen = "stem" + (f" and {_blocks(0, g - 2)}" if g > 1 else "")
        return f"unfreeze: {_blocks(g - 1, depth - 1)}, norm and head train ({frozen} frozen)"
    return "unfreeze: norm and head train" if g == depth + 1 else "unfreeze: head only trains"


def _depth_after(recipe: dict, config: dict, stages_done: int) -> int | None:
    """Block count after ``stages_done`` growth stages (None when the starting depth is not recorded)."""
    stages = (recipe.get("growth") or {}).get("stages") or []
    for st in reversed(stages[:stages_done]):
        if st.get("depth") is not None:
            return st["depth"]
    if recipe["model"].get("args", {}).get("depth") is not None:
        return recipe["model"]["args"]["depth"]
    if not any(st.get("depth") is not None for st in stages):
        return config.get("model_args", {}).get("depth")
    return None


def structure_events(records: list[dict], recipe: dict, config: dict, total_steps: int) -> list[dict]:
    """Stage boundaries from ``metrics.jsonl``: step, fraction of training, what changed, loss before / after."""
    stages = (recipe.get("growth") or {}).get("stages") or []
    events: list[dict] = []
    grown, trainable = 0, None
    for r in records:
        if "loss_after_event" in r and events and events[-1]["loss_after"] is None:
            events[-1]["loss_after"] = r["loss_after_event"]
        if not isinstance(r.get("event"), dict):
            continue
        ev, changes = r["event"], []
        now = int(ev.get("growth_stage", 0))
        for k in range(grown, now):
            changes.append(f"growth stage {k + 1}: " + (describe_growth(stages[k]) if k < len(stages) else "?"))
        tf = ev.get("trainable_from")
        if tf is not None and tf != trainable and (recipe.get("unfreeze") or trainable is not None):
            changes.append(_describe_trainable(int(tf), _depth_after(recipe, config, now)))
        grown, trainable = now, tf
        events.append(
            {
                "step": r["step"],
                "fraction": r["step"] / max(total_steps, 1),
                "changes": changes,
                "loss_before": r.get("loss_before"),
                "loss_after": None,
            }
        )
    return events


def routing_summary(recipe: dict, total_steps: int) -> str | None:
    r = recipe.get("routing")
    if not r:
        return None
    cap = r["capacity"]
    cap_s = (
        fmt_value(cap)
        if not isinstance(cap, list)
        else "per layer [" + ", ".join("dense" if c is None else fmt_value(c) for c in cap) + "]"
    )
    if r.get("start") is not None and r.get("anneal", 0) > 0:
        end = round(r["anneal"] * total_steps)
        sched = (
            f"capacity annealed from {fmt_value(r['start'])} to {cap_s} over the first {r['anneal']:.0%} of training "
        )
        sched += f"(steps 0-{end}), then constant"
    else:
        sched = f"capacity {cap_s} throughout training"
    weight = ""
    if r.get("weight", "sigmoid") == "tanh":
        weight = (
            f", token weight 1 + {fmt_value(r.get('weight_scale', 0.5))} tanh(score) on processed and skipped tokens"
        )
    return f"token routing on layers `{r['layers']}` ({r['router']} router, context `{r['context']}`{weight}): {sched}"


def unfreeze_summary(recipe: dict) -> str | None:
    u = recipe.get("unfreeze")
    if not u:
        return None
    if u["mode"] == "gradual":
        return f"gradual unfreezing: top {u['start_groups']} layer group(s) first, one more every {u['every']:.0%}"
    if u["mode"] == "freezeout":
        return f"FreezeOut: one more bottom layer group frozen every {u['every']:.0%} of training"
    stages = ", ".join(f"from group {s['trainable_from']} {stage_start(s)}" for s in u["stages"])
    return f"staged unfreezing: {stages}"


def training_series(records: list[dict]) -> dict[str, list[float]]:
    """Train loss and eval accuracy by step (what the training-curve plot draws)."""
    out: dict[str, list[float]] = {"step": [], "loss": [], "eval_step": [], "eval_acc": []}
    for r in records:
        if "loss" in r:
            out["step"].append(r["step"])
            out["loss"].append(r["loss"])
        if "eval_acc" in r:
            out["eval_step"].append(r["step"])
            out["eval_acc"].append(r["eval_acc"])
    return out
