"""The run folder: the one owner of the files a training run writes, and the one reader of them.

Layout of ``zoo train --out RUN``::

    RUN/recipe.yaml        the resolved recipe (every field, defaults included)
    RUN/manifest.json      software and machine of the run (``zoo.utils.manifest``), written once
    RUN/metrics.jsonl      one JSON object per line: losses, evaluations, structure events
    RUN/result.json        the final evaluation, written last: its presence means the run finished
    RUN/precision.json     ``precision: auto``'s measured choice, so a resumed run keeps it
    RUN/budget_plan.json   the growth budget solver's stage lengths, so a resumed run keeps them
    RUN/checkpoints/       run checkpoints (``zoo.training.run_checkpoints``)
    RUN/model/             the evaluated weights as a hub folder (``zoo.hub``)

Export, reproduce, the benchmark harness and the demo read these files through the functions here, so a missing or
damaged file gives the same error (naming the file and the field) wherever it is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded against a second process
    fcntl = None

from zoo.training.recipe import Recipe, RecipeError, dump_recipe
from zoo.utils import held_locks
from zoo.utils.manifest import recipe_hash, write_json_atomic

RECIPE_FILE = "recipe.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
PRECISION_FILE = "precision.json"
BUDGET_PLAN_FILE = "budget_plan.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
LOCK_FILE = ".lock"
ASIDE_DIR = ".replaced"  # a forced rerun's predecessor, until the new run has started
# what a forced rerun replaces (budget_plan.json is kept: it is a measurement of the same recipe on this machine)
RUN_FILES = (RECIPE_FILE, MANIFEST_FILE, METRICS_FILE, RESULT_FILE, PRECISION_FILE)


class RunFileError(ValueError):
    """A run-folder file that is missing or unreadable; the message names the file and the field."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: {field}: {message}")


# ------------------------------------------------------------------------------------------------------ readers
def read_json_object(path: Path) -> dict:
    """A JSON object file (``result.json``, ``manifest.json``, ``profile.json``, ...)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunFileError(str(path), "<file>", "missing (is the run finished?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFileError(str(path), "<file>", f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RunFileError(str(path), "<root>", "expected a JSON object")
    return data


def read_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``, each an object with an integer ``step``."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(str(path), "<file>", "missing")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunFileError(str(path), f"line {i}", f"not valid JSON: {e}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise RunFileError(str(path), f"line {i}", "expected an object with an integer 'step'")
        records.append(rec)
    return records


def intact_lines(path: Path) -> list[str]:
    """The non-empty lines of a ``metrics.jsonl`` being resumed. A kill in the middle of a write leaves a torn last
    line: it is dropped with a warning (its step is after the checkpoint and will be logged again). A damaged line
    anywhere else is not a torn write, and is an error naming the file and line."""
    lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                warnings.warn(
                    f"{path}: line {i + 1}: dropped a torn last line (a kill during a write): {e}", stacklevel=2
                )
                return lines[:-1]
            raise RunFileError(str(path), f"line {i + 1}", f"not valid JSON: {e}") from None
    return lines


def eval_curve(records: list[dict]) -> list[list[float]]:
    """``[seconds since start, eval accuracy]`` of every evaluation in a run's records."""
    return [[r["time_s"], r["eval_acc"]] for r in records if "eval_acc" in r]


# ------------------------------------------------------------------------------------------------------ writers
class MetricsLog:
    """``metrics.jsonl`` written by the main process; on resume, entries after the checkpoint step are dropped so
    each step appears exactly once."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in intact_lines(self.path) if json.loads(ln).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class RunFolder:
    """Paths of one run's files, and the decisions about an existing folder (resume, refuse, replace)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def model(self) -> Path:
        return self.path / MODEL_DIR

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process while the block runs: a second ``zoo train`` on the same ``--out`` is
        refused (two resumes would both append to ``metrics.jsonl`` and race on checkpoints).

        An advisory ``flock`` on ``RUN/.lock``: the kernel releases it when the process ends, however it ends, so a
        killed run leaves no stale lock; the file keeps the holder's PID for the message. Only the main rank locks
        (every rank of a multi-process run shares the folder). Where ``fcntl`` does not exist, nothing is locked.
        """
        if fcntl is None or int(os.environ.get("RANK", "0")) != 0:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise RecipeError(
                    str(self.path), "--out", f"is in use by process {holder}; wait for it to finish or stop it"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            held_locks.hold(fd)  # forked DataLoader workers close their copy (zoo.utils.held_locks says why)
            yield
        finally:
            held_locks.release(fd)
            os.close(fd)  # releases the lock; the file stays (deleting it would race with a waiting process)

    def prepare(self, recipe: Recipe, resume: bool, force: bool) -> bool:
        """Decide whether this run resumes; refuse to mix runs in one folder. Returns True when resuming.

        ``force`` moves the old run aside (``set_aside``) rather than deleting it: the new run's set-up may still
        fail (a bad data path, a model that does not build), and then ``restore_set_aside`` puts the old run back."""
        if not (self.path / RECIPE_FILE).exists():
            return False  # a fresh folder (--resume on it simply starts)
        if force:
            self.set_aside()
            return False
        manifest = self.path / MANIFEST_FILE
        saved = manifest.read_text() if manifest.exists() else "{}"
        same = json.loads(saved).get("recipe_hash") == recipe_hash(recipe.identity())
        if not resume:
            raise RecipeError(
                str(self.path), "--out", "already holds a run; pass --resume to continue it or --force to replace it"
            )
        if not same:
            raise RecipeError(
                str(self.path), "--out", "holds a run of a different recipe; refusing to resume it with this one"
            )
        return True

    @property
    def _aside(self) -> Path:
        return self.path / ASIDE_DIR

    def set_aside(self) -> None:
        """Move the old run's files into ``RUN/.replaced/`` (a rename: nothing is copied or lost)."""
        if self._aside.exists():  # left by a killed forced run whose set-up never finished: that run is the old one
            self.restore_set_aside()
        self._aside.mkdir()
        for name in (*RUN_FILES, CHECKPOINTS_DIR, MODEL_DIR):
            if (self.path / name).exists():
                os.replace(self.path / name, self._aside / name)

    def restore_set_aside(self) -> None:
        """Put a set-aside run back (the new run's partial files, if any, give way)."""
        if not self._aside.exists():
            return
        for item in self._aside.iterdir():
            dest = self.path / item.name
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            os.replace(item, dest)
        self._aside.rmdir()

    def discard_set_aside(self) -> None:
        """The new run has started: the replaced run goes."""
        shutil.rmtree(self._aside, ignore_errors=True)

    def finished_result(self) -> dict | None:
        """``result.json`` of a finished run, or None while the run is unfinished."""
        path = self.path / RESULT_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def write_start(self, recipe: Recipe, manifest: dict, resuming: bool) -> None:
        """``recipe.yaml`` (always) and ``manifest.json`` (a fresh run only: it describes the run's first session)."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / RECIPE_FILE).write_text(dump_recipe(recipe))
        if not resuming:
            write_json_atomic(self.path / MANIFEST_FILE, manifest)

    def write_result(self, result: dict) -> None:
        write_json_atomic(self.path / RESULT_FILE, result)

    def metrics_log(self, enabled: bool) -> MetricsLog:
        return MetricsLog(self.path / METRICS_FILE, enabled)

    def records(self) -> list[dict]:
        return read_records(self.path / METRICS_FILE)
