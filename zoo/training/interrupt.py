"""Stopping a run on Ctrl-C or SIGTERM (a scheduler's pre-emption, `kill`) with a checkpoint, so it resumes.

Checkpoints are written at epoch ends by default, so a run interrupted mid-epoch would lose the epoch. While a run
trains, SIGINT and SIGTERM only set a flag; the training loop finishes the optimizer step it is in, saves a checkpoint
and raises ``StoppedBySignal``, which the CLI turns into exit code 128 + signal number (the shell's convention).
A second signal while the checkpoint is being written is left to the default handler (the user insists).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppedBySignal(Exception):
    """Training stopped at a step boundary on a signal; a checkpoint of that step was saved."""

    def __init__(self, signum: int, step: int, out: str):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"{out}: stopped by {name} after step {step}; checkpoint saved, continue with --resume")


class StopFlag:
    """Set by the first SIGINT / SIGTERM received while installed."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGINT / SIGTERM set the returned flag instead of interrupting (main thread only: Python
    delivers signals there; elsewhere the block runs with the default handlers)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.signum = signum
        for s in SIGNALS:  # a second signal interrupts as usual
            signal.signal(s, previous[s])

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s in SIGNALS:
            signal.signal(s, previous[s])
