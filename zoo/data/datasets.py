"""Datasets: a source name to the train and eval splits a run uses (augmentation and loaders: ``zoo.data.pipeline``).

``build_datasets`` turns a source name into a :class:`DatasetBundle` (class filter, subsets, validation hold-out,
normalisation statistics), each split an :class:`~zoo.data.sources.ImageSource`:

* ``fashion-mnist``: the official IDX files (``zoo.data.fashion_mnist``), decoded into memory;
* ``imagefolder:PATH``: the user's own images (``zoo.data.imagefolder``);
* ``hf:NAME``: a Hugging Face dataset, from the hub cache or a local folder (``zoo.data.hf_datasets``), or streamed
  from the hub or local data files without a download (``streaming=True``: ``zoo.data.streaming``).

Small data is fastest decoded once into memory (a batch is then one indexing op); data of any size can be decoded on
the fly, batch by batch in DataLoader workers. Image folders and Hugging Face datasets are decoded into memory only
when asked (``data.cache: true``) or, by default (``auto``), when the decoded splits fit ``data.cache_max_mb``;
:attr:`DatasetBundle.storage` says which path a run takes and why.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from zoo.data.errors import DataError
from zoo.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from zoo.data.hf_datasets import open_hf_dataset
from zoo.data.imagefolder import open_imagefolder
from zoo.data.sources import ImageSource, TensorSource, materialize
from zoo.data.streaming import StreamSource, open_hf_stream

# images whose pixel statistics normalise an image folder or Hugging Face dataset: a fixed class-balanced sample, so
# start-up does not decode the whole set, and the in-memory and on-the-fly paths normalise identically
STATS_SAMPLE = 2048
STATS_CHUNK = 64  # images decoded at a time while estimating them: start-up memory does not grow with the sample

__all__ = ["DataError", "DatasetBundle", "build_datasets"]


@dataclass
class DatasetBundle:
    """The splits a run trains and evaluates on.

    Attributes:
        train: The train split (labels in ``[0, num_classes)``).
        test: The eval split.
        num_classes: Number of classes after any class filter.
        in_chans: C.
        img_size: H == W.
        mean: Per-channel normalization mean (of x / 255).
        std: Per-channel normalization std.
        class_names: Names of the classes, index = label.
        eval_split: ``"test"``, or ``"val"`` when ``test`` is a validation split held out of train.
        storage: Which path the images take (in memory, or decoded on the fly) and why, for the start-up message.
    """

    train: ImageSource | StreamSource
    test: ImageSource | StreamSource
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    eval_split: str = "test"
    storage: str = "in memory"

    # The in-memory views, for code that works on decoded tensors (cards, tests, notebooks). An on-the-fly split has
    # no such tensor: decoding it whole is what streaming avoids, so asking for it is an error that says so.
    @property
    def train_x(self) -> torch.Tensor:
        return _tensor_of(self.train, "train")

    @property
    def test_x(self) -> torch.Tensor:
        return _tensor_of(self.test, "eval")

    @property
    def train_y(self) -> torch.Tensor:
        return self.train.labels

    @property
    def test_y(self) -> torch.Tensor:
        return self.test.labels


def _tensor_of(source: ImageSource | StreamSource, split: str) -> torch.Tensor:
    if isinstance(source, TensorSource):
        return source.x
    raise DataError(f"the {split} split is decoded on the fly ({len(source)} images); iterate it in batches "
                    "(zoo.data.pipeline.make_loader) or set data.cache: true to hold it in memory")  # fmt: skip


def _channel_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of ``x / 255`` over uint8 (B, C, H, W) batches (float64 sums: memory of one batch)."""
    s = s2 = None
    n = 0
    for x in batches:
        c = x.shape[1]
        v = x.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        s = v.sum(1) if s is None else s + v.sum(1)
        s2 = v.square().sum(1) if s2 is None else s2 + v.square().sum(1)
        n += v.shape[1]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _filter_classes(source: ImageSource, classes: Sequence[int], num_classes: int) -> ImageSource:
    """Keep images whose label is in ``classes`` and relabel ``classes[i] -> i`` (labels are in [0, num_classes))."""
    lut = torch.full((num_classes,), -1, dtype=torch.int64)
    lut[torch.tensor(list(classes), dtype=torch.int64)] = torch.arange(len(classes))
    new_y = lut[source.labels]
    keep = torch.nonzero(new_y >= 0).flatten()
    kept = source.subset(keep)
    kept.labels = new_y[keep]
    return kept


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


def _hold_out(source: ImageSource, n: int) -> tuple[ImageSource, ImageSource]:
    """Split ``n`` images off the training set as a validation split: the class-balanced, seed-independent subset of
    :func:`_stratified_subset` (so every run and every recipe holds out the same images), the rest stays for
    training. Returns ``(train, val)``."""
    _check_subset(n, "data.val_split")
    if n >= len(source):
        raise DataError(
            f"data.val_split: {n} would leave no training images (the split has {len(source)})", field="data.val_split"
        )
    held = _stratified_subset(source.labels, n)
    keep = torch.ones(len(source), dtype=torch.bool)
    keep[held] = False
    return source.subset(torch.nonzero(keep).flatten()), source.subset(held)


def _check_subset(n: int | None, field: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise DataError(f"{field} must be a positive int (or null for all), got {n!r}", field=field)


def _required(value: int | None, field: str) -> int:
    if value is None:  # the trainer fills it in from the model; only a model without a stated input size leaves it
        raise DataError(f"{field} is required for this dataset (the model does not state its input size)", field=field)
    return value


def _load_source(
    name: str,
    path: str | os.PathLike | None,
    img_size: int | None,
    in_chans: int | None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> tuple[dict, list[str], tuple[float, ...] | None, tuple[float, ...] | None]:
    """The splits of a named source, its class names and its normalisation statistics (None: estimate them)."""
    if not isinstance(name, str):
        raise DataError(f"data.name must be a string, got {name!r}", field="data.name")
    if name == "fashion-mnist":
        data = load_fashion_mnist(path)
        # Fashion-MNIST is used at its native size; a mismatch means the model/recipe expects other data, which is
        # better reported than hidden by resizing.
        for field, value, native in (("data.img_size", img_size, 28), ("data.in_chans", in_chans, 1)):
            if value is not None and value != native:
                raise DataError(f"{field}: fashion-mnist is {native}, got {value!r}", field=field)
        splits = {s: TensorSource(data[f"{s}_x"], data[f"{s}_y"]) for s in ("train", "test")}
        return splits, list(FASHION_MNIST_CLASSES), FASHION_MNIST_MEAN, FASHION_MNIST_STD
    if not name.startswith(("imagefolder:", "hf:")):
        raise DataError(
            f"data.name must be 'fashion-mnist', 'imagefolder:PATH' or 'hf:NAME', got {name!r}", field="data.name"
        )
    img_size = _required(img_size, "data.img_size")
    in_chans = _required(in_chans, "data.in_chans")
    if name.startswith("imagefolder:"):
        root = name.removeprefix("imagefolder:") or path
        if not root:
            raise DataError("data.name 'imagefolder:PATH' needs a PATH (or data.path)", field="data.name")
        data = open_imagefolder(root, img_size, in_chans)
    elif name.startswith("hf:"):
        spec = name.removeprefix("hf:") or path
        if not spec:
            raise DataError("data.name 'hf:NAME' needs a hub id or folder (or data.path)", field="data.name")
        data = open_hf_dataset(str(spec), img_size, in_chans, image_column, label_column)
    return {"train": data["train"], "test": data["test"]}, list(data["classes"]), None, None


def _estimate_stats(train: ImageSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of a fixed class-balanced sample of the full train split (before any class filter, for
    the same reason as Fashion-MNIST's constants: both halves of a transfer experiment are normalised alike)."""
    sample = _stratified_subset(train.labels, min(STATS_SAMPLE, len(train)))
    return _channel_stats(train.load(chunk) for chunk in sample.split(STATS_CHUNK))


def _storage(train: ImageSource, test: ImageSource, cache: bool | str, cache_max_mb: float) -> tuple[bool, str]:
    """Whether to decode both splits into memory, and the sentence that says why."""
    if not (train.lazy or test.lazy):
        return False, "in memory (decoded at start-up)"
    mb = (train.decoded_bytes + test.decoded_bytes) / 2**20
    if cache is True:
        return True, f"decoded into memory at start-up ({mb:,.1f} MB; data.cache: true)"
    if cache is False:
        return False, f"decoded on the fly in DataLoader workers (data.cache: false; {mb:,.1f} MB decoded)"
    if mb <= cache_max_mb:
        return True, f"decoded into memory at start-up ({mb:,.1f} MB fits data.cache_max_mb: {cache_max_mb:g})"
    return False, (
        f"decoded on the fly in DataLoader workers ({mb:,.1f} MB decoded would exceed data.cache_max_mb: "
        f"{cache_max_mb:g})"
    )


def build_datasets(
    name: str,
    path: str | os.PathLike | None = None,
    classes: list[int] | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    val_split: int | None = None,
    cache: bool | str = "auto",
    cache_max_mb: float = 1024.0,
    image_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
    streaming: bool = False,
) -> DatasetBundle:
    """Build a :class:`DatasetBundle` from a dataset name.

    Args:
        name: ``"fashion-mnist"``, ``"imagefolder:PATH"`` or ``"hf:NAME"``.
        path: Fashion-MNIST folder (see :func:`find_fashion_mnist`); for ``imagefolder:`` / ``hf:`` with an empty
            PATH / NAME, the dataset.
        classes: Keep only these original labels, remapped to ``0..len(classes)-1`` in the given order (e.g. pretrain
            on ``[0, 1, 2, 3, 4]``, fine-tune on ``[5, 6, 7, 8, 9]``). Normalization stats stay those of the full
            dataset so both halves of a transfer experiment see identically normalized inputs.
        train_subset: Keep a deterministic class-balanced subset of at most this many train samples (after the class
            filter); see :func:`_stratified_subset`.
        test_subset: Same for the eval split.
        val_split: Hold out this many (class-balanced, seed-independent) training images and make them the eval
            split in place of the test split (``eval_split`` is then ``"val"``): settings are chosen on it.
        img_size: Output side, required for image folders and Hugging Face datasets (the trainer passes the model's).
            For Fashion-MNIST it may be given but must be 28.
        in_chans: 1 or 3, as ``img_size``. For Fashion-MNIST it may be given but must be 1.
        cache: ``True`` decode image folders / Hugging Face datasets into memory at start-up, ``False`` decode them on
            the fly, ``"auto"`` in memory when the decoded splits fit ``cache_max_mb``.
        cache_max_mb: The memory budget of ``"auto"``.
        image_column: ``hf:`` only: the image column (default: the first ``Image`` feature).
        label_column: ``hf:`` only: the label column (default: the first ``ClassLabel`` feature).
        progress: Show a bar while decoding into memory.
        streaming: ``hf:`` only: stream both splits (:mod:`zoo.data.streaming`) instead of reading them as
            memory-mapped Arrow files; ``classes`` is then not available, subsets and ``val_split`` take the stream's
            first images.

    Returns:
        The bundle. Without class filter or subsets the tensors are shared with the load cache: treat as read-only.

    Raises:
        DataError: Unknown ``name`` (``field="data.name"``), invalid ``classes``/subsets/sizes (``field`` names the
            config field), or missing/corrupt data (``path`` names it).
    """
    if cache not in (True, False, "auto"):
        raise DataError(f"data.cache must be true, false or auto, got {cache!r}", field="data.cache")
    if streaming:
        return _streamed_bundle(name, path, classes, train_subset, test_subset, img_size, in_chans, val_split, cache,
                                image_column, label_column, progress)  # fmt: skip
    splits, class_names, mean, std = _load_source(name, path, img_size, in_chans, image_column, label_column)
    train, test = splits["train"], splits["test"]
    if mean is None or std is None:
        mean, std = _estimate_stats(train)
    if classes is not None:
        n_all = len(class_names)
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_all]
        if not classes or bad or len(set(classes)) != len(classes):
            raise DataError(
                f"data.classes must be distinct ints in [0, {n_all}), got {classes!r}", field="data.classes"
            )
        train = _filter_classes(train, classes, n_all)
        test = _filter_classes(test, classes, n_all)
        class_names = [class_names[c] for c in classes]
    eval_split = "test"
    if val_split is not None:
        train, test = _hold_out(train, val_split)
        eval_split = "val"
    _check_subset(train_subset, "data.train_subset")
    _check_subset(test_subset, "data.test_subset")
    # A subset larger than the split means "all of it" (e.g. a fixed smoke-test size on a tiny image folder).
    if train_subset is not None:
        train = train.subset(_stratified_subset(train.labels, train_subset))
    if test_subset is not None:
        test = test.subset(_stratified_subset(test.labels, test_subset))
    in_memory, storage = _storage(train, test, cache, cache_max_mb)
    if in_memory:
        train = materialize(train, "decode train", progress=progress)
        test = materialize(test, "decode eval", progress=progress)
    return DatasetBundle(
        train=train,
        test=test,
        num_classes=len(class_names),
        in_chans=train.in_chans,
        img_size=train.img_size,
        mean=tuple(mean),
        std=tuple(std),
        class_names=class_names,
        eval_split=eval_split,
        storage=storage,
    )


def _streamed_bundle(
    name, path, classes, train_subset, test_subset, img_size, in_chans, val_split, cache, image_column, label_column,
    progress,
) -> DatasetBundle:  # fmt: skip
    """:func:`build_datasets` for ``streaming=True`` (same arguments)."""
    if not (isinstance(name, str) and name.startswith("hf:")):
        raise DataError(
            f"data.streaming: true streams Hugging Face datasets (data.name: hf:NAME), got data.name {name!r}; an "
            "image folder is decoded on the fly already with data.cache: false", field="data.streaming",
        )  # fmt: skip
    if classes is not None:
        raise DataError("data.classes: not available with data.streaming: true (labels are read with the images, "
                        "not held in memory to filter on); filter the dataset and save it, or stream it whole",
                        field="data.classes")  # fmt: skip
    if cache is True:
        raise DataError("data.cache: true decodes the dataset into memory, data.streaming: true never does; set one",
                        field="data.cache")  # fmt: skip
    spec = name.removeprefix("hf:") or path
    if not spec:
        raise DataError("data.name 'hf:NAME' needs a hub id or folder (or data.path)", field="data.name")
    img_size, in_chans = _required(img_size, "data.img_size"), _required(in_chans, "data.in_chans")
    data = open_hf_stream(str(spec), img_size, in_chans, image_column, label_column, progress)
    full, test = data["train"], data["test"]
    # the first images of the stream, as the statistics' sample (no class balance without labels in memory)
    sample = full.head(STATS_SAMPLE)
    cells = (full.decode(cell) for cell, _ in sample.examples(None, 0, 0))
    mean, std = _channel_stats(_chunks(cells, STATS_CHUNK))
    train, eval_split = full, "test"
    if val_split is not None:  # the stream's first images: the same for every run and seed, not class-balanced
        _check_subset(val_split, "data.val_split")
        if val_split >= len(full):
            raise DataError(f"data.val_split: {val_split} would leave no training images (the split has "
                            f"{len(full)})", field="data.val_split")  # fmt: skip
        train, test, eval_split = full.tail(val_split), full.head(val_split), "val"
    _check_subset(train_subset, "data.train_subset")
    _check_subset(test_subset, "data.test_subset")
    train = train.head(train_subset) if train_subset is not None else train
    test = test.head(test_subset) if test_subset is not None else test
    counted = "; sizes counted in one pass over the labels" if data["counted"] else ""
    storage = (f"streamed (data.streaming: true): read in stream order and decoded batch by batch, never held whole "
               f"({(train.decoded_bytes + test.decoded_bytes) / 2**20:,.1f} MB decoded){counted}")  # fmt: skip
    return DatasetBundle(
        train=train, test=test, num_classes=len(data["classes"]), in_chans=in_chans, img_size=img_size,
        mean=tuple(mean), std=tuple(std), class_names=list(data["classes"]), eval_split=eval_split, storage=storage,
    )  # fmt: skip


def _chunks(images: Iterable[torch.Tensor], size: int) -> Iterable[torch.Tensor]:
    """uint8 (C, H, W) images stacked ``size`` at a time."""
    chunk = []
    for img in images:
        chunk.append(img)
        if len(chunk) == size:
            yield torch.stack(chunk)
            chunk = []
    if chunk:
        yield torch.stack(chunk)
