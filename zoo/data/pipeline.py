"""Batched augmentation and low-overhead loaders over the splits of ``zoo.data.datasets``.

Loading a batch is a single advanced-indexing op (``IndexDataset.__getitems__``), and augmentation works on whole
batches with randomness drawn only from an explicit ``torch.Generator``, so a resumed run replays exactly the same
augmentations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.augment import image_seed
from zoo.data.datasets import DatasetBundle
from zoo.data.sources import ImageSource, TensorSource
from zoo.data.streaming import StreamSource, make_stream_loader
from zoo.data.workers import worker_context
from zoo.utils import held_locks

# ----------------------------------------------------------------------------------------------------------------------
# Batched augmentation
# ----------------------------------------------------------------------------------------------------------------------


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random translation (zero-pad + crop) and horizontal flip of a whole batch, without per-sample Python loops.

    Per sample, offsets ``(dy, dx)`` are drawn uniformly from ``[0, 2 * pad]`` and the crop of the zero-padded image
    at that offset is taken; with ``flip``, the crop is mirrored horizontally with p = 0.5. Crop, flip and the zero
    border are one ``gather`` on the unpadded image plus a mask. All randomness comes from ``generator`` (offsets
    first, then flips), so seeding it per (seed, epoch, step) makes augmentation exactly reproducible on resume.

    Args:
        x: uint8 (or any dtype) images (B, C, H, W).
        generator: Source of randomness; its device is used for the draws.
        pad: Zero padding / maximal shift in pixels, >= 0.
        flip: Whether to apply random horizontal flips.

    Returns:
        Augmented images, same shape/dtype/device as ``x``. With ``pad == 0`` and ``flip=False``, ``x`` itself.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects (B, C, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0 and not flip:
        return x
    b, c, h, w = x.shape
    dev, gdev = x.device, generator.device
    # Offsets are drawn in [0, 2 * pad] (padded-image coordinates) and shifted to source coordinates in [-pad, pad].
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(dev) - pad
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(dev) - pad
    else:
        dy = dx = torch.zeros(b, dtype=torch.int64, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirror = draw_mirror(b, generator).to(dev)
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (B, H) source row of each output row
    cols = dx[:, None] + cols  # (B, W) source column of each output column
    # Gather from the unpadded image and zero what falls in the padding: same result as F.pad + crop, without
    # materializing the padded copy (about 2x faster on CPU).
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, H, W)
    flat = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (B, H, W) linear source index
    out = x.reshape(b, c, h * w).gather(2, flat.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
    return out * inside[:, None].to(x.dtype) if pad > 0 else out


def draw_mirror(b: int, generator: torch.Generator) -> torch.Tensor:
    """The flip draws of :func:`random_crop_flip` (after its offsets): True where the image is mirrored. A training
    step that skips the images (a cached frozen prefix) makes the same draws to pick the same views."""
    return torch.rand(b, generator=generator, device=generator.device) < 0.5


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Convert uint8 images to float32 ``(x / 255 - mean) / std`` per channel.

    Args:
        x: uint8 images (B, C, H, W).
        mean: Per-channel means (length C, or 1 to broadcast).
        std: Per-channel stds, same length as ``mean``.

    Returns:
        float32 tensor of the same shape on the same device.
    """
    c = x.shape[1]
    if len(mean) not in (1, c) or len(std) != len(mean):
        raise ValueError(f"mean/std lengths {len(mean)}/{len(std)} do not match {c} channels")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.to(torch.float32).div_(255).sub_(m).div_(s)


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


class IndexDataset(Dataset):
    """Map-style dataset over an :class:`~zoo.data.sources.ImageSource` whose batches are fetched in one call.

    ``DataLoader`` (auto-collation, i.e. ``batch_size`` not None) calls ``dataset.__getitems__(indices)`` when it exists
    and passes its return value straight to ``collate_fn`` (``torch.utils.data._utils.fetch._MapDatasetFetcher``).
    ``__getitems__`` here returns the finished batch ``(x, y)``: one indexing op for images in memory, the batch's
    images decoded for an on-the-fly source (in the DataLoader's worker processes when it has some). Torch's
    *default* collate would mangle that tuple (it would try to stack ``x`` with ``y``), so loaders must use
    :func:`collate_batch` as ``collate_fn``, as :func:`make_loader` does; it also accepts plain lists of samples.

    Args:
        x: The source, or in-memory images (N, ...) with ``y``.
        y: Labels (N,) when ``x`` is a tensor.
        augment: A per-image augmentation (``zoo.data.augment.ImageAugment``), applied to each image with a seed that
            is a function of (``seed``, epoch, index): the same draws whatever the workers, ranks or resume point.
        seed: The run's seed (for ``augment``).
        with_index: Batches are ``(x, y, indices)``: the positions of their images in the source (what a cached frozen
            prefix looks its outputs up by).
    """

    def __init__(
        self,
        x: ImageSource | torch.Tensor,
        y: torch.Tensor | None = None,
        augment=None,
        seed: int = 0,
        with_index: bool = False,
    ):
        if isinstance(x, torch.Tensor):
            if y is None or len(x) != len(y):
                raise ValueError(f"x and y lengths differ: {len(x)} vs {None if y is None else len(y)}")
            x = TensorSource(x, y)
        self.source, self.augment, self.seed, self.epoch = x, augment, seed, 0
        self.with_index = with_index

    @property
    def x(self) -> torch.Tensor:
        return self.source.x  # type: ignore[attr-defined]

    @property
    def y(self) -> torch.Tensor:
        return self.source.labels

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the per-image augmentation draws (set before each epoch's iterator is created: workers get
        a copy of the dataset then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([i]))

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.source.load(idx)
        if self.augment is not None:
            x = torch.stack(
                [self.augment(img, image_seed(self.seed, self.epoch, i)) for img, i in zip(x, idx.tolist())]
            ) if len(x) else x  # fmt: skip
        return (x, self.source.labels[idx], idx) if self.with_index else (x, self.source.labels[idx])


def collate_batch(batch: Any) -> Any:
    """``collate_fn`` for :class:`IndexDataset`: pass a pre-built ``(x, y)`` batch through, else default-collate.

    Args:
        batch: Either the tuple of tensors from ``IndexDataset.__getitems__`` or a list of samples.

    Returns:
        The ``(x, y)`` batch.
    """
    if isinstance(batch, tuple) and all(isinstance(t, torch.Tensor) for t in batch):
        return batch
    return torch.utils.data.default_collate(batch)


def make_loader(
    x: ImageSource | torch.Tensor,
    y: torch.Tensor | None,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    num_workers: int = 0,
    augment=None,
    with_index: bool = False,
) -> DataLoader:
    """A plain torch ``DataLoader`` over a source (Accelerate's ``prepare`` shards it).

    Args:
        x: The source, or in-memory images (N, ...), usually uint8, with ``y``.
        y: Labels (N,) when ``x`` is a tensor, else None.
        batch_size: Per-process batch size.
        shuffle: Shuffle each epoch, seeded by ``seed`` (Accelerate's ``use_seedable_sampler`` replaces the sampler
            with one reseeded per epoch).
        seed: Seed of the shuffling generator and of ``augment``.
        drop_last: Drop the last incomplete batch.
        num_workers: Worker processes that build (decode, augment) batches ahead of the training step, two each;
            0 builds them in the training process (fastest for images in memory: a batch is one indexing op).
        augment: A per-image augmentation run where batches are built (see :class:`IndexDataset`).
        with_index: Batches carry their images' indices (see :class:`IndexDataset`).

    Returns:
        The loader; batches are ``(x, y)`` tuples built by :meth:`IndexDataset.__getitems__` and :func:`collate_batch`.
    """
    return DataLoader(
        IndexDataset(x, y, augment=augment, seed=seed, with_index=with_index),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=torch.cuda.is_available(),
        # Workers are started per epoch, not kept: each epoch's copy of the dataset then carries that epoch (its
        # augmentation draws); the start-up is small beside an epoch of decoding.
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=held_locks.close_in_child,  # a killed run's workers must not keep its folder locked
        multiprocessing_context=worker_context(num_workers),  # zoo.data.workers: why not fork
    )


def default_workers(source: ImageSource, requested: int) -> int:
    """``requested`` workers; for an on-the-fly source 0 means one per core up to 4 (decoding in the training
    process would stall every step)."""
    if requested > 0 or not source.lazy:
        return requested
    return max(1, min(4, os.cpu_count() or 1))


def measure_input_pipeline(
    bundle: DatasetBundle, batch_size: int = 256, batches: int = 50, *, pad: int = 2, flip: bool = True
) -> float:
    """Throughput of the training input pipeline: loader iteration + :func:`random_crop_flip` + :func:`normalize`.

    One warm-up batch is excluded; the loader is restarted if it runs out before ``batches``.

    Args:
        bundle: Dataset whose train split is iterated.
        batch_size: Batch size.
        batches: Number of timed batches.
        pad: Crop padding passed to :func:`random_crop_flip`.
        flip: Flip flag passed to :func:`random_crop_flip`.

    Returns:
        Images per second.
    """
    # drop_last only when a full batch exists, so tiny datasets still yield batches instead of looping forever.
    drop_last = len(bundle.train) >= batch_size
    if isinstance(bundle.train, StreamSource):  # the training path of a stream: one worker reads and decodes
        loader = make_stream_loader(bundle.train, batch_size, shuffle=True, seed=0, drop_last=drop_last)
    else:
        workers = default_workers(bundle.train, 0)
        loader = make_loader(bundle.train, None, batch_size, True, seed=0, drop_last=drop_last, num_workers=workers)
    gen = torch.Generator().manual_seed(0)

    def batch_stream():
        while True:
            yield from loader

    stream = batch_stream()
    xb, _ = next(stream)
    normalize(random_crop_flip(xb, gen, pad, flip), bundle.mean, bundle.std)
    images = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        xb, _ = next(stream)
        out = normalize(random_crop_flip(xb, gen, pad, flip), bundle.mean, bundle.std)
        images += len(out)
    return images / (time.perf_counter() - t0)
