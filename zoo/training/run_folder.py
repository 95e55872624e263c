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

import json
import os
import shutil
from pathlib import Path

from zoo.training.recipe import Recipe, RecipeError, dump_recipe
from zoo.utils.manifest import recipe_hash, write_json_atomic

RECIPE_FILE = "recipe.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
PRECISION_FILE = "precision.json"
BUDGET_PLAN_FILE = "budget_plan.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
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
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
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

    def prepare(self, recipe: Recipe, resume: bool, force: bool) -> bool:
        """Decide whether this run resumes; refuse to mix runs in one folder. Returns True when resuming."""
        if not (self.path / RECIPE_FILE).exists():
            return False  # a fresh folder (--resume on it simply starts)
        if force:
            for name in (*RUN_FILES, CHECKPOINTS_DIR, MODEL_DIR):
                p = self.path / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
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
