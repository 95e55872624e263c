"""The benchmark harness: side-by-side timing of step functions, and multi-seed training arms with statistics.

Two kinds of measurement, both reported as ratios taken in one run:
- ``interleaved_times``: step functions timed round-robin (A, B, C, A, B, C, ...) after warm-up, so drift in machine
  load hits every arm alike; medians are compared.
- ``run_arms``: each arm is a recipe plus overrides, trained for several seeds, each run in its own subprocess (so
  its peak memory is its own: the run records its VmHWM, which a fresh ``exec`` resets, unlike ``ru_maxrss``, which
  inherits the forking parent's high-water mark), with its manifest. Manifests must agree in everything but the arm
  and seed, or the comparison is refused.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from zoo.manifest import compare_manifests


def interleaved_times(
    fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 2, progress: str | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in tqdm(range(rounds), desc=progress, disable=progress is None, leave=False):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def speedup(times: dict[str, list[float]], base: str, arm: str) -> float:
    """Median time of ``base`` over median time of ``arm`` (> 1: the arm is faster)."""
    return median(times[base]) / median(times[arm])


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


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


def eval_curve(run_dir: Path) -> list[list[float]]:
    """(seconds since start, eval accuracy) pairs from a run's metrics.jsonl."""
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval_acc" in rec:
            curve.append([rec["time_s"], rec["eval_acc"]])
    return curve


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
        result_file = run_dir / "result.json"
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
                "curve": eval_curve(run_dir),
                "manifest": json.loads((run_dir / "manifest.json").read_text()),
            }
        )
    check_comparable(records, allow_mismatch)
    return records


def _check_reused_run(run_dir: Path, recipe: str, sets: list[str]) -> None:
    """A finished run is reused only if it trained exactly this recipe and these overrides: otherwise a rerun with
    other settings (``--set schedule.epochs=9``, other seeds moving an equal-time arm's length) would silently
    report old runs under the new settings."""
    from zoo.cli import resolve_recipe_path
    from zoo.manifest import recipe_hash
    from zoo.recipe import load_recipe

    want = recipe_hash(load_recipe(resolve_recipe_path(recipe), sets).to_dict())
    have = json.loads((run_dir / "manifest.json").read_text()).get("recipe_hash")
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
