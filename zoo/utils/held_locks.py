"""File descriptors that hold ``flock`` locks of this process (a run folder's ``.lock``), and their release in forked
children.

A ``flock`` lock belongs to the open file, which a forked child shares: a DataLoader worker forked while a run holds
its folder keeps the lock alive after the run is killed, until the worker notices its parent is gone (up to 5 s),
so an immediate ``--resume`` was refused as "in use by process <dead pid>". Workers close their copies when they
start (``close_in_child``, the loaders' ``worker_init_fn``); the parent's lock is untouched.
"""

from __future__ import annotations

import os

_HELD: set[int] = set()


def hold(fd: int) -> None:
    """Record ``fd`` as a lock held by this process."""
    _HELD.add(fd)


def release(fd: int) -> None:
    """``fd`` no longer holds a lock (the caller closes it)."""
    _HELD.discard(fd)


def close_in_child(_worker_id: int | None = None) -> None:
    """In a forked child (a DataLoader worker): close the inherited copies of the parent's lock descriptors."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
