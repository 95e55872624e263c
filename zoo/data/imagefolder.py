"""Image folders: the user's own images, ``PATH/train/<class>/*.png`` and ``PATH/val/<class>/*`` (or ``test``),
decoded with PIL and resized to a fixed square size. Everything is held in RAM, so this is meant for small datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from zoo.data.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _list_images(folder: Path) -> list[Path]:
    # Sorted so that the sample order (and hence seeded subsets) does not depend on the filesystem's listing order.
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def _decode_image(file: Path, img_size: int, mode: str) -> torch.Tensor:
    """Decode one image to uint8 (C, img_size, img_size): EXIF-rotate, convert, resize short side, center-crop."""
    from PIL import Image, ImageOps  # lazy: only image-folder users pay for PIL

    try:
        with Image.open(file) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert(mode)
            # ImageOps.fit keeps the aspect ratio (resize the short side, center-crop) like timm's eval transform.
            im = ImageOps.fit(im, (img_size, img_size), method=Image.Resampling.BICUBIC)
            arr = np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {file}: {e}", path=file) from e
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _load_split(
    folder: Path, class_to_idx: dict[str, int], img_size: int, mode: str, require_all: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``folder/<class>/*`` into (uint8 images, int64 labels)."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist", path=folder)
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"image folder {folder} has no class sub-folders ({folder}/<class>/*.png)", path=folder)
    xs, ys = [], []
    for d in class_dirs:
        if d.name not in class_to_idx:
            raise DataError(f"class folder {d} does not exist in the train split", path=d)
        files = _list_images(d)
        if not files and require_all:
            raise DataError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})", path=d)
        xs += [_decode_image(f, img_size, mode) for f in files]
        ys += [class_to_idx[d.name]] * len(files)
    if not xs:
        raise DataError(f"image folder {folder} holds no images", path=folder)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def load_imagefolder(path: str | os.PathLike, img_size: int, in_chans: int) -> dict:
    """Decode an image-folder dataset into memory.

    Layout: ``path/train/<class>/*.{png,jpg,...}`` and ``path/val/<class>/...`` (``path/test`` if there is no
    ``val``). Classes are the sorted train sub-folder names; every train class needs at least one image, the eval
    split may lack some classes but not hold unknown ones.

    Args:
        path: Dataset root.
        img_size: Output side; images are resized (short side) and center-cropped to ``img_size x img_size``.
        in_chans: 1 (converted to grayscale "L") or 3 ("RGB").

    Returns:
        ``{"train_x", "train_y", "test_x", "test_y", "classes"}`` with uint8 (N, in_chans, img_size, img_size) images,
        int64 labels and the list of class names.

    Raises:
        DataError: Missing/empty folders (``path`` names the folder), undecodable images (``path`` names the file),
            or invalid ``img_size``/``in_chans`` (``field`` names the config field).
    """
    modes = {1: "L", 3: "RGB"}
    if in_chans not in modes:
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
    train_x, train_y = _load_split(train_dir, class_to_idx, img_size, modes[in_chans], require_all=True)
    test_x, test_y = _load_split(eval_dir, class_to_idx, img_size, modes[in_chans], require_all=False)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": classes}
