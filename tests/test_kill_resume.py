"""Kill -9 and resume, with real ``python -m zoo.cli train`` processes: whatever the moment of the kill (mid-epoch,
inside a checkpoint write, right after a stage boundary, a damaged newest checkpoint), resuming until done gives
weights bitwise equal to an uninterrupted run and the same metrics log, each training step once.

Kills are real SIGKILLs: from the test at an arbitrary moment, or from inside the process at a precise point via
``ZOO_FAULT`` (``zoo/utils/faults.py``). Every recipe has 12 steps of 64 on 512 images (8 steps per epoch, so runs
cross an
epoch boundary) with a checkpoint every 2 steps; one uninterrupted reference run per recipe is shared by the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe
from safetensors.torch import load_file

from zoo.training import run_checkpoints as ckpt

TOTAL = 12
TRAIN = {"seed": 0, "log_every": 1, "eval_every": 100.0, "checkpoint_every": 2, "keep_checkpoints": 2}
RECIPES = {
    "plain": tiny_recipe(schedule={"steps": TOTAL, "warmup": 0.1}, train=TRAIN),
    # gradual unfreezing of the 4 layer groups: boundaries at steps 3, 6, 9
    "unfreeze": tiny_recipe(
        schedule={"steps": TOTAL, "warmup": 0.1}, train=TRAIN, unfreeze={"mode": "gradual", "every": 0.25}
    ),
    # depth 2 -> 3 at step 6, with EMA (remapped at the boundary, saved in every checkpoint)
    "growth": tiny_recipe(
        schedule={"steps": TOTAL, "warmup": 0.1},
        train={**TRAIN, "ema": 0.9},
        growth={"stages": [{"at": 0.5, "depth": 3}]},
    ),
}
TIME_FIELDS = ("time_s", "img_per_s")
RUN_TIMEOUT = 180
KILLED = -signal.SIGKILL


def env(fault: str | None = None) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("ZOO_FAULT", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    # one thread per process: the same arithmetic in every run, and parallel runs do not oversubscribe 2 cores
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="default")
    if fault:
        e["ZOO_FAULT"] = fault
    return e


def write_recipe(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(RECIPES[name]))
    return path


def start(recipe: Path, out: Path, *args: str, fault: str | None = None) -> subprocess.Popen:
    """A ``zoo train`` process; stdout/stderr go to files next to the run (no pipe can fill up)."""
    n = len(list(out.parent.glob(f"{out.name}.*.stderr")))
    cmd = [sys.executable, "-m", "zoo.cli", "train", str(recipe), "--out", str(out), "--no-progress", *args]
    with open(out.parent / f"{out.name}.{n}.stdout", "w") as so, open(out.parent / f"{out.name}.{n}.stderr", "w") as se:
        proc = subprocess.Popen(cmd, env=env(fault), stdout=so, stderr=se, cwd=out.parent)
    proc.stderr_path = out.parent / f"{out.name}.{n}.stderr"
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    rc = proc.wait(timeout=RUN_TIMEOUT)
    return rc, proc.stderr_path.read_text()


def run(recipe: Path, out: Path, *args: str, fault: str | None = None) -> tuple[int, str]:
    return finish(start(recipe, out, *args, fault=fault))


def records(out: Path) -> list[dict]:
    """metrics.jsonl; a line being written while the test reads it is skipped."""
    recs = []
    path = out / "metrics.jsonl"
    for ln in path.read_text().splitlines() if path.exists() else []:
        try:
            recs.append(json.loads(ln))
        except json.JSONDecodeError:
            pass
    return recs


def wait_for_step(proc: subprocess.Popen, out: Path, step: int) -> None:
    """Until the running process has logged training step ``step``."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while max((r["step"] for r in records(out) if "loss" in r), default=0) < step:
        assert proc.poll() is None, f"exited before step {step}:\n{proc.stderr_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.005)


def checkpoint_steps(out: Path) -> list[int]:
    return [int(p.name.removeprefix(ckpt.PREFIX)) for p in ckpt.list_checkpoints(out / "checkpoints")]


def leftovers(out: Path) -> list[str]:
    d = out / "checkpoints"
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".")) if d.is_dir() else []


def strip_time(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in recs]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted run per recipe, started together (they are mostly interpreter start-up)."""
    root = tmp_path_factory.mktemp("reference")
    procs = {name: start(write_recipe(root, name), root / name) for name in RECIPES}
    for name, proc in procs.items():
        rc, err = finish(proc)
        assert rc == 0, f"reference run {name} failed:\n{err[-3000:]}"
    return {name: root / name for name in RECIPES}


def resume_to_end(recipe: Path, out: Path) -> str:
    rc, err = run(recipe, out, "--resume")
    assert rc == 0, f"resume failed:\n{err[-3000:]}"
    return err


def assert_matches_reference(out: Path, ref: Path) -> None:
    a, b = load_file(str(out / "model" / "model.safetensors")), load_file(str(ref / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights differ from the uninterrupted run: {differ}"
    recs, ref_recs = records(out), records(ref)
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, TOTAL + 1)), "each training step logged once"
    assert strip_time(recs) == strip_time(ref_recs), "the log equals the uninterrupted one (events included)"
    # checkpoint naming survived the resumes: the newest `keep` steps, nothing temporary left behind
    assert checkpoint_steps(out) == [TOTAL - 2, TOTAL]
    assert leftovers(out) == []
    assert all(ckpt.is_valid(p) is None for p in ckpt.list_checkpoints(out / "checkpoints"))


def test_sigkill_mid_epoch_at_an_arbitrary_moment(references, tmp_path):
    recipe, out = write_recipe(tmp_path, "plain"), tmp_path / "run"
    proc = start(recipe, out)
    wait_for_step(proc, out, 5)
    proc.send_signal(signal.SIGKILL)
    rc, _ = finish(proc)
    assert rc == KILLED, "the run finished before the kill: nothing was tested"
    assert not (out / "model").exists()
    assert ckpt.latest_valid(out / "checkpoints") is not None
    resume_to_end(recipe, out)
    assert_matches_reference(out, references["plain"])


def test_kill_inside_checkpoint_write_before_train_state(references, tmp_path):
    recipe, out = write_recipe(tmp_path, "plain"), tmp_path / "run"
    rc, _ = run(recipe, out, fault="ckpt_before_state:6")
    assert rc == KILLED
    tmp = out / "checkpoints" / f".tmp-{ckpt.checkpoint_name(6)}"
    assert (tmp / "model.safetensors").is_file() and not (tmp / ckpt.STATE_NAME).exists()
    assert checkpoint_steps(out) == [2, 4]
    assert ckpt.latest_valid(out / "checkpoints").name == ckpt.checkpoint_name(4)
    assert max(r["step"] for r in records(out)) == 6  # logged before the kill; the resume drops it and redoes it
    resume_to_end(recipe, out)
    assert_matches_reference(out, references["plain"])


def test_kill_at_unfreeze_boundary_checkpoint(references, tmp_path):
    # step 6 is an unfreeze boundary: restructured, event logged, killed while writing its checkpoint -> the resume
    # starts from step 4 and crosses the boundary again
    recipe, out = write_recipe(tmp_path, "unfreeze"), tmp_path / "run"
    rc, _ = run(recipe, out, fault="ckpt_before_state:6")
    assert rc == KILLED
    assert [r["step"] for r in records(out) if "event" in r] == [3, 6]
    assert ckpt.latest_valid(out / "checkpoints").name == ckpt.checkpoint_name(4)
    resume_to_end(recipe, out)
    assert [r["step"] for r in records(out) if "event" in r] == [3, 6, 9]
    assert_matches_reference(out, references["unfreeze"])


def test_kill_right_after_growth_boundary(references, tmp_path):
    # the step-6 checkpoint holds the grown (depth 3) model, its optimizer and EMA; killed before pruning, the resume
    # starts exactly at the boundary
    recipe, out = write_recipe(tmp_path, "growth"), tmp_path / "run"
    rc, _ = run(recipe, out, fault="ckpt_before_prune:6")
    assert rc == KILLED
    assert checkpoint_steps(out) == [2, 4, 6]  # not pruned yet
    latest = ckpt.latest_valid(out / "checkpoints")
    assert ckpt.read_state(latest)["stage"]["growth_stage"] == 1
    assert any(k.startswith("blocks.2.") for k in load_file(str(latest / "model.safetensors")))
    assert (latest / "ema.safetensors").is_file()
    resume_to_end(recipe, out)
    assert_matches_reference(out, references["growth"])
    assert any("loss_after_event" in r and r["step"] == 7 for r in records(out))


def test_kill_before_prune_damaged_latest_and_several_resumes(references, tmp_path):
    # kill 1: step 8 is complete and renamed into place, step 4 not pruned yet (at step 4 nothing is due for pruning
    # with keep_checkpoints 2, so step 8 is where this fault point matters)
    recipe, out = write_recipe(tmp_path, "plain"), tmp_path / "run"
    rc, _ = run(recipe, out, fault="ckpt_before_prune:8")
    assert rc == KILLED and checkpoint_steps(out) == [4, 6, 8] and leftovers(out) == []
    assert ckpt.read_state(ckpt.latest_valid(out / "checkpoints"))["step"] == 8
    weights = out / "checkpoints" / ckpt.checkpoint_name(8) / "model.safetensors"
    with open(weights, "r+b") as f:  # torn write: the header survives, the tensor data does not
        f.truncate(weights.stat().st_size // 2)
    # resume 1: skips the damaged step 8 with a warning, resumes from 6, re-saves step 8 over the damaged folder
    # (the replace-an-existing-step path), prunes, and is killed again while writing step 10
    rc, err = run(recipe, out, "--resume", fault="ckpt_before_state:10")
    assert rc == KILLED
    assert "skipping damaged checkpoint" in err and ckpt.checkpoint_name(8) in err, err[-3000:]
    assert checkpoint_steps(out) == [6, 8] and ckpt.is_valid(out / "checkpoints" / ckpt.checkpoint_name(8)) is None
    assert leftovers(out) == [f".tmp-{ckpt.checkpoint_name(10)}"]
    # resume 2: from the re-saved step 8, to the end
    err = resume_to_end(recipe, out)
    assert "skipping damaged checkpoint" not in err
    assert json.loads((out / "result.json").read_text())["resumed_from"] == 8
    assert_matches_reference(out, references["plain"])


def _flip_a_weight_byte(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0xFF  # inside the tensor data: the header (and so the structural check) stays intact
    weights.write_bytes(bytes(data))


DAMAGE = {
    "flipped weight byte": _flip_a_weight_byte,
    "deleted RNG state": lambda folder: (folder / "random_states_0.pkl").unlink(),
    "truncated optimizer state": lambda folder: (folder / "optimizer.bin").write_bytes(b"\0" * 16),
}


# one damage in the default suite, every damage with -m slow (each case is a full kill-and-resume run)
@pytest.mark.parametrize(
    "damage", [d if i == 0 else pytest.param(d, marks=pytest.mark.slow) for i, d in enumerate(DAMAGE)]
)
def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(references, tmp_path, damage):
    """Each file of a checkpoint is hashed when it is written: damage that Accelerate would load silently (a flipped
    weight byte, a deleted RNG state, which Accelerate's load_state only logs) is caught, the newest intact checkpoint
    is used with a warning naming the file, and the run ends bitwise equal to the uninterrupted one."""
    recipe, out = write_recipe(tmp_path, "plain"), tmp_path / "run"
    rc, err = run(recipe, out, "--stop-after", "8")
    assert rc == 0, err[-3000:]
    assert checkpoint_steps(out) == [6, 8]
    newest = out / "checkpoints" / ckpt.checkpoint_name(8)
    DAMAGE[damage](newest)
    assert ckpt.is_valid(newest) is not None
    err = resume_to_end(recipe, out)
    assert "skipping damaged checkpoint" in err and ckpt.checkpoint_name(8) in err, err[-3000:]
    assert json.loads((out / "result.json").read_text())["resumed_from"] == 6
    assert_matches_reference(out, references["plain"])


def test_resume_without_any_intact_checkpoint_says_it_starts_from_step_0(references, tmp_path):
    recipe, out = write_recipe(tmp_path, "plain"), tmp_path / "run"
    assert run(recipe, out, "--stop-after", "4")[0] == 0
    for folder in ckpt.list_checkpoints(out / "checkpoints"):
        _flip_a_weight_byte(folder)
    rc, _ = run(recipe, out, "--resume")
    stdout = sorted(out.parent.glob(f"{out.name}.*.stdout"))[-1].read_text()
    assert rc == 0 and "starting from step 0" in stdout
    assert_matches_reference(out, references["plain"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_resumes_exactly(references, tmp_path, signum):
    """A scheduler's SIGTERM or a Ctrl-C mid-epoch: the step in progress finishes, a checkpoint of it is written
    (although none is due), the exit code is 128 + the signal, and the resumed run equals the uninterrupted one."""
    recipe, out = write_recipe(tmp_path, "plain"), tmp_path / "run"
    proc = start(recipe, out)
    wait_for_step(proc, out, 3)
    proc.send_signal(signum)
    rc, err = finish(proc)
    assert rc == 128 + signum, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err
    state = ckpt.read_state(ckpt.latest_valid(out / "checkpoints"))
    stopped_at = max(r["step"] for r in records(out) if "loss" in r)
    assert state["step"] == stopped_at, "the checkpoint is of the step the signal interrupted"
    resume_to_end(recipe, out)
    assert_matches_reference(out, references["plain"])
