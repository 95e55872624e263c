"""Fault injection for reliability tests: a real ``kill -9`` at a precise point of a run.

Set the environment variable ``ZOO_FAULT=NAME:STEP`` and the process sends itself SIGKILL when it reaches the fault
point ``NAME`` at optimizer step ``STEP``: no exception, no ``finally``, no atexit handler runs, exactly like an OOM
kill or a pre-empted machine. Unset (the normal case) a fault point costs one environment lookup.

Fault points (all inside ``zoo.training.run_checkpoints.finalize``, called by the main process while saving a
checkpoint):

- ``ckpt_before_state``: Accelerate's state (weights, optimizer, RNG) is written to ``.tmp-step_N`` but
  ``train_state.json`` is not, and the folder is not renamed yet: resume must ignore and clean the temporary folder.
- ``ckpt_before_prune``: ``step_N`` is complete and renamed into place, older checkpoints are not pruned yet.

and, with step 0, inside ``zoo export`` (``zoo.publish.export``, ``zoo.utils.atomic_dir.replace_dir``):
``export_before_replace`` (the new folder is complete beside the old one), ``replace_dir_before_swap``,
``replace_dir_after_swap`` (the new folder in place, the old one not yet deleted) and
``replace_dir_between_renames`` (only where the atomic exchange is unavailable).

Example: ``ZOO_FAULT=ckpt_before_state:6 zoo train RECIPE --out DIR`` dies while writing the step-6 checkpoint.
"""

from __future__ import annotations

import os
import signal

ENV = "ZOO_FAULT"


def fault_point(name: str, step: int) -> None:
    """SIGKILL this process if ``ZOO_FAULT`` is ``f"{name}:{step}"``; otherwise do nothing."""
    if os.environ.get(ENV) == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
