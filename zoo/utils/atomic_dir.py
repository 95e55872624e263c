"""Replace a folder by another so that, whatever moment the process is killed, the destination is the old folder or
the new one, complete, and never missing.

Two renames (old out of the way, new in) leave a moment with no destination. Linux's ``renameat2`` with
``RENAME_EXCHANGE`` swaps two paths in one step; Python's ``os`` does not expose it, so it is called through ctypes
(glibc >= 2.28). Where it is missing (other systems, other filesystems), the two renames are used, and the leftover
of a kill between them (``.NAME.old-PID``) is put back by ``recover_replaced`` on the next call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from zoo.utils.faults import fault_point

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the paths ``a`` and ``b``; False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _aside_name(dest: Path) -> str:
    return f".{dest.name}.old-"


def recover_replaced(dest: Path) -> None:
    """Undo what a killed ``replace_dir`` left: a set-aside old folder comes back if the destination is missing,
    otherwise it (and any other set-aside copy) is deleted; temporary build folders of dead processes are deleted."""
    parent = dest.parent
    if not parent.is_dir():
        return
    for leftover in sorted(parent.glob(f"{_aside_name(dest)}*")):
        if not dest.exists():
            os.replace(leftover, dest)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    for tmp in parent.glob(f".{dest.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def replace_dir(new: Path, dest: Path) -> None:
    """Move the complete folder ``new`` to ``dest``, replacing what is there (see the module docstring)."""
    if not dest.exists():
        os.replace(new, dest)
        return
    fault_point("replace_dir_before_swap", 0)
    if _exchange(new, dest):  # dest is now the new folder, `new` the old one
        fault_point("replace_dir_after_swap", 0)
        shutil.rmtree(new, ignore_errors=True)
        return
    old = dest.parent / f"{_aside_name(dest)}{os.getpid()}"
    os.replace(dest, old)
    fault_point("replace_dir_between_renames", 0)  # reached only without renameat2; recover_replaced fixes it
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)
