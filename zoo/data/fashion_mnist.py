"""Fashion-MNIST: its constants, locating the IDX files (the Debian package ``dataset-fashion-mnist`` installs them
to ``/usr/share/datasets/fashion-mnist``), downloading them where the network allows, and parsing them."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import torch

from zoo.data.errors import DataError

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


# Decoded Fashion-MNIST keyed by resolved directory: decoding the 26 MB train gz takes ~1 s and tests/benchmarks load
# it many times per process.
_FASHION_MNIST_CACHE: dict[str, dict[str, torch.Tensor]] = {}


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


# sha256 of each file's decompressed content (the IDX bytes), identical in the official and the Debian copies
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def content_sha256(path: Path) -> str:
    """sha256 of a ``.gz`` file's decompressed bytes."""
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(dest: Path) -> None:
    """Download the four official Fashion-MNIST files into ``dest``.

    Each file goes to a ``.part`` name first and is renamed only once it parses as a valid IDX file of the expected
    shape and its decompressed bytes have the official sha256, so an interrupted or tampered download (the endpoint
    is HTTP-only) never leaves a file that :func:`find_fashion_mnist` would accept. The check is on the decompressed
    content: distributions such as Debian re-compress the files, so gz checksums differ between equally valid
    copies.

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
            digest = content_sha256(part)
            if digest != FASHION_MNIST_SHA256[name]:
                raise DataError(f"downloaded {name}: content sha256 {digest} is not the official one", path=part)
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
