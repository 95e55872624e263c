"""Datasets as in-memory uint8 tensors (augmentation and loaders: ``zoo.pipeline``).

Design: every dataset is decoded once per process into ``uint8`` tensors (N, C, H, W) plus ``int64`` labels, so
loading a batch is one indexing op and nothing is decoded twice.

Data sources:

* ``fashion-mnist``: the official IDX files, found by :func:`find_fashion_mnist` (Debian package
  ``dataset-fashion-mnist`` installs them to ``/usr/share/datasets/fashion-mnist``).
* ``imagefolder:PATH``: the user's own images, ``PATH/train/<class>/*.png`` and ``PATH/val/<class>/*`` (or ``test``),
  decoded with PIL and resized to a fixed square size. Everything is held in RAM, so this is meant for small datasets.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DataError",
    "DatasetBundle",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "build_datasets",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "load_imagefolder",
    "read_idx",
]

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
DOWNLOAD_TIMEOUT_S = 20.0
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# Decoded Fashion-MNIST keyed by resolved directory: decoding the 26 MB train gz takes ~1 s and tests/benchmarks load
# it many times per process.
_FASHION_MNIST_CACHE: dict[str, dict[str, torch.Tensor]] = {}


class DataError(ValueError):
    """Invalid or missing data, or an invalid data config value.

    Attributes:
        path: The file or folder at fault, if any.
        field: The config field at fault (e.g. ``"data.name"``), if any.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.field = field


# ----------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST: locating, downloading, IDX parsing
# ----------------------------------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "zoo" / "fashion-mnist"


def _holds_fashion_mnist(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FASHION_MNIST_FILES.values())


def _candidate_dirs(path: str | os.PathLike | None) -> list[Path]:
    """Folders to search, in order. An explicit path is authoritative: no silent fallback to other copies."""
    if path is not None:
        p = Path(path).expanduser()
        return [p, p / "fashion-mnist"]
    dirs: list[Path] = []
    env = os.environ.get("ZOO_DATA")
    if env:
        p = Path(env).expanduser()
        dirs += [p, p / "fashion-mnist"]
    dirs += [FASHION_MNIST_SYSTEM_DIR, _cache_dir()]
    return dirs


def _download(dest: Path) -> None:
    """Download the four official Fashion-MNIST files into ``dest``.

    Each file goes to a ``.part`` name first and is renamed only once it parses as a valid IDX file of the expected
    shape, so an interrupted download never leaves a file that :func:`find_fashion_mnist` would accept. (Content is
    validated structurally rather than by checksum: the S3 endpoint is HTTP-only and distributions such as Debian
    re-compress the files, so gz checksums differ between equally valid copies.)

    Raises:
        DataError: On any network, filesystem or validation failure.
    """
    expected_shapes = {"train_x": (60000, 28, 28), "train_y": (60000,), "test_x": (10000, 28, 28), "test_y": (10000,)}
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest}: {e}", path=dest) from e
    for key, name in FASHION_MNIST_FILES.items():
        target = dest / name
        if target.is_file():
            continue
        part = dest / (name + ".part")
        try:
            with urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                part.write_bytes(resp.read())
            shape = tuple(read_idx(part).shape)
            if shape != expected_shapes[key]:
                raise DataError(f"downloaded {name} has shape {shape}, expected {expected_shapes[key]}", path=part)
            os.replace(part, target)
        except (OSError, DataError) as e:  # URLError and socket timeouts are OSErrors
            part.unlink(missing_ok=True)
            raise DataError(f"download of {FASHION_MNIST_URL + name} failed: {e}", path=target) from e


def find_fashion_mnist(path: str | os.PathLike | None = None) -> Path:
    """Locate the folder holding the four Fashion-MNIST IDX ``.gz`` files, downloading them as a last resort.

    Search order: ``path`` (the folder itself or ``path/fashion-mnist``); otherwise ``$ZOO_DATA`` (itself or
    ``$ZOO_DATA/fashion-mnist``), ``/usr/share/datasets/fashion-mnist``, ``~/.cache/zoo/fashion-mnist``. If nothing
    is found the official files are downloaded (timeout 20 s per request) into ``path`` when given, else into
    ``~/.cache/zoo/fashion-mnist``.

    Args:
        path: Explicit data folder. When given, only this folder is searched, so a wrong path is reported instead of
            silently using another copy.

    Returns:
        The folder containing the four files.

    Raises:
        DataError: If the files are missing and the download failed. ``path`` is the explicit path (or the cache
            folder), ``field`` is ``"data.path"``.
    """
    candidates = _candidate_dirs(path)
    for folder in candidates:
        if _holds_fashion_mnist(folder):
            return folder
    dest = candidates[0] if path is not None else _cache_dir()
    try:
        _download(dest)
    except DataError as e:
        searched = ", ".join(str(c) for c in candidates)
        raise DataError(
            f"Fashion-MNIST not found (searched: {searched}) and the download failed ({e}). Get the files with "
            f"`apt-get install dataset-fashion-mnist` (installs them to {FASHION_MNIST_SYSTEM_DIR}), or set "
            f"ZOO_DATA (or data.path) to a folder holding {', '.join(FASHION_MNIST_FILES.values())}.",
            path=dest,
            field="data.path",
        ) from e
    return dest


def read_idx(file: str | os.PathLike) -> torch.Tensor:
    """Parse an unsigned-byte IDX file (gzip-compressed or raw; detected from the content, not the name).

    IDX layout: two zero bytes, a dtype code (only ``0x08`` = uint8 is used by (Fashion-)MNIST), the number of dims,
    one big-endian uint32 per dim, then the data in C order.

    Args:
        file: Path to the IDX file.

    Returns:
        A ``uint8`` tensor with the dims from the header.

    Raises:
        DataError: If the file is unreadable, truncated or corrupt, or its header is invalid; ``path`` names the file.
    """
    file = Path(file)
    try:
        raw = file.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; truncation raises EOFError
        raise DataError(f"cannot read IDX file {file}: {e}", path=file) from e
    if len(raw) < 4:
        raise DataError(f"IDX file {file} is truncated: {len(raw)} bytes, no header", path=file)
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise DataError(f"IDX file {file} has bad magic {raw[:4].hex()} (expected 0000xxyy)", path=file)
    if dtype_code != 0x08:
        raise DataError(f"IDX file {file} has dtype code {dtype_code:#04x}; only 0x08 (uint8) is supported", path=file)
    if not 1 <= ndim <= 4:
        raise DataError(f"IDX file {file} declares {ndim} dims; expected 1..4", path=file)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {file} is truncated inside its header", path=file)
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(dims)
    if len(raw) - header != count:
        raise DataError(
            f"IDX file {file} is truncated or corrupt: header dims {dims} need {count} bytes of data, "
            f"found {len(raw) - header}",
            path=file,
        )
    # bytearray: torch.frombuffer needs a writable buffer to avoid a warning; the tensor keeps it alive.
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header, count=count).view(dims)


def load_fashion_mnist(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Load Fashion-MNIST, decoding once per process (cached by resolved folder).

    Args:
        path: Explicit data folder, see :func:`find_fashion_mnist`.

    Returns:
        ``{"train_x": uint8 (60000, 1, 28, 28), "train_y": int64 (60000,), "test_x": uint8 (10000, 1, 28, 28),
        "test_y": int64 (10000,)}``. The dict is a fresh copy but the tensors are shared with the cache: treat them as
        read-only.

    Raises:
        DataError: If the files are missing or corrupt.
    """
    folder = find_fashion_mnist(path)
    key = str(folder.resolve())
    if key not in _FASHION_MNIST_CACHE:
        data: dict[str, torch.Tensor] = {}
        for split in ("train", "test"):
            x_file, y_file = folder / FASHION_MNIST_FILES[f"{split}_x"], folder / FASHION_MNIST_FILES[f"{split}_y"]
            x, y = read_idx(x_file), read_idx(y_file)
            if x.dim() != 3 or x.shape[1:] != (28, 28):
                raise DataError(f"{x_file} has shape {tuple(x.shape)}, expected (N, 28, 28)", path=x_file)
            if y.dim() != 1 or len(y) != len(x):
                raise DataError(f"{y_file} has shape {tuple(y.shape)}, expected ({len(x)},)", path=y_file)
            if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
                raise DataError(f"{y_file} has label {int(y.max())} >= {len(FASHION_MNIST_CLASSES)}", path=y_file)
            data[f"{split}_x"] = x.unsqueeze(1)
            data[f"{split}_y"] = y.long()
        _FASHION_MNIST_CACHE[key] = data
    return dict(_FASHION_MNIST_CACHE[key])


# ----------------------------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# Dataset bundle: class filter, subsets, resizing
# ----------------------------------------------------------------------------------------------------------------------


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


def _check_subset(n: int | None, field: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise DataError(f"{field} must be a positive int (or null for all), got {n!r}", field=field)


def build_datasets(
    name: str,
    path: str | os.PathLike | None = None,
    classes: list[int] | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
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
        img_size: Output side, required for image folders. For Fashion-MNIST it may be given but must be 28.
        in_chans: 1 or 3, required for image folders. For Fashion-MNIST it may be given but must be 1.

    Returns:
        The bundle. Without class filter or subsets the tensors are shared with the load cache: treat as read-only.

    Raises:
        DataError: Unknown ``name`` (``field="data.name"``), invalid ``classes``/subsets/sizes (``field`` names the
            config field), or missing/corrupt data (``path`` names it).
    """
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
    )
