"""The measured cost of training a demo model's architecture from scratch, quoted from a growth benchmark's kept
results rather than paid again: a from-scratch run of the bigger model takes longer than the whole demo."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

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


def architecture(recipe: Recipe, num_classes: int, in_chans: int, img_size: int) -> tuple[str, dict]:
    """What a from-scratch recipe builds: its family and constructor arguments (built on the meta device: no
    weights are made), comparable with an exported folder's ``config.json``."""
    with torch.device("meta"):
        model = timm.create_model(recipe.model.name, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                  **recipe.model.args)  # fmt: skip
    return recipe.model.name, json.loads(json.dumps(model.model_args))


def scratch_quote(results: Path, suite: str, recipe: Recipe, config: dict) -> dict | None:
    """From ``results/SUITE`` (kept by ``zoo bench SUITE``): what training the demo model's architecture (``config``:
    its exported ``config.json``) from scratch cost, the scratch arm's accuracy (mean and 95% interval) and
    wall-clock, when that arm built exactly this architecture at full length; with the suite's grown arm's, when that
    arm trained ``recipe`` itself (seed aside). None when there is no such measurement (the demo then says so
    instead of quoting another model's cost)."""
    folder = Path(results) / suite
    args = config.get("model_args", {})
    try:
        summary = json.loads((folder / "summary.json").read_text())
        scratch_kept = sorted((folder / SCRATCH_ARM).glob("seed*/recipe.yaml"))
        grown_kept = sorted((folder / GROWN_ARM).glob("seed*/recipe.yaml"))
        same_arch = bool(scratch_kept) and architecture(
            load_recipe(scratch_kept[0]), config.get("num_classes"), args.get("in_chans"), args.get("img_size")
        ) == (config.get("architecture"), args)
        same_recipe = bool(grown_kept) and comparable_identity(load_recipe(grown_kept[0])) == comparable_identity(
            recipe
        )
    except (OSError, json.JSONDecodeError, RecipeError, StrictYAMLError, TypeError, RuntimeError):
        return None
    arms = {a["arm"]: a for a in summary.get("arms", [])}
    if not same_arch or summary.get("quick") or SCRATCH_ARM not in arms:
        return None
    scratch, grown = arms[SCRATCH_ARM], arms.get(GROWN_ARM) if same_recipe else None
    machine = summary.get("manifest", {})
    return {
        "suite": suite,
        "seeds": scratch["n"],
        "scratch_acc": scratch["acc"]["mean"],
        "scratch_acc_ci": [scratch["acc"]["ci_low"], scratch["acc"]["ci_high"]],
        "scratch_train_s": scratch["wall_clock_s"]["mean"],
        "grown_acc": grown and grown["acc"]["mean"],
        "grown_train_s": grown and grown["wall_clock_s"]["mean"],
        "cpu": f"{machine.get('cpu_model', 'unknown CPU')} ({machine.get('cpu_capability', '?')}), "
        f"{machine.get('cpu_count', '?')} cores",
        "date": str(machine.get("created_at", ""))[:10],
    }
