"""Byte-reproducible safetensors files: the same tensors and metadata always give the same file.

The safetensors writer keeps the ``__metadata__`` header entries in a hash map, so their order (and the file's bytes)
changes from one save to the next although every tensor is equal. A hub folder whose weights file changes on every
export makes each re-publish upload a new LFS object and puts a weights change in the repo history where nothing
changed. ``canonical_header`` rewrites only the JSON header (metadata keys sorted, tensor entries in the writer's
order, which is already deterministic: sorted by dtype and name); the data section is copied as it is, and its
offsets are relative to the end of the header, so they stay valid.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

_LEN = struct.Struct("<Q")  # the header's byte length, little-endian u64, opens every safetensors file
_ALIGN = 8  # the writer pads the header with spaces to a multiple of 8 so the data section starts aligned


def canonical_header(header: bytes) -> bytes:
    """The header JSON with sorted metadata keys, compact, space-padded to a multiple of 8 bytes.

    Args:
        header: The header bytes as stored (JSON, possibly followed by padding spaces).

    Returns:
        The canonical header bytes.

    Raises:
        ValueError: If the header is not a JSON object.
    """
    doc = json.loads(header.decode("utf-8"))  # keeps the tensors' order
    if not isinstance(doc, dict):
        raise ValueError("safetensors header is not a JSON object")
    if "__metadata__" in doc:
        meta = dict(sorted(doc.pop("__metadata__").items()))
        doc = {"__metadata__": meta, **doc}
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % _ALIGN)


def make_reproducible(path: str | os.PathLike) -> None:
    """Rewrite the safetensors file at ``path`` in place with its canonical header (a no-op when it already has it).

    Raises:
        ValueError: If the file is too short for the header length it declares.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _LEN.size:
        raise ValueError(f"{path}: not a safetensors file ({len(data)} bytes)")
    (n,) = _LEN.unpack_from(data)
    if _LEN.size + n > len(data):
        raise ValueError(f"{path}: header length {n} runs past the end of the file ({len(data)} bytes)")
    header = canonical_header(data[_LEN.size : _LEN.size + n])
    if header == data[_LEN.size : _LEN.size + n]:
        return
    path.write_bytes(_LEN.pack(len(header)) + header + data[_LEN.size + n :])
