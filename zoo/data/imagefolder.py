"""Image folders: the user's own images, ``PATH/train/<class>/*.png`` and ``PATH/val/<class>/*`` (or ``test``),
listed at start-up and decoded on demand (``zoo.data.sources.LazySource``), so a folder far larger than memory trains;
``zoo.data.datasets`` decides whether a split is small enough to decode into memory once instead."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from zoo.data.decode import MODES, file_decoder
from zoo.data.errors import DataError
from zoo.data.sources import LazySource, materialize

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _list_images(folder: Path) -> list[Path]:
    # Sorted so that the sample order (and hence seeded subsets) does not depend on the filesystem's listing order.
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def _list_split(folder: Path, class_to_idx: dict[str, int], require_all: bool) -> tuple[list[Path], torch.Tensor]:
    """The image files of ``folder/<class>/*`` and their int64 labels (nothing is decoded)."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist", path=folder)
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"image folder {folder} has no class sub-folders ({folder}/<class>/*.png)", path=folder)
    files: list[Path] = []
    labels: list[int] = []
    for d in class_dirs:
        if d.name not in class_to_idx:
            raise DataError(f"class folder {d} does not exist in the train split", path=d)
        found = _list_images(d)
        if not found and require_all:
            raise DataError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})", path=d)
        files += found
        labels += [class_to_idx[d.name]] * len(found)
    if not files:
        raise DataError(f"image folder {folder} holds no images", path=folder)
    return files, torch.tensor(labels, dtype=torch.int64)


def open_imagefolder(path: str | os.PathLike, img_size: int, in_chans: int) -> dict:
    """An image-folder dataset as two :class:`~zoo.data.sources.LazySource` splits: files are listed, not decoded.

    Layout: ``path/train/<class>/*.{png,jpg,...}`` and ``path/val/<class>/...`` (``path/test`` if there is no
    ``val``). Classes are the sorted train sub-folder names; every train class needs at least one image, the eval
    split may lack some classes but not hold unknown ones. Each image is decoded when a batch asks for it
    (:func:`zoo.data.decode.decode_file`: EXIF-rotated, converted, short side resized, center-cropped).

    Args:
        path: Dataset root.
        img_size: Output side.
        in_chans: 1 (converted to grayscale "L") or 3 ("RGB").

    Returns:
        ``{"train", "test"}`` sources and ``"classes"``, the list of class names.

    Raises:
        DataError: Missing/empty folders (``path`` names the folder) or invalid ``img_size``/``in_chans`` (``field``
            names the config field). An undecodable image is reported (naming the file) when it is decoded.
    """
    if in_chans not in MODES:
        raise DataError(f"data.in_chans must be 1 or 3 for image folders, got {in_chans!r}", field="data.in_chans")
    if not isinstance(img_size, int) or img_size <= 0:
        raise DataError(f"data.img_size must be a positive int, got {img_size!r}", field="data.img_size")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder dataset {root} does not exist", path=root, field="data.name")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"image folder dataset {root} has no train/ sub-folder", path=train_dir)
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_to_idx = {c: i for i, c in enumerate(classes)}
    eval_dir = root / "val" if (root / "val").is_dir() else root / "test"
    decode = file_decoder(img_size, in_chans)
    splits = {}
    for split, folder, require_all in (("train", train_dir, True), ("test", eval_dir, False)):
        files, labels = _list_split(folder, class_to_idx, require_all)
        splits[split] = LazySource([str(f) for f in files], labels, decode, in_chans, img_size)
    return {**splits, "classes": classes}


def load_imagefolder(path: str | os.PathLike, img_size: int, in_chans: int) -> dict:
    """:func:`open_imagefolder` with every image decoded into memory: ``{"train_x", "train_y", "test_x", "test_y",
    "classes"}`` with uint8 (N, in_chans, img_size, img_size) images and int64 labels."""
    opened = open_imagefolder(path, img_size, in_chans)
    train = materialize(opened["train"], "decode train")
    test = materialize(opened["test"], "decode eval")
    return {"train_x": train.x, "train_y": train.labels, "test_x": test.x, "test_y": test.labels,
            "classes": opened["classes"]}  # fmt: skip
