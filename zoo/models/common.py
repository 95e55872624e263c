"""Pieces every zoo family shares: timm's default linear init, and the frozen-prefix hooks that ``zoo.freezing``
sets (``no_grad_prefix``: the stem and the first N blocks are frozen). One implementation, so the families cannot
drift apart in what "frozen" means."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn


def init_linears(model: nn.Module, skip_suffix: str | None = None) -> None:
    """timm's default ('') ViT init for every ``nn.Linear``: trunc-normal(0.02) weights, zero biases. Modules whose
    name ends with ``skip_suffix`` keep their own init (ZooViT's zero-initialised routers)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not (skip_suffix and name.endswith(skip_suffix)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def keep_frozen_prefix_eval(model: nn.Module) -> None:
    """After ``train()``: the frozen stem and leading blocks stay in eval mode (no dropout / drop-path). A frozen
    prefix is a fixed feature extractor, so its output does not change from step to step while only the top trains."""
    if model.no_grad_prefix >= 0:
        model.patch_embed.eval()
        model.pos_drop.eval()
        for blk in model.blocks[: model.no_grad_prefix]:
            blk.eval()


def run_blocks(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Stem and blocks of a single-stream model. The frozen prefix runs without a graph, so backward stops at the
    first trainable block (the speedup of freezing); trainable blocks go through ``model._run_block``
    (checkpointing policies)."""
    start = max(model.no_grad_prefix, 0)
    with torch.set_grad_enabled(torch.is_grad_enabled() and model.no_grad_prefix < 0):
        x = model.stem(x)
        for blk in model.blocks[:start]:
            x = blk(x)
    for i in range(start, len(model.blocks)):
        x = model._run_block(i, model.blocks[i], x)
    return x
