"""Two-process CPU training (gloo) with real ``torchrun`` processes.

The launch that works on CPU here (``accelerate launch --cpu --num_processes 2`` starts a single process):

    ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 --master_port PORT -m zoo.cli train ...

The recipe crosses an unfreeze boundary (step 3), a growth + unfreeze boundary (step 6, depth 2 -> 3) and another
unfreeze boundary (step 9). The trainer itself compares the ranks' parameter digests at every boundary and at the end
(``check_ranks_identical``); a small ``sitecustomize`` put on the workers' ``PYTHONPATH`` also writes each rank's
digests and micro-batch sizes to files, so the test sees them, and makes rank 1 start writing its part of every
checkpoint 0.5 s late: a slow rank is what a loaded machine produces at random, here on purpose and every time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe
from safetensors import safe_open
from safetensors.torch import load_file

from zoo.training import run_checkpoints as ckpt

TOTAL, STEPS_PER_EPOCH, WORLD = 12, 8, 2  # 512 images, global batch 64: 8 steps per epoch whatever the processes
RECIPE = tiny_recipe(
    schedule={"steps": TOTAL, "warmup": 0.1},
    train={"seed": 0, "log_every": 1, "eval_every": 100.0, "checkpoint_every": 4},
    unfreeze={"mode": "gradual", "every": 0.25},
    growth={"stages": [{"at": 0.5, "depth": 3}]},
)
BOUNDARIES = [3, 6, 9]
RUN_TIMEOUT = 300
SLOW_SAVE_S = 0.5

SITECUSTOMIZE = '''"""Instrumentation for torchrun workers of tests/test_multiprocess.py (inert outside a worker)."""
import json
import os
import time

if "LOCAL_RANK" in os.environ:
    _delay = float(os.environ.get("ZOO_TEST_SLOW_SAVE", "0"))
    if _delay and os.environ["LOCAL_RANK"] != "0":
        import accelerate.accelerator as _aa

        _save = _aa.save_accelerator_state

        def _slow_save(*args, **kwargs):
            time.sleep(_delay)  # rank 1 writes its random_states_1.pkl late
            return _save(*args, **kwargs)

        _aa.save_accelerator_state = _slow_save
    _probe = os.environ.get("ZOO_TEST_PROBE")
    if _probe:
        import zoo.training.trainer as _zt
        from zoo.hub import weights_hash

        _check, _crop, _micro = _zt.check_ranks_identical, _zt.random_crop_flip, set()

        def _crop_probe(x, *args, **kwargs):
            _micro.add(int(x.shape[0]))
            return _crop(x, *args, **kwargs)

        def _check_probe(acc, model, where):
            rec = {"where": where, "digest": weights_hash(model), "micro_batches": sorted(_micro)}
            with open(os.path.join(_probe, f"rank{acc.process_index}.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\\n")
            return _check(acc, model, where)

        _zt.random_crop_flip, _zt.check_ranks_identical = _crop_probe, _check_probe
'''


class CheckpointRace(AssertionError):
    """A worker failed writing into a checkpoint folder that the main process had already renamed.

    Regression guard: ``save_checkpoint`` once lacked the barrier between ``acc.save_state(tmp)`` and the main
    process's rename; the slowed-down save of rank 1 (sitecustomize above) makes that race happen every time.
    """


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_in_two_processes(recipe: Path, out: Path) -> dict:
    """``zoo train RECIPE --out OUT`` under ``torchrun`` with 2 CPU processes (no probes); returns ``result.json``.
    The trainer's own rank check at the end compares the ranks' weights."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "zoo.cli", "train", str(recipe), "--out", str(out), "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=out.parent, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def torchrun(hooks: Path, folder: Path, name: str, *args: str, use_cpu_env: bool = True) -> dict:
    """Run ``zoo train`` in 2 processes; returns returncode, stderr and the probe records of each rank."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    probe = folder / f"{name}.probe"
    probe.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_FAULT", "ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK")}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
        ZOO_TEST_SLOW_SAVE=str(SLOW_SAVE_S),
        ZOO_TEST_PROBE=str(probe),
    )
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD)]
    cmd += ["--master_port", str(free_port()), "-m", "zoo.cli", "train", str(recipe), "--out", str(folder / "run")]
    cmd += ["--no-progress", *args]
    res = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    ranks = [
        [json.loads(ln) for ln in (probe / f"rank{r}.jsonl").read_text().splitlines()]
        if (probe / f"rank{r}.jsonl").exists()
        else []
        for r in range(WORLD)
    ]
    return {"rc": res.returncode, "stderr": res.stderr, "stdout": res.stdout, "ranks": ranks, "out": folder / "run"}


def assert_ok(run: dict) -> None:
    if run["rc"] != 0:
        tail = run["stderr"][-4000:]
        if "Parent directory" in run["stderr"] and ".tmp-step_" in run["stderr"]:
            raise CheckpointRace(tail)
        raise AssertionError(tail)


def records(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def strip_time(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time_s", "img_per_s")} for r in recs]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


@pytest.fixture(scope="module")
def reference(hooks, tmp_path_factory) -> dict:
    """One uninterrupted 2-process run, shared by the tests below."""
    return torchrun(hooks, tmp_path_factory.mktemp("two_proc"), "full")


def test_launcher_available():
    assert Path(sys.executable).with_name("torchrun").exists(), "torchrun is not next to this interpreter"
    assert torch.distributed.is_available() and torch.distributed.is_gloo_available()


def test_two_processes_through_unfreeze_and_growth(reference):
    assert_ok(reference)
    out = reference["out"]
    assert json.loads((out / "manifest.json").read_text())["num_processes"] == WORLD
    # the trainer's own check ran at every boundary and at the end, and every rank saw the same digests
    r0, r1 = reference["ranks"]
    wheres = [f"stage boundary at step {s}" for s in BOUNDARIES] + ["end of training"]
    assert [r["where"] for r in r0] == wheres and [r["where"] for r in r1] == wheres
    assert [r["digest"] for r in r0] == [r["digest"] for r in r1]
    with safe_open(str(out / "model" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["weights_sha256"] == r0[-1]["digest"], "the exported model is the ranks' final model"
        assert any(k.startswith("blocks.2.") for k in f.keys()), "grown to depth 3"
    # written once: one log with each step once (rank 1 writes nothing but its RNG state in each checkpoint)
    recs = records(out)
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, TOTAL + 1))
    assert [r["step"] for r in recs if "event" in r] == BOUNDARIES
    for folder in ckpt.list_checkpoints(out / "checkpoints"):
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(
            ["model.safetensors", "optimizer.bin", ckpt.STATE_NAME] + [f"random_states_{r}.pkl" for r in range(WORLD)]
        ), names
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())


def test_data_is_sharded_per_rank(reference):
    assert_ok(reference)
    # each rank trains on micro-batches of 64 / 2, and an epoch still has 512 / 64 optimizer steps
    assert [r0["micro_batches"] for r0 in reference["ranks"][0]][-1] == [RECIPE["data"]["batch_size"] // WORLD]
    assert reference["ranks"][1][-1]["micro_batches"] == [RECIPE["data"]["batch_size"] // WORLD]
    for r in records(reference["out"]):
        if "loss" in r:
            assert r["epoch"] == r["step"] / STEPS_PER_EPOCH, r


def test_two_process_resume_after_stop_is_bitwise_exact(reference, hooks, tmp_path):
    assert_ok(reference)
    # stop right at the growth boundary: the checkpoint holds the grown model; the resume re-prepares DDP on it
    part = torchrun(hooks, tmp_path, "part", "--stop-after", "6")
    assert_ok(part)
    out = part["out"]
    assert not (out / "model").exists()
    assert ckpt.read_state(ckpt.latest_valid(out / "checkpoints"))["step"] == 6
    resumed = torchrun(hooks, tmp_path, "resumed", "--resume")
    assert_ok(resumed)
    assert_same_weights(out, reference["out"])
    assert strip_time(records(out)) == strip_time(records(reference["out"]))
    assert [r["digest"] for r in resumed["ranks"][0]] == [r["digest"] for r in resumed["ranks"][1]]


def test_torchrun_without_accelerate_use_cpu_still_forms_one_group(reference, hooks, tmp_path):
    # make_accelerator passes cpu=True on a GPU-less machine, and Accelerate then builds a gloo group from torchrun's
    # LOCAL_RANK/WORLD_SIZE (MULTI_CPU) even without ACCELERATE_USE_CPU=1: no independent copies; the same training
    assert_ok(reference)
    run = torchrun(hooks, tmp_path, "no_env", use_cpu_env=False)
    assert_ok(run)
    assert json.loads((run["out"] / "manifest.json").read_text())["num_processes"] == WORLD
    assert_same_weights(run["out"], reference["out"])
    assert [r["digest"] for r in run["ranks"][0]] == [r["digest"] for r in run["ranks"][1]]


def test_world_size_mismatch_is_refused(monkeypatch, tmp_path):
    # if Accelerate ever sees fewer processes than torchrun started (the independent-copies failure), training refuses
    import zoo.training.run_setup
    from zoo.training.recipe import recipe_from_dict

    class SingleProcess:
        num_processes = 1

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(zoo.training.run_setup, "Accelerator", SingleProcess)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=1 torchrun"):
        zoo.training.run_setup.make_accelerator(recipe_from_dict(RECIPE), tmp_path, "fp32")
