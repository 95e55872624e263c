"""How DataLoader worker processes are started.

From a fork server, not forked from the training process. Loaders here start their workers every epoch (and for
every evaluation), by which time the training process runs threads: the previous loader's queue feeder, tqdm's
monitor, the interop pool. ``fork`` copies a lock that one of them holds into a child that can never take it; the
2-process streaming test hung that way at its first evaluation (rank 1's new evaluation worker stuck right after
``fork``, rank 0 waiting in ``Accelerator.reduce``). Python 3.14 makes forkserver the Linux default for this reason.

The fork server is a fresh single-threaded process that imports the loaders' modules once (torch included), so each
worker is a cheap fork of it. As under ``spawn``, a worker imports the caller's script (as ``__mp_main__``): a script
that trains with workers needs the ``if __name__ == "__main__":`` guard, as on macOS and Windows (Python refuses
with a message naming the idiom otherwise; ``zoo`` commands and ``python -m`` are unaffected). What a worker gets is
pickled: the sources keep paths, Arrow tables (pickled as their files) and tensors (shared memory), never open
handles.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

#: what the fork server imports before forking workers: the loaders and what they import at module level (torch, PIL);
#: ``datasets`` is imported lazily, by the workers that need it (preloading it here saved under 10% of the slowest
#: streaming test's time: CHANGELOG)
PRELOAD = ["zoo.data.pipeline"]


def worker_context(num_workers: int) -> BaseContext | None:
    """The start method for ``num_workers`` DataLoader workers: ``forkserver`` where the platform has it (Linux,
    macOS), else the platform's default (``spawn`` on Windows, as safe); None without workers (the DataLoader refuses
    a context then)."""
    if num_workers == 0 or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    ctx = multiprocessing.get_context("forkserver")
    # process-wide, read when the server starts (the first worker); the default is ["__main__"], the caller's script
    ctx.set_forkserver_preload(PRELOAD)
    return ctx
