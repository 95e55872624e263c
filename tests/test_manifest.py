"""zoo.utils.manifest: fields, hashing, comparison and atomic JSON writes."""

import copy
import json
import os
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from zoo.utils import manifest as mf
from zoo.utils.manifest import collect_manifest, compare_manifests, manifest_diff, recipe_hash, write_json_atomic


@pytest.fixture(scope="module")
def manifest():
    return collect_manifest(recipe={"model": "zoo_vit_tiny", "lr": 1e-3}, seed=3, extra={"arm": "grow"})


def test_manifest_fields_present_and_typed(manifest):
    assert manifest["seed"] == 3
    assert manifest["arm"] == "grow"
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["recipe_hash"])
    created = datetime.fromisoformat(manifest["created_at"])
    assert created.utcoffset().total_seconds() == 0
    assert set(mf.PACKAGES) <= set(manifest["versions"])
    for dist in ("growzoo", "torch", "timm", "numpy", "scipy"):
        assert isinstance(manifest["versions"][dist], str) and manifest["versions"][dist]
    assert isinstance(manifest["python"], str) and isinstance(manifest["platform"], str)
    threads = manifest["torch_threads"]
    assert isinstance(threads["num_threads"], int) and threads["num_threads"] >= 1
    assert isinstance(threads["num_interop_threads"], int) and threads["num_interop_threads"] >= 1
    assert manifest["cpu_model"] is None or isinstance(manifest["cpu_model"], str)
    assert isinstance(manifest["cpu_count"], int) and manifest["cpu_count"] >= 1
    assert isinstance(manifest["gpus"], list) and all(isinstance(g, str) for g in manifest["gpus"])
    assert manifest["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40,64}", manifest["git_sha"])
    assert manifest["git_dirty"] in (None, True, False)
    json.dumps(manifest)  # must be JSON-serializable as is


def test_extra_cannot_shadow_collected_fields():
    with pytest.raises(ValueError, match="torch_threads"):
        collect_manifest(extra={"torch_threads": {}})


def test_git_absent_outside_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert mf.git_state(tmp_path) == (None, None)


def test_git_missing_binary(monkeypatch):
    def boom(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(mf.subprocess, "run", boom)
    assert mf.git_state() == (None, None)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_sha_and_dirty_in_scratch_repo(tmp_path):
    def git(*args):
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args]
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, env=env)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    sha, dirty = mf.git_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40,64}", sha) and dirty is False
    (tmp_path / "untracked.txt").write_text("x")
    assert mf.git_state(tmp_path)[1] is False  # untracked files do not count
    (tmp_path / "f.txt").write_text("b")
    assert mf.git_state(tmp_path) == (sha, True)


def test_recipe_hash_canonical():
    a = {"lr": 0.001, "model": {"depth": 12, "width": 192}, "tags": ["x", "y"]}
    b = {"tags": ["x", "y"], "model": {"width": 192, "depth": 12}, "lr": 0.001}
    assert recipe_hash(a) == recipe_hash(b)
    assert recipe_hash(a) != recipe_hash({**a, "lr": 0.002})
    assert recipe_hash(None) is None
    assert recipe_hash({"p": Path("/x")}) == recipe_hash({"p": "/x"})
    with pytest.raises(TypeError):
        recipe_hash({"obj": object()})  # would hash a memory address via str()
    # sha256 of the canonical JSON '{"a":1}'
    assert recipe_hash({"a": 1}) == "015abd7f5cc57a2d"


def test_compare_manifests_finds_torch_version_ignores_seed(manifest):
    other = copy.deepcopy(manifest)
    other["seed"] = 99
    other["created_at"] = "2000-01-01T00:00:00+00:00"
    other["arm"] = "baseline"
    other["recipe_hash"] = "0" * 16
    assert compare_manifests(manifest, other) == []
    other["versions"]["torch"] = "0.0.1"
    other["torch_threads"]["num_threads"] = 123
    assert compare_manifests(manifest, other) == ["torch_threads.num_threads", "versions.torch"]
    # an ancestor path ignores everything below it; a custom ``ignore`` replaces the defaults
    assert compare_manifests(manifest, other, ignore=(*mf.DEFAULT_IGNORE, "versions")) == ["torch_threads.num_threads"]
    assert "arm" in compare_manifests(manifest, other, ignore=("versions",))
    diff = manifest_diff(manifest, other)
    assert diff["versions.torch"] == (manifest["versions"]["torch"], "0.0.1")


def test_compare_manifests_missing_keys_and_nan():
    assert compare_manifests({"a": 1, "x": {"y": 2}}, {"a": 1}) == ["x.y"]
    assert compare_manifests({"v": float("nan")}, {"v": float("nan")}) == []


def test_write_json_atomic_roundtrip(tmp_path):
    target = tmp_path / "sub" / "result.json"
    out = write_json_atomic(target, {"acc": 0.5, "path": Path("/a"), "nan": float("nan")})
    assert out == target
    data = json.loads(target.read_text())
    assert data["acc"] == 0.5 and data["path"] == "/a"
    assert os.listdir(target.parent) == ["result.json"]
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_json_atomic_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch, failing):
    target = tmp_path / "result.json"
    write_json_atomic(target, {"version": 1})
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    # fsync fails after the data has been written to the temp file; replace fails right before the commit
    monkeypatch.setattr(mf.os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        write_json_atomic(target, {"version": 2, "payload": "x" * 100_000})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["result.json"]


def test_write_json_atomic_failure_on_new_target(tmp_path, monkeypatch):
    monkeypatch.setattr(mf.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "new.json", {"a": 1})
    assert os.listdir(tmp_path) == []


def test_write_json_atomic_unserializable_touches_nothing(tmp_path):
    target = tmp_path / "r.json"
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})
    assert not target.exists() and os.listdir(tmp_path) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_a_planted_git_config_runs_nothing(tmp_path, monkeypatch):
    """A repository's config can name a program `git status` runs (core.fsmonitor); reading the revision must not
    run it, and the manifest asks the package's checkout, not the working directory."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, capture_output=True)
    (repo / "f.txt").write_text("a")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["add", "f.txt"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)
    planted = tmp_path / "PLANTED"
    with open(repo / ".git" / "config", "a") as f:  # planted after our own `git add`, which would run it
        f.write(f"[core]\n\tfsmonitor = touch {planted}\n")
    assert mf.git_state(repo)[0] is not None  # a repository with a commit: `git status` does run
    monkeypatch.chdir(repo)
    collect_manifest()
    assert not planted.exists()
