"""Where a split's images come from: held in memory, or decoded on demand (image files, Hugging Face Arrow tables).

A split is an :class:`ImageSource`: its labels are always in memory (an int64 tensor: selection, class filters,
stratified subsets and validation hold-outs work on them alone), its pixels are fetched per batch by
``load(indices) -> uint8 (B, C, H, W)``. :class:`TensorSource` holds decoded pixels (Fashion-MNIST, or a small image
set decoded once); :class:`LazySource` decodes the requested images only, so its memory does not grow with the
dataset (the files or the memory-mapped Arrow table hold the data). Both return the same pixels for the same image,
so the streaming path and the in-memory path give the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm


class ImageSource:
    """A split: ``labels`` (int64, in memory) and pixels fetched by index.

    Attributes:
        labels: int64 (N,) labels.
        in_chans: C of every image.
        img_size: H == W of every image.
    """

    labels: torch.Tensor
    in_chans: int
    img_size: int
    # True when pixels are decoded on demand (a DataLoader should decode them in worker processes)
    lazy: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (len(indices), C, H, W) images at ``indices`` (positions in this source)."""
        raise NotImplementedError

    def subset(self, indices: torch.Tensor) -> ImageSource:
        """The images at ``indices``, in that order, as a source of the same kind (no pixels are decoded)."""
        raise NotImplementedError

    @property
    def decoded_bytes(self) -> int:
        """What holding every image decoded in memory takes (uint8)."""
        return len(self) * self.in_chans * self.img_size * self.img_size


class TensorSource(ImageSource):
    """Decoded images held in memory: a batch is one indexing op.

    Args:
        x: uint8 (N, C, H, W).
        y: int64 (N,).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"images and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.labels = x, y
        self.in_chans, self.img_size = int(x.shape[1]), int(x.shape[-1])

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.x[indices]

    def subset(self, indices: torch.Tensor) -> TensorSource:
        return TensorSource(self.x[indices], self.labels[indices])


class LazySource(ImageSource):
    """Images decoded when a batch asks for them, by ``decode(items) -> list of uint8 (C, H, W)``.

    ``items`` is what identifies each image to ``decode`` (a file path, or a row of an Arrow table); it is kept in
    memory (a list of paths, or an int64 tensor of row numbers: 8 bytes an image), the pixels are not. The source
    must be picklable: DataLoader workers get a copy and decode there.

    Args:
        items: One entry per image.
        labels: int64 (N,).
        decode: Decodes a list of items (in order) to equally sized uint8 (C, H, W) tensors.
        in_chans: C of the decoded images.
        img_size: H == W of the decoded images.
    """

    lazy = True

    def __init__(
        self,
        items: Sequence,
        labels: torch.Tensor,
        decode: Callable[[list], list[torch.Tensor]],
        in_chans: int,
        img_size: int,
    ) -> None:
        if len(items) != len(labels):
            raise ValueError(f"items and labels differ in length: {len(items)} vs {len(labels)}")
        self.items = items if isinstance(items, torch.Tensor) else list(items)
        self.labels, self.decode = labels, decode
        self.in_chans, self.img_size = in_chans, img_size

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        images = self.decode(self._pick(indices))
        if not images:
            return torch.empty(0, self.in_chans, self.img_size, self.img_size, dtype=torch.uint8)
        return torch.stack(images)

    def subset(self, indices: torch.Tensor) -> LazySource:
        items = self.items[indices] if isinstance(self.items, torch.Tensor) else self._pick(indices)
        return LazySource(items, self.labels[indices], self.decode, self.in_chans, self.img_size)

    def _pick(self, indices: torch.Tensor) -> list:
        if isinstance(self.items, torch.Tensor):
            return self.items[indices].tolist()
        return [self.items[i] for i in indices.tolist()]


def materialize(source: ImageSource, desc: str, chunk: int = 256, progress: bool = True) -> TensorSource:
    """Decode every image of ``source`` into memory (a :class:`TensorSource`), ``chunk`` images at a time."""
    if not source.lazy:
        return source  # type: ignore[return-value]
    x = torch.empty(len(source), source.in_chans, source.img_size, source.img_size, dtype=torch.uint8)
    starts = range(0, len(source), chunk)
    for i in tqdm(starts, desc=desc, unit="chunk", disable=not progress or len(starts) < 8, leave=False):
        x[i : i + chunk] = source.load(torch.arange(i, min(i + chunk, len(source))))
    return TensorSource(x, source.labels)
