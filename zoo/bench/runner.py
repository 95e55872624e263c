"""The arm runner: multi-seed training arms for the benchmark suites (side-by-side step timing is
``zoo.measure.stopwatch``).

- ``run_arms``: each arm is a recipe plus overrides, trained for several seeds, each run in its own subprocess (so
  its peak memory is its own: the run records its VmHWM, which a fresh ``exec`` resets, unlike ``ru_maxrss``, which
  inherits the forking parent's high-water mark), with its manifest. Manifests must agree in everything but the arm
  and seed, or the comparison is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path
from zoo.training.run_folder import MANIFEST_FILE, METRICS_FILE, RESULT_FILE, eval_curve, read_records
from zoo.utils.manifest import compare_manifests, recipe_hash


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
    """Train every arm for every seed (skipping runs already finished in ``out``); return one record per run."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    jobs = [(a, s) for s in seeds for a in arms]  # seed-major: a partial suite still has every arm
    for arm, seed in tqdm(jobs, desc="bench runs"):
        run_dir = out / arm.name / f"seed{seed}"
        result_file = run_dir / RESULT_FILE
        # suite-wide overrides first, the arm's own last: an arm's defining change (capacity, epochs) always wins
        sets = [*(extra_overrides or []), *arm.overrides, f"train.seed={seed}"]
        if result_file.exists():
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
        result = json.loads(result_file.read_text())
        peak = result.get("peak_cuda_bytes") or result.get("peak_rss_bytes")
        records.append(
            {
                "arm": arm.name,
                "seed": seed,
                "acc": result["final_acc"],
                "wall_clock_s": result["wall_clock_s"],
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


# what may differ between runs of one comparison: the arm itself and what follows from it
IGNORED_IN_COMPARISON = ("seed", "created_at", "arm", "recipe_hash", "git_dirty", "total_steps")


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
