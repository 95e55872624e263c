"""Published zoo weights: each pretrained tag names its hub repo and, in a source checkout, the bundled copy of that
repo under ``model_cards/`` (same files), which timm then loads first, so ``pretrained=True`` works offline."""

from __future__ import annotations

import json
from pathlib import Path

HUB_ORG = "growzoo"
# the source checkout: the folder holding schedules/ and model_cards/ (zoo.training.recipe_lookup looks there too)
CHECKOUT = Path(__file__).resolve().parents[2]
MODEL_CARDS = CHECKOUT / "model_cards"
LOCAL_DIR = "local-dir:"

# registered name -> the run that produced it (`zoo reproduce model_cards/NAME` re-runs its recipe)
PUBLISHED = {
    "zoo_vit_micro_conv_p4.fmnist": "schedules/fmnist_baseline.yaml",
    "zoo_vit_micro_conv16_p4.fmnist": "schedules/fmnist_baseline_conv16.yaml",
    "zoo_vit_micro_conv_p4_d8.fmnist_grown": "schedules/fmnist_baseline_grown.yaml",
    "zoo_vit_micro_conv16_p4_r20.fmnist_routed": "schedules/fmnist_baseline_to_routed.yaml",
    "zoo_vit_micro_p7.fmnist": "schedules/fmnist_micro_dense.yaml",
    "zoo_vit_micro_p7_r25.fmnist": "schedules/fmnist_dense_to_routed.yaml",
    "zoo_vit_micro_p7.fmnist_grown": "schedules/fmnist_grow_depth.yaml",
    "zoo_vit_micro_p7_r25.fmnist_grown": "schedules/fmnist_grown_to_routed.yaml",
}


def card_folder(name: str) -> Path:
    return MODEL_CARDS / name


def published_cfg(name: str, base: dict) -> dict:
    """pretrained_cfg of a published tag: the hub id, plus the bundled weights file when it exists."""
    cfg = {**base, "hf_hub_id": f"{HUB_ORG}/{name}"}
    weights = card_folder(name) / "model.safetensors"
    if weights.is_file():
        cfg["file"] = str(weights)
    config = card_folder(name) / "config.json"
    if config.is_file():  # the class names, as a local-dir: / hf-hub: load gives them
        labels = json.loads(config.read_text()).get("label_names")
        if isinstance(labels, list):
            cfg["label_names"] = labels
    return cfg


def resolve_local_dir(source: str) -> str:
    """``local-dir:PATH`` with a relative PATH: from the working directory if it exists there, else from the
    checkout root when it exists there; anything else is returned unchanged (the loader then names the path).

    Why these two anchors, in this order: recipes name two kinds of folders. Other runs' outputs
    (``local-dir:runs/...``) are written relative to the working directory, so that stays first and keeps its
    meaning. Bundled published models (``local-dir:model_cards/...``) ship with the checkout, so a recipe naming one
    must also work when ``zoo`` runs from another directory. Not the recipe file's own folder: every run copies its
    recipe into ``runs/X/recipe.yaml`` and every export into its card folder, where a recipe-relative path would
    point somewhere else. The recipe text itself is left as written, so its hash (a run's identity) does not
    depend on where the checkout lives.
    """
    if not source.startswith(LOCAL_DIR):
        return source
    path = Path(source[len(LOCAL_DIR) :])
    if path.is_absolute() or path.exists() or not (CHECKOUT / path).exists():
        return source
    return LOCAL_DIR + str(CHECKOUT / path)


def published_name(source: str) -> str | None:
    """The published tag whose bundled folder ``source`` (a resolved ``local-dir:``) is, else None."""
    if not source.startswith(LOCAL_DIR):
        return None
    path = Path(source[len(LOCAL_DIR) :]).resolve()
    return path.name if path.parent == MODEL_CARDS and path.name in PUBLISHED else None


def published_repo_of(source: str | None) -> str | None:
    """The hub repo of a published zoo model that ``source`` names (its tag, ``hf-hub:`` id, or its bundled
    ``local-dir:.../model_cards/TAG`` folder), else None: a fine-tune of it states that repo as its ``base_model``."""
    if not source:
        return None
    if source.startswith("hf-hub:"):
        return source[len("hf-hub:") :].partition("@")[0]
    name = Path(source[len(LOCAL_DIR) :]).name if source.startswith(LOCAL_DIR) else source
    return f"{HUB_ORG}/{name}" if name in PUBLISHED else None
