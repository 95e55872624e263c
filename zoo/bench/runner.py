"""The arm runner: multi-seed training arms for the benchmark suites (side-by-side step timing is
``zoo.measure.stopwatch``).

- ``run_arms``: each arm is a recipe plus overrides, trained for several seeds, each run in its own subprocess (so
  its peak memory is its own: the run records its VmHWM, which a fresh ``exec`` resets, unlike ``ru_maxrss``, which
  inherits the forking parent's high-water mark), with its manifest. Manifests must agree in everything but the arm
  and seed (and what ``IGNORED_IN_COMPARISON`` lists), or the comparison is refused.
- Kept results: inside ``keep_results(DIR)`` (``zoo bench`` uses ``results/SUITE``, a tracked folder) each finished
  run's small records (``KEPT_FILES``) are copied to ``DIR/ARM/seedN``, and a later run of the suite, in another
  session or on a clean checkout, reuses them and trains only the arms that are missing. Full-length suites can
  outlast a session, and ``runs/`` (checkpoints, weights) is not kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path
from zoo.training.run_folder import (
    MANIFEST_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    RESULT_FILE,
    eval_curve,
    read_records,
)
from zoo.utils.manifest import compare_manifests, recipe_hash

# the records of a run that a suite's statistics, curves and comparability check need (kilobytes, not the weights)
KEPT_FILES = (RECIPE_FILE, RESULT_FILE, METRICS_FILE, MANIFEST_FILE)
# Where finished runs' records are kept, set around a suite run by ``keep_results``. A context variable rather than a
# parameter of every suite: the suites call ``run_arms`` in many places, and where records are kept is the caller's
# decision, not the suite's.
_KEPT_ROOT: ContextVar[Path | None] = ContextVar("kept_results", default=None)


@contextlib.contextmanager
def keep_results(folder: Path | None) -> Iterator[None]:
    """Keep (and reuse) finished runs' records under ``folder`` while the block runs."""
    token = _KEPT_ROOT.set(None if folder is None else Path(folder))
    try:
        yield
    finally:
        _KEPT_ROOT.reset(token)


def _keep_run(run_dir: Path, kept: Path) -> None:
    """Copy a finished run's records to ``kept`` atomically: a kill leaves the old folder or the complete new one."""
    tmp = kept.with_name(f".{kept.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in KEPT_FILES:
        shutil.copy2(run_dir / name, tmp / name)
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(tmp, kept)


@dataclass
class Arm:
    """A named training arm: a recipe (path or name in schedules/) plus ``--set`` overrides."""

    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)


def _run_subprocess(cmd: list[str], log: Path) -> int:
    """Run a command with its output in ``log``; returns the exit code."""
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode


def run_arms(
    arms: list[Arm],
    seeds: list[int],
    out: Path,
    extra_overrides: list[str] | None = None,
    allow_mismatch: bool = False,
) -> list[dict]:
    """Train every arm for every seed (skipping runs already finished in ``out``, or kept by ``keep_results``); return
    one record per run."""
    out.mkdir(parents=True, exist_ok=True)
    kept_root = _KEPT_ROOT.get()
    records = []
    jobs = [(a, s) for s in seeds for a in arms]  # seed-major: a partial suite still has every arm
    for arm, seed in tqdm(jobs, desc="bench runs"):
        run_dir = out / arm.name / f"seed{seed}"
        kept = kept_root / arm.name / f"seed{seed}" if kept_root is not None else None
        # suite-wide overrides first, the arm's own last: an arm's defining change (capacity, epochs) always wins
        sets = [*(extra_overrides or []), *arm.overrides, f"train.seed={seed}"]
        if kept is not None and (kept / RESULT_FILE).exists():
            _check_reused_run(kept, arm.recipe, sets)
            run_dir = kept
        elif (run_dir / RESULT_FILE).exists():
            _check_reused_run(run_dir, arm.recipe, sets)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "zoo.cli", "train", arm.recipe, "--out", str(run_dir), "--no-progress"]
            cmd += [x for s in sets for x in ("--set", s)]
            if (run_dir / "recipe.yaml").exists():
                cmd.append("--resume")
            rc = _run_subprocess(cmd, run_dir.parent / f"seed{seed}.log")
            if rc != 0:
                raise RuntimeError(
                    f"arm {arm.name} seed {seed} failed (exit {rc}); see {run_dir.parent}/seed{seed}.log"
                )
        if kept is not None and run_dir != kept:
            _keep_run(run_dir, kept)
        result = json.loads((run_dir / RESULT_FILE).read_text())
        peak = result.get("peak_cuda_bytes") or result.get("peak_rss_bytes")
        records.append(
            {
                "arm": arm.name,
                "seed": seed,
                "acc": result["final_acc"],
                "wall_clock_s": result["wall_clock_s"],
                "steps": result["steps"],
                "img_per_s": result["img_per_s"],
                "peak_mem_bytes": peak,
                "curve": eval_curve(read_records(run_dir / METRICS_FILE)),
                "manifest": json.loads((run_dir / MANIFEST_FILE).read_text()),
            }
        )
    check_comparable(records, allow_mismatch)
    return records


def _check_reused_run(run_dir: Path, recipe: str, sets: list[str]) -> None:
    """A finished run is reused only if it trained exactly this recipe and these overrides: otherwise a rerun with
    other settings (``--set schedule.epochs=9``, other seeds moving an equal-time arm's length) would silently
    report old runs under the new settings."""

    want = recipe_hash(load_recipe(resolve_recipe_path(recipe), sets).identity())
    have = json.loads((run_dir / MANIFEST_FILE).read_text()).get("recipe_hash")
    if have != want:
        raise RuntimeError(
            f"{run_dir / 'manifest.json'}: recipe_hash {have} is not that of {recipe} with {sets} ({want}): the "
            "finished run was trained with other settings; use another --out or delete that run"
        )


# what may differ between runs of one comparison: the arm itself and what follows from it, and what a suite resumed in
# a later session may change without changing the numbers' meaning (the commit, a CPU model or kernel of the same
# capability, the GEMM peak's run-to-run noise). Everything else, the CPU's capability (AVX-512 vs AVX2), core count,
# threads and package versions included, must agree, or the comparison is refused.
IGNORED_IN_COMPARISON = (
    "seed",
    "created_at",
    "arm",
    "recipe_hash",
    "git_dirty",
    "git_sha",
    "total_steps",
    "cpu_model",
    "platform",
    "gemm_peak_gflops",
)


def check_comparable(records: list[dict], allow_mismatch: bool = False) -> None:
    """Refuse to compare runs whose manifests differ in anything but arm, seed, recipe and time."""
    if not records:
        return
    ref = records[0]["manifest"]
    for rec in records[1:]:
        diff = compare_manifests(ref, rec["manifest"], ignore=IGNORED_IN_COMPARISON)
        if diff and not allow_mismatch:
            raise RuntimeError(
                f"runs are not comparable: {records[0]['arm']}/seed{records[0]['seed']} and "
                f"{rec['arm']}/seed{rec['seed']} differ in {diff}; rerun them, or pass --allow-mismatch"
            )
