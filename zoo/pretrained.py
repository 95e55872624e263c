"""Published zoo weights: each pretrained tag names its hub repo and, in a source checkout, the bundled copy of that
repo under ``model_cards/`` (same files), which timm then loads first, so ``pretrained=True`` works offline."""

from __future__ import annotations

from pathlib import Path

HUB_ORG = "growzoo"
MODEL_CARDS = Path(__file__).resolve().parent.parent / "model_cards"

# registered name -> the run that produced it (its card says how: `zoo reproduce` when that lands)
PUBLISHED = {
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
    return cfg
