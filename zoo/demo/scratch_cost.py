"""The measured cost of training a demo model's architecture from scratch, quoted from a growth benchmark's kept
results rather than paid again: a from-scratch run of the bigger model takes longer than the whole demo."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.training.recipe import Recipe, RecipeError, load_recipe
from zoo.utils.strict_yaml import StrictYAMLError

#: the arms of a grow-pretrained suite: the recipe the demo runs, and the same architecture from scratch
GROWN_ARM, SCRATCH_ARM = "grown", "scratch"


def comparable_identity(recipe: Recipe) -> dict:
    """What must agree for a kept run to be the demo's recipe: everything but the seed and where the base weights
    come from (the demo loads the published model's hub folder, a suite may name its tag: the same weights)."""
    ident = recipe.identity()
    ident.get("train", {}).pop("seed", None)
    ident.get("model", {}).pop("pretrained", None)
    return ident


def scratch_quote(results: Path, suite: str, recipe: Recipe) -> dict | None:
    """From ``results/SUITE`` (kept by ``zoo bench SUITE``): the from-scratch arm's accuracy (mean and 95% interval)
    and wall-clock, with the grown arm's, when that suite's grown arm trained ``recipe`` (seed aside) at full length;
    None when there is no such measurement (the demo then says so instead of quoting another model's cost)."""
    folder = Path(results) / suite
    try:
        summary = json.loads((folder / "summary.json").read_text())
        kept = sorted((folder / GROWN_ARM).glob("seed*/recipe.yaml"))
        same = bool(kept) and comparable_identity(load_recipe(kept[0])) == comparable_identity(recipe)
    except (OSError, json.JSONDecodeError, RecipeError, StrictYAMLError):
        return None
    if not same or summary.get("quick"):
        return None
    arms = {a["arm"]: a for a in summary.get("arms", [])}
    if SCRATCH_ARM not in arms or GROWN_ARM not in arms:
        return None
    scratch, grown = arms[SCRATCH_ARM], arms[GROWN_ARM]
    machine = summary.get("manifest", {})
    return {
        "suite": suite,
        "seeds": scratch["n"],
        "scratch_acc": scratch["acc"]["mean"],
        "scratch_acc_ci": [scratch["acc"]["ci_low"], scratch["acc"]["ci_high"]],
        "scratch_train_s": scratch["wall_clock_s"]["mean"],
        "grown_acc": grown["acc"]["mean"],
        "grown_train_s": grown["wall_clock_s"]["mean"],
        "cpu": f"{machine.get('cpu_model', 'unknown CPU')} ({machine.get('cpu_capability', '?')}), "
        f"{machine.get('cpu_count', '?')} cores",
        "date": str(machine.get("created_at", ""))[:10],
    }
