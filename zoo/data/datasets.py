"""Datasets as in-memory uint8 tensors (augmentation and loaders: ``zoo.data.pipeline``).

Design: every dataset is decoded once per process into ``uint8`` tensors (N, C, H, W) plus ``int64`` labels, so
loading a batch is one indexing op and nothing is decoded twice. ``build_datasets`` turns a source name into a
:class:`DatasetBundle` (class filter, subsets, normalisation statistics):

* ``fashion-mnist``: the official IDX files (``zoo.data.fashion_mnist``);
* ``imagefolder:PATH``: the user's own images (``zoo.data.imagefolder``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zoo.data.errors import DataError
from zoo.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from zoo.data.imagefolder import load_imagefolder

__all__ = ["DataError", "DatasetBundle", "build_datasets"]


@dataclass
class DatasetBundle:
    """A decoded dataset ready for training.

    Attributes:
        train_x: uint8 (N, C, H, W) train images.
        train_y: int64 (N,) train labels in ``[0, num_classes)``.
        test_x: uint8 (M, C, H, W) eval images.
        test_y: int64 (M,) eval labels.
        num_classes: Number of classes after any class filter.
        in_chans: C.
        img_size: H == W.
        mean: Per-channel normalization mean (of x / 255).
        std: Per-channel normalization std.
        class_names: Names of the classes, index = label.
        eval_split: ``"test"``, or ``"val"`` when ``test_x`` / ``test_y`` are a validation split held out of train.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    eval_split: str = "test"


def _channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of ``x / 255`` (float64 sums, chunked to keep memory small)."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        v = x[i : i + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        s += v.sum(1)
        s2 += v.square().sum(1)
    n = x.numel() // c
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _filter_classes(
    x: torch.Tensor, y: torch.Tensor, classes: Sequence[int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep samples whose label is in ``classes`` and relabel ``classes[i] -> i`` (labels are in [0, num_classes))."""
    lut = torch.full((num_classes,), -1, dtype=torch.int64)
    lut[torch.tensor(list(classes), dtype=torch.int64)] = torch.arange(len(classes))
    new_y = lut[y]
    keep = new_y >= 0
    return x[keep], new_y[keep]


def _stratified_subset(y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of a deterministic, class-balanced subset of size ``n``.

    A fixed permutation (seed 0, independent of the training seed so every run sees the same data) is taken, then
    samples are ordered round-robin over classes (the 1st of each class in permuted order, then the 2nd of each, ...)
    and the first ``n`` kept. So any ``n >= num_classes`` covers all classes, and a smaller subset is a prefix of a
    larger one. Returned indices are sorted, i.e. in dataset order.
    """
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    yp = y[perm]
    order = torch.argsort(yp, stable=True)
    counts = torch.bincount(yp)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(yp)
    rank[order] = torch.arange(len(yp)) - starts[yp[order]]  # position of each sample within its class
    key = rank * len(counts) + yp
    take = perm[torch.argsort(key, stable=True)[:n]]
    return take.sort().values


def _hold_out(
    x: torch.Tensor, y: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``n`` images off the training set as a validation split: the class-balanced, seed-independent subset of
    :func:`_stratified_subset` (so every run and every recipe holds out the same images), the rest stays for
    training. Returns ``train_x, train_y, val_x, val_y``."""
    _check_subset(n, "data.val_split")
    if n >= len(y):
        raise DataError(
            f"data.val_split: {n} would leave no training images (the split has {len(y)})", field="data.val_split"
        )
    held = _stratified_subset(y, n)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    return x[keep], y[keep], x[held], y[held]


def _check_subset(n: int | None, field: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise DataError(f"{field} must be a positive int (or null for all), got {n!r}", field=field)


def _load_source(
    name: str, path: str | os.PathLike | None, img_size: int | None, in_chans: int | None
) -> tuple[dict, list[str], tuple[float, ...], tuple[float, ...]]:
    """The decoded splits of a named source, its class names and its normalisation statistics."""
    if not isinstance(name, str):
        raise DataError(f"data.name must be a string, got {name!r}", field="data.name")
    if name == "fashion-mnist":
        data = load_fashion_mnist(path)
        class_names = list(FASHION_MNIST_CLASSES)
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
        # Fashion-MNIST is used at its native size; a mismatch means the model/recipe expects other data, which is
        # better reported than hidden by resizing.
        for field, value, native in (("data.img_size", img_size, 28), ("data.in_chans", in_chans, 1)):
            if value is not None and value != native:
                raise DataError(f"{field}: fashion-mnist is {native}, got {value!r}", field=field)
    elif name.startswith("imagefolder:"):
        root = name.removeprefix("imagefolder:") or path
        if not root:
            raise DataError("data.name 'imagefolder:PATH' needs a PATH (or data.path)", field="data.name")
        if img_size is None or in_chans is None:
            field = "data.img_size" if img_size is None else "data.in_chans"
            raise DataError(f"{field} is required for image-folder datasets", field=field)
        data = load_imagefolder(root, img_size, in_chans)
        class_names = list(data["classes"])
        # Stats of the full train split (before any class filter), for the same reason as Fashion-MNIST's constants.
        mean, std = _channel_stats(data["train_x"])
    else:
        raise DataError(f"data.name must be 'fashion-mnist' or 'imagefolder:PATH', got {name!r}", field="data.name")
    return data, class_names, mean, std


def build_datasets(
    name: str,
    path: str | os.PathLike | None = None,
    classes: list[int] | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    val_split: int | None = None,
) -> DatasetBundle:
    """Build a :class:`DatasetBundle` from a dataset name.

    Args:
        name: ``"fashion-mnist"`` or ``"imagefolder:PATH"``.
        path: Fashion-MNIST folder (see :func:`find_fashion_mnist`); for ``imagefolder:`` with an empty PATH, the
            dataset root.
        classes: Keep only these original labels, remapped to ``0..len(classes)-1`` in the given order (e.g. pretrain
            on ``[0, 1, 2, 3, 4]``, fine-tune on ``[5, 6, 7, 8, 9]``). Normalization stats stay those of the full
            dataset so both halves of a transfer experiment see identically normalized inputs.
        train_subset: Keep a deterministic class-balanced subset of at most this many train samples (after the class
            filter); see :func:`_stratified_subset`.
        test_subset: Same for the eval split.
        val_split: Hold out this many (class-balanced, seed-independent) training images and make them the eval
            split in place of the test split (``eval_split`` is then ``"val"``): settings are chosen on it.
        img_size: Output side, required for image folders. For Fashion-MNIST it may be given but must be 28.
        in_chans: 1 or 3, required for image folders. For Fashion-MNIST it may be given but must be 1.

    Returns:
        The bundle. Without class filter or subsets the tensors are shared with the load cache: treat as read-only.

    Raises:
        DataError: Unknown ``name`` (``field="data.name"``), invalid ``classes``/subsets/sizes (``field`` names the
            config field), or missing/corrupt data (``path`` names it).
    """
    data, class_names, mean, std = _load_source(name, path, img_size, in_chans)
    train_x, train_y, test_x, test_y = data["train_x"], data["train_y"], data["test_x"], data["test_y"]
    if classes is not None:
        n_all = len(class_names)
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_all]
        if not classes or bad or len(set(classes)) != len(classes):
            raise DataError(
                f"data.classes must be distinct ints in [0, {n_all}), got {classes!r}", field="data.classes"
            )
        train_x, train_y = _filter_classes(train_x, train_y, classes, n_all)
        test_x, test_y = _filter_classes(test_x, test_y, classes, n_all)
        class_names = [class_names[c] for c in classes]
    eval_split = "test"
    if val_split is not None:
        train_x, train_y, test_x, test_y = _hold_out(train_x, train_y, val_split)
        eval_split = "val"
    _check_subset(train_subset, "data.train_subset")
    _check_subset(test_subset, "data.test_subset")
    # A subset larger than the split means "all of it" (e.g. a fixed smoke-test size on a tiny image folder).
    if train_subset is not None:
        idx = _stratified_subset(train_y, train_subset)
        train_x, train_y = train_x[idx], train_y[idx]
    if test_subset is not None:
        idx = _stratified_subset(test_y, test_subset)
        test_x, test_y = test_x[idx], test_y[idx]

    return DatasetBundle(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(class_names),
        in_chans=train_x.shape[1],
        img_size=train_x.shape[-1],
        mean=tuple(mean),
        std=tuple(std),
        class_names=class_names,
        eval_split=eval_split,
    )
