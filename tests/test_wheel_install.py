"""A non-editable wheel install lists and runs the bundled recipes from any working directory (the wheel carries
``schedules/`` inside the package). The wheel is installed without dependencies into a venv that sees this
environment's packages, so the test takes seconds, not a torch download."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_install_lists_and_runs_a_bundled_recipe(tmp_path, fmnist):
    dist = tmp_path / "dist"
    # build with the setuptools already here when there is one (offline, fast), else in pip's isolated environment
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(dist), str(ROOT)], ROOT)
    wheel = next(dist.glob("growzoo-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    # --ignore-installed: the outer environment may hold an (editable) growzoo that pip would call satisfied
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"  # no schedules/ here, and not the checkout
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([str(py), "-c", "import zoo; print(zoo.__file__)"], elsewhere, env).strip()
    assert str(venv) in where, f"the wheel's package must be the one imported, got {where}"
    listing = _run([str(py), "-m", "zoo.cli", "list"], elsewhere, env)
    assert "fmnist_micro_dense" in listing and "fmnist_baseline" in listing
    sets = ["schedule.steps=1", "data.train_subset=128", "data.test_subset=128", "train.log_every=1"]
    cmd = [str(py), "-m", "zoo.cli", "train", "fmnist_micro_dense", "--out", "run", "--no-progress"]
    out = _run(cmd + [x for s in sets for x in ("--set", s)], elsewhere, env)
    assert json.loads(out.strip().splitlines()[-1])["finished"] is True
