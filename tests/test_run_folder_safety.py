"""The run folder under concurrent and interrupted use: one process at a time, a torn metrics line from a kill is
dropped on resume, and a forced rerun that cannot start gives the old run back."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import tiny_recipe

from zoo.cli.main import main
from zoo.training.run_folder import RunFolder, intact_lines


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def _recipe(tmp_path, **sections):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(**sections)))
    return path


def test_a_second_process_on_the_same_out_is_refused(tmp_path, capsys, fmnist):
    recipe, out = _recipe(tmp_path, schedule={"steps": 4}), tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), "--no-progress", "--stop-after", "2"]) == 0
    before = _files(out)
    with RunFolder(out).lock():  # another run holds the folder (flock conflicts across open files, same process too)
        code = main(["train", str(recipe), "--out", str(out), "--no-progress", "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and "--out" in err and "in use by process" in err, err
        assert _files(out) == before
    # released when its holder ends: the resume now runs to the end
    assert main(["train", str(recipe), "--out", str(out), "--no-progress", "--resume"]) == 0


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys, fmnist):
    recipe, out = (
        _recipe(tmp_path, schedule={"steps": 4}, train={"log_every": 1, "checkpoint_every": 2}),
        tmp_path / "r",
    )
    assert main(["train", str(recipe), "--out", str(out), "--no-progress", "--stop-after", "2"]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.5')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="torn last line"):
        assert main(["train", str(recipe), "--out", str(out), "--no-progress", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s > 0]
    assert sorted(set(train_steps)) == [1, 2, 3, 4]


def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2: not valid JSON"):
        intact_lines(path)


def test_a_forced_rerun_that_cannot_start_keeps_the_old_run(tmp_path, capsys, fmnist):
    out = tmp_path / "run"
    good = _recipe(tmp_path, schedule={"steps": 2})
    assert main(["train", str(good), "--out", str(out), "--no-progress"]) == 0
    before = _files(out)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 2}, data={"path": str(tmp_path / "nowhere")})))
    assert main(["train", str(bad), "--out", str(out), "--no-progress", "--force"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert _files(out) == before and not (out / ".replaced").exists()
    # a forced rerun that starts replaces it
    other = _recipe(tmp_path, schedule={"steps": 2}, optim={"lr": 0.001})
    assert main(["train", str(other), "--out", str(out), "--no-progress", "--force"]) == 0
    assert not (out / ".replaced").exists() and _files(out) != before
