"""Pieces every zoo family shares: the pretrained_cfg helpers, timm's default linear init, and the frozen-prefix hooks
that ``zoo.training.freezing``
sets (``no_grad_prefix``: the stem and the first N blocks are frozen). One implementation, so the families cannot
drift apart in what "frozen" means."""

from __future__ import annotations

import torch
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import trunc_normal_
from torch import nn

from zoo.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD


def vit_cfg(**kwargs) -> dict:
    """timm pretrained_cfg of a zoo ViT family at ImageNet shape (224 px, 1000 classes, Inception mean/std)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


def fmnist_cfg(**kwargs) -> dict:
    """pretrained_cfg for Fashion-MNIST models: 1 x 28 x 28, 10 classes, the dataset's mean/std, no center crop."""
    return vit_cfg(
        num_classes=10, input_size=(1, 28, 28), mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, crop_pct=1.0, **kwargs
    )


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
    (checkpointing policies). With ``model.prefix_input`` set, ``x`` is what the frozen prefix computed (the stem and
    ``no_grad_prefix`` blocks, cached by ``zoo.training.prefix_cache``) and only the blocks after it run."""
    start = max(model.no_grad_prefix, 0)
    if getattr(model, "prefix_input", False):
        if model.no_grad_prefix < 0:
            raise RuntimeError("prefix_input needs a frozen prefix (no_grad_prefix >= 0)")
        sizes = getattr(model, "token_sizes", None)
        if sizes is not None:
            sizes.reset()  # what the stem does first: every token is one patch
    else:
        with torch.set_grad_enabled(torch.is_grad_enabled() and model.no_grad_prefix < 0):
            x = model.stem(x)
            for blk in model.blocks[:start]:
                x = blk(x)
    for i in range(start, len(model.blocks)):
        x = model._run_block(i, model.blocks[i], x)
    return x
