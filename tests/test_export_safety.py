"""``zoo export --force`` killed at every step of replacing the destination: the destination is the old or the new
complete folder, never missing, and the next export cleans up or restores what the kill left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_recipe

from zoo.cli.main import main
from zoo.utils.atomic_dir import recover_replaced

FAULTS = ["export_before_replace", "replace_dir_before_swap", "replace_dir_after_swap"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist):
    """Two finished tiny runs (different weights), and a profile measured once for every export to reuse."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, lr in (("a", 0.003), ("b", 0.01)):
        recipe = root / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 2}, optim={"lr": lr})))
        assert main(["train", str(recipe), "--out", str(root / name), "--no-progress"]) == 0
        out[name] = root / name
    cmd = [sys.executable, "-m", "zoo.cli", "profile", f"local-dir:{root / 'a' / 'model'}", "--iters", "1", "--json"]
    (root / "p.json").write_text(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert _export(out["a"], root / "card_a").returncode == 0
    out["card_a"] = root / "card_a"
    return out


def _export(run, dest, *args, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "ZOO_FAULT"}
    if fault:
        env["ZOO_FAULT"] = f"{fault}:0"
    profile = run.parent / "p.json"
    cmd = [sys.executable, "-m", "zoo.cli", "export", str(run), str(dest), "--profile-json", str(profile), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _weights(folder):
    return (folder / "model.safetensors").read_bytes()


# the swap itself in the default suite; the moments before it with -m slow
@pytest.mark.parametrize(
    "fault", [f if f == "replace_dir_after_swap" else pytest.param(f, marks=pytest.mark.slow) for f in FAULTS]
)
def test_a_killed_export_leaves_the_old_or_the_new_folder(runs, tmp_path, fault):
    dest = tmp_path / "card"
    shutil.copytree(runs["card_a"], dest)  # an earlier export
    old = _weights(dest)
    proc = _export(runs["b"], dest, "--force", fault=fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (dest / "README.md").is_file() and (dest / "config.json").is_file(), "the destination is never missing"
    new_in_place = _weights(dest) != old
    assert new_in_place == (fault == "replace_dir_after_swap")
    # the next export finishes the job and leaves nothing beside the destination
    assert _export(runs["b"], dest, "--force").returncode == 0
    assert _weights(dest) != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card"]


def test_recover_replaced_restores_a_set_aside_folder(tmp_path):
    """Where the atomic exchange is unavailable, a kill between the two renames leaves the old folder set aside and
    no destination: the next export puts it back before anything else."""
    dest = tmp_path / "card"
    aside = tmp_path / ".card.old-12345"
    aside.mkdir()
    (aside / "README.md").write_text("old")
    dead_tmp = tmp_path / ".card.tmp-999999999"
    dead_tmp.mkdir()
    recover_replaced(dest)
    assert (dest / "README.md").read_text() == "old"
    assert not aside.exists() and not dead_tmp.exists()
