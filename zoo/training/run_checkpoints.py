"""Atomic training checkpoints on top of ``Accelerator.save_state``.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX`` holding Accelerate's state (model safetensors, optimizer, RNG
per process) plus ``ema.safetensors`` and ``train_state.json`` (step, epoch, structure stage, and the sha256 of every
other file, checked before a resume loads it: a damaged newest checkpoint falls back to the newest intact one). It is
written under a temporary name and renamed only when complete, so a kill during the write leaves at most a
``.tmp-*`` folder that is ignored and cleaned up (``zoo.utils.faults`` SIGKILLs the process at points inside
``finalize`` to test exactly that: ``ZOO_FAULT=ckpt_before_state:N`` or ``ckpt_before_prune:N``). Explicit folder
names also avoid Accelerate's automatic naming, whose counter is not restored by ``load_state``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

from safetensors import SafetensorError, safe_open

from zoo.utils.faults import fault_point

STATE_NAME = "train_state.json"
PREFIX = "step_"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Completed checkpoints, oldest first (temporary folders are not listed)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in a checkpoint folder (but the train state, which records them), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE_NAME
    }


def damaged_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    """Files of a checkpoint that are missing or differ from the hashes recorded when it was written."""
    out = []
    for rel, digest in recorded.items():
        path = folder / rel
        if not path.is_file():
            out.append(f"{rel} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            out.append(f"{rel} differs from the sha256 recorded when it was written")
    return out


def is_valid(folder: Path) -> str | None:
    """None if the checkpoint is complete and unchanged, else the reason it is not.

    Checkpoints record the sha256 of every file they hold (``files`` in the train state), so a flipped byte in the
    weights, a truncated optimizer state or a deleted RNG state is caught before Accelerate loads it (Accelerate
    swallows RNG load errors, and a damaged state would otherwise resume silently into a different run). Older
    checkpoints without hashes get the structural check below only."""
    state = folder / STATE_NAME
    try:
        data = json.loads(state.read_text())
        int(data["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{state}: unreadable train state ({e})"
    if isinstance(data.get("files"), dict):
        damaged = damaged_files(folder, data["files"])
        if damaged:
            return f"{folder}: " + "; ".join(damaged)
        return None
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        return f"{folder}: no model weights"
    for w in weights + sorted(folder.glob("ema.safetensors")):
        try:
            with safe_open(str(w), framework="pt") as f:
                for k in f.keys():  # touching every tensor catches truncation inside the data section
                    f.get_slice(k)
        except (SafetensorError, OSError) as e:
            return f"{w}: corrupt safetensors ({e})"
    return None


def latest_valid(ckpt_dir: Path) -> Path | None:
    """Newest checkpoint that passes ``is_valid``; warns about every newer one it has to skip."""
    for folder in reversed(list_checkpoints(ckpt_dir)):
        reason = is_valid(folder)
        if reason is None:
            return folder
        warnings.warn(f"skipping damaged checkpoint: {reason}; falling back to the previous one", stacklevel=2)
    return None


def read_state(folder: Path) -> dict:
    return json.loads((folder / STATE_NAME).read_text())


def temp_folder(ckpt_dir: Path, step: int) -> Path:
    tmp = ckpt_dir / f".tmp-{checkpoint_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def finalize(tmp: Path, ckpt_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write the train state last, rename the folder into place, then prune to the newest ``keep``."""
    fault_point("ckpt_before_state", step)  # Accelerate's state is in ``tmp``; no train state, not renamed
    state = {**state, "files": file_hashes(tmp)}
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))
    final = ckpt_dir / checkpoint_name(step)
    if final.exists():  # the same step saved again after a resume: replace it atomically-enough (old one moved first)
        old = ckpt_dir / f".old-{final.name}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fault_point("ckpt_before_prune", step)  # complete and in place; older checkpoints not pruned yet
    for stale in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    for leftover in ckpt_dir.glob(".tmp-*"):
        if leftover != tmp:
            shutil.rmtree(leftover, ignore_errors=True)
    return final
