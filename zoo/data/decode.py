"""Decoding one image to the fixed-size uint8 tensor every split holds, whatever it came from (a file, a Hugging Face
``Image`` cell): the same function for in-memory and on-the-fly paths, so both give the same pixels."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import torch

from zoo.data.errors import DataError

MODES = {1: "L", 3: "RGB"}


def fit_image(im, img_size: int, mode: str) -> torch.Tensor:
    """A PIL image as uint8 (C, img_size, img_size): EXIF-rotate, convert to ``mode``, resize the short side and
    center-crop (``ImageOps.fit`` keeps the aspect ratio, like timm's eval transform)."""
    from PIL import Image, ImageOps  # lazy: only image users pay for PIL

    im = ImageOps.exif_transpose(im).convert(mode)
    im = ImageOps.fit(im, (img_size, img_size), method=Image.Resampling.BICUBIC)
    arr = np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def decode_file(file: str | os.PathLike, img_size: int, mode: str) -> torch.Tensor:
    """One image file as uint8 (C, img_size, img_size); an undecodable file is a DataError naming it."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            return fit_image(im, img_size, mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {file}: {e}", path=file) from e


def _decode_files(files: list, img_size: int, mode: str) -> list[torch.Tensor]:
    return [decode_file(f, img_size, mode) for f in files]


def file_decoder(img_size: int, in_chans: int):
    """A picklable ``decode(list of paths) -> list of uint8 (C, H, W)`` for :class:`zoo.data.sources.LazySource`."""
    return partial(_decode_files, img_size=img_size, mode=MODES[in_chans])
