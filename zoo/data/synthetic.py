"""Generated image folders, for measuring the on-the-fly path where no real large dataset is at hand (the memory test,
the overhead suite's input-pipeline headroom): colour ramps with noise, saved as JPEG, so decoding costs what a photo
of that size costs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image_folder(root: Path, n: int, side: int, classes: int = 4, val_per_class: int = 2, seed: int = 0) -> Path:
    """``root/train/c{k}/{i}.jpg`` (``n`` images, class ``i % classes``) and ``root/val/c{k}/*`` (links to train
    images); returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for i in range(n):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img = ramp[None, :, None] * rng.random(3)[None, None] + rng.normal(0, 20, (side, side, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=85)
    link_val_split(root, classes, val_per_class)
    return root


def link_val_split(root: Path, classes: int, per_class: int) -> None:
    """``root/val/c{k}/{j}.jpg``: links to the first ``per_class`` train images of each class."""
    for k in range(classes):
        val = root / "val" / f"c{k}"
        val.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            (val / f"{j}.jpg").symlink_to((root / "train" / f"c{k}" / f"{k + classes * j}.jpg").resolve())


def link_image_folder(root: Path, source: Path, n: int, classes: int = 4, val_per_class: int = 2) -> Path:
    """The first ``n`` train images of a :func:`write_image_folder` folder, as links (no new image data)."""
    for i in range(n):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").symlink_to((source / "train" / f"c{i % classes}" / f"{i}.jpg").resolve())
    link_val_split(root, classes, val_per_class)
    return root
