"""Output paths the file system refuses end with exit 2 and a message naming the path (no traceback); the CLI's
own output is valid JSON and it tells its version."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import tiny_recipe

from zoo.cli.main import main
from zoo.version import __version__


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 2})))
    return path


def test_out_below_a_file_names_the_path(tmp_path, recipe, capsys, fmnist):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", str(recipe), "--out", str(blocker / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err and "Traceback" not in err, err
    assert blocker.read_text() == "not a folder"


def test_out_naming_a_file_names_the_path(tmp_path, recipe, capsys, fmnist):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", str(recipe), "--out", str(blocker), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err, err
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_names_the_path(tmp_path, recipe, capsys, fmnist):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code = main(["train", str(recipe), "--out", str(parent / "run"), "--no-progress"])
    finally:
        parent.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and str(parent / "run") in err, err


def test_a_stopped_session_prints_valid_json(tmp_path, capsys, fmnist):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 4}, train={"checkpoint_every": 2})))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--stop-after", "2"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(line)  # strict JSON: no NaN for a session that evaluated nothing
    assert summary["final_acc"] is None and summary["steps"] == 2 and summary["finished"] is False
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["finished"] is True and 0 <= summary["final_acc"] <= 1


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
