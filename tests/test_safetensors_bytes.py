"""Byte-reproducible safetensors files (``zoo.hub.safetensors_bytes``): canonical header, data untouched, still
loadable."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from zoo.hub.safetensors_bytes import canonical_header, make_reproducible

TENSORS = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3, dtype=torch.bfloat16)}


def header_of(path) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + n]


def test_canonical_header_sorts_metadata_and_keeps_tensor_order():
    raw = b'{"__metadata__":{"z":"1","a":"2"},"t2":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' + (
        b'"t1":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    )
    out = canonical_header(raw)
    assert len(out) % 8 == 0 and out.rstrip(b" ") == out.rstrip()
    doc = json.loads(out)
    assert list(doc) == ["__metadata__", "t2", "t1"]  # tensor entries keep the writer's (offset) order
    assert list(doc["__metadata__"]) == ["a", "z"]
    assert canonical_header(out) == out  # idempotent
    swapped = raw.replace(b'{"z":"1","a":"2"}', b'{"a":"2","z":"1"}')
    assert canonical_header(swapped) == out


def test_canonical_header_without_metadata_and_non_ascii():
    raw = b'{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}'
    assert json.loads(canonical_header(raw)) == json.loads(raw)
    note = 'gr\u00f6\u00dfer "quoted"'
    doc = {"__metadata__": {"note": note}, "w": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}
    out = canonical_header(json.dumps(doc).encode())  # ASCII-escaped in, UTF-8 out: still the same string
    assert json.loads(out)["__metadata__"]["note"] == note
    with pytest.raises(ValueError, match="not a JSON object"):
        canonical_header(b"[1, 2]")


def test_make_reproducible_same_bytes_for_any_metadata_order(tmp_path):
    meta = {f"key{i}": str(i) for i in range(8)}
    files = []
    for i, order in enumerate((meta, dict(reversed(meta.items())))):
        path = tmp_path / f"w{i}.safetensors"
        save_file(TENSORS, str(path), metadata=order)
        make_reproducible(path)
        files.append(path)
    assert files[0].read_bytes() == files[1].read_bytes()
    loaded = load_file(str(files[0]))
    assert set(loaded) == set(TENSORS) and all(torch.equal(loaded[k], v) for k, v in TENSORS.items())
    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata() == meta
    before = files[0].read_bytes()
    make_reproducible(files[0])  # already canonical: nothing changes
    assert files[0].read_bytes() == before


def test_make_reproducible_keeps_the_data_section(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(TENSORS, str(path), metadata={"b": "x" * 5, "a": "y"})
    data = path.read_bytes()
    old_n = struct.unpack("<Q", data[:8])[0]
    make_reproducible(path)
    new = path.read_bytes()
    new_n = struct.unpack("<Q", new[:8])[0]
    assert new[8 + new_n :] == data[8 + old_n :]
    assert list(json.loads(header_of(path))["__metadata__"]) == ["a", "b"]


def test_make_reproducible_rejects_broken_files(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="short.safetensors: not a safetensors file"):
        make_reproducible(short)
    past = tmp_path / "past.safetensors"
    past.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="past.safetensors: header length 1000 runs past the end"):
        make_reproducible(past)
    assert past.read_bytes() == struct.pack("<Q", 1000) + b"{}"  # left as it was
