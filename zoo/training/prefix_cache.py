"""The cached frozen prefix (``unfreeze.cache_prefix: true``): while the stem and the leading blocks are frozen, their
output for each training image is computed once and reused in later epochs, so a frozen prefix costs neither backward
(freezing alone gives that) nor forward. Egeria and AutoFreeze cache frozen layers' activations for the same reason.

Augmentation. A cached output is only reusable if the prefix sees the same input again, so the views of an image must
be few and countable. Horizontal flips are: each image has two views (as is, mirrored), both cached, and a training
step looks up the view its flip draw chose (the same draw the uncached step makes, so both train on the same views).
Random crops (``data.crop_pad`` > 0: 25 offsets x 2 flips per image), per-image policies (RandAugment, ...), random
erasing and Mixup / CutMix change the prefix's input at random, and are refused with this option; the tuned baseline
trains with flips only, so its fine-tunes lose nothing. Memory: ``2 x images x tokens x width`` float32 values (the
baseline's 30,000 fine-tuning images: 768 MB), in host memory, checked against ``unfreeze.cache_max_mb`` before
training starts.

Exactness. The cache is built eagerly, in image order and fixed chunks, from the frozen weights; the cached tokens
are therefore a pure function of those weights and a resumed run rebuilds exactly what the interrupted one held (the
cache is derived data: not checkpointed). A prefix that grows longer (bottom-up freezing) advances the cached tokens
through the newly frozen blocks, the same operations on the same chunks as a build from the images (bitwise equal,
and cheaper); a shorter one (top-down unfreezing) is rebuilt. The build runs inside the training clock: it counts in
the run's wall-clock, as the benchmark must count it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from zoo.data.pipeline import normalize
from zoo.data.sources import ImageSource
from zoo.training.evaluation import fit_resolution
from zoo.training.recipe import RecipeError

#: images per chunk of a build (fixed: the chunking is part of what makes a rebuilt cache bitwise equal)
CHUNK = 256


@torch.no_grad()
def run_prefix(model: nn.Module, x: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
    """The output of the stem and the first ``frozen_blocks`` blocks for normalised images ``x`` (the input that
    ``model.prefix_input`` makes the model's forward take)."""
    x = model.stem(x)
    for blk in model.blocks[:frozen_blocks]:
        x = blk(x)
    return x


@contextmanager
def prefix_input(model: nn.Module, on: bool) -> Iterator[None]:
    """While ``on``, ``model``'s forward takes its frozen prefix's output instead of images (``run_blocks``)."""
    model.prefix_input = on
    try:
        yield
    finally:
        model.prefix_input = False


def check_cacheable_model(model: nn.Module, bundle, flip: bool, max_bytes: int) -> None:
    """The model can run from a cached prefix output, and the largest such output of every training image fits the
    budget (one image through the stem and each block gives the shapes), before training starts."""
    if not getattr(model, "supports_prefix_cache", False):
        raise RecipeError("recipe", "unfreeze.cache_prefix", f"{type(model).__name__} cannot run from a cached prefix "
                          "(a model whose forward goes through zoo.models.common.run_blocks can)")  # fmt: skip
    args = getattr(model, "model_args", {})
    if args.get("patch_drop_rate", 0) > 0:
        raise RecipeError("recipe", "unfreeze.cache_prefix", "patch dropout in the stem changes its output at random "
                          "(model.args.patch_drop_rate must be 0)")  # fmt: skip
    if args.get("merging"):
        raise RecipeError("recipe", "unfreeze.cache_prefix", "a merging model's tokens carry per-batch sizes that a "
                          "cached output would lose")  # fmt: skip
    if not len(bundle.train):
        return
    device = next(model.parameters()).device
    x = model_input(model, bundle.train.load(torch.zeros(1, dtype=torch.int64)).to(device), bundle.mean, bundle.std)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = model.stem(x)
        largest = x[0].numel()
        for blk in model.blocks:
            x = blk(x)
            largest = max(largest, x[0].numel())
    model.train(was_training)
    size = len(bundle.train) * (2 if flip else 1) * largest * 4
    if size > max_bytes:
        raise RecipeError("recipe", "unfreeze.cache_max_mb", f"the frozen prefix's outputs of {len(bundle.train)} "
                          f"images take up to {size / 2**20:,.0f} MB (float32), over the budget of "
                          f"{max_bytes / 2**20:,.0f} MB")  # fmt: skip


def model_input(model: nn.Module, images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images as the training step feeds them to the model: normalised, resized to its input size."""
    return fit_resolution(normalize(images, mean, std), getattr(model, "model_args", {}).get("img_size"))


def flip_views(x: torch.Tensor, views: int) -> list[torch.Tensor]:
    """The views of uint8 images (B, C, H, W) a flip-only pipeline produces: as is, and mirrored (what
    ``zoo.data.pipeline.random_crop_flip`` with ``pad=0`` gives for a mirror draw)."""
    return [x, x.flip(-1)][:views]


class PrefixCache:
    """Outputs of a model's frozen prefix for every image (and flip view) of the training split.

    Args:
        source: The training split (indexed as the loader indexes it).
        mean: Normalisation mean of the data.
        std: Normalisation std.
        flip: Whether training flips images (two views per image), else one view.
        max_bytes: The memory budget of the cached tokens.
        progress: Show a bar while building.
    """

    def __init__(self, source: ImageSource, mean, std, flip: bool, max_bytes: int, progress: bool = False) -> None:
        self.source, self.mean, self.std = source, tuple(mean), tuple(std)
        self.views, self.max_bytes, self.progress = 2 if flip else 1, max_bytes, progress
        self.level: int | None = None  # the number of frozen blocks the held tokens are the output of
        self.tokens: torch.Tensor | None = None  # (N, views, *token shape), host memory
        self.builds = 0  # cache (re)builds and advances, for the run's log

    def sync(self, model: nn.Module, frozen_blocks: int, device: torch.device) -> bool:
        """Hold the output of the stem and ``frozen_blocks`` blocks (-1: the stem trains, nothing to cache); returns
        whether anything was computed."""
        if frozen_blocks < 0:
            self.level, self.tokens = None, None
            return False
        if frozen_blocks == self.level:
            return False
        if self.level is not None and frozen_blocks > self.level:
            self._advance(model, frozen_blocks, device)
        else:
            self._build(model, frozen_blocks, device)
        self.level, self.builds = frozen_blocks, self.builds + 1
        return True

    def lookup(self, indices: torch.Tensor, mirrored: torch.Tensor | None) -> torch.Tensor:
        """The cached prefix outputs of images ``indices`` in the views the flip draws chose."""
        if self.tokens is None:
            raise RuntimeError("the prefix cache is empty: sync() it with a frozen prefix first")
        view = mirrored.long().cpu() if mirrored is not None and self.views == 2 else torch.zeros_like(indices)
        return self.tokens[indices.cpu(), view]

    def _chunks(self, desc: str):
        n = len(self.source)
        starts = range(0, n, CHUNK)
        return tqdm(starts, desc=desc, unit="chunk", disable=not self.progress or len(starts) < 8, leave=False)

    def _build(self, model: nn.Module, frozen_blocks: int, device: torch.device) -> None:
        self.tokens, self.level = None, None  # release the old level first: two full caches need not fit at once
        n = len(self.source)
        for start in self._chunks(f"cache prefix ({frozen_blocks} frozen blocks)"):
            idx = torch.arange(start, min(start + CHUNK, n))
            images = self.source.load(idx)
            for v, view in enumerate(flip_views(images, self.views)):
                out = run_prefix(model, model_input(model, view.to(device), self.mean, self.std), frozen_blocks).cpu()
                if self.tokens is None:
                    self._allocate(out.shape[1:], out.dtype)
                self.tokens[start : start + len(idx), v] = out

    def _advance(self, model: nn.Module, frozen_blocks: int, device: torch.device) -> None:
        blocks = model.blocks[self.level : frozen_blocks]
        with torch.no_grad():
            for start in self._chunks(f"advance prefix cache to {frozen_blocks} frozen blocks"):
                for v in range(self.views):
                    x = self.tokens[start : start + CHUNK, v].to(device)
                    for blk in blocks:
                        x = blk(x)
                    if x.dtype != self.tokens.dtype:  # advancing must store what a build at this depth stores
                        raise RuntimeError(f"prefix cache: blocks give {x.dtype}, the cache holds {self.tokens.dtype}")
                    self.tokens[start : start + CHUNK, v] = x.cpu()

    def _allocate(self, token_shape: torch.Size, dtype: torch.dtype) -> None:
        # the dtype the prefix produced (float32, or bfloat16 under autocast): what the uncached forward passes on
        size = len(self.source) * self.views * math.prod(token_shape) * dtype.itemsize
        if size > self.max_bytes:
            raise MemoryError(
                f"unfreeze.cache_max_mb: the frozen prefix's outputs take {size / 2**20:,.0f} MB ({len(self.source)} "
                f"images x {self.views} views x {tuple(token_shape)} {dtype}), over the budget of "
                f"{self.max_bytes / 2**20:,.0f} MB"
            )
        self.tokens = torch.empty(len(self.source), self.views, *token_shape, dtype=dtype)
