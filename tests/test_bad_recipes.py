"""Bad recipes and overrides: each exits 2 from the CLI with a message naming the file and the field, before
anything is written, and leaves an earlier run in the output folder untouched.

Every out-of-range or non-finite number is refused at load time: an accepted one either crashes after the run folder
was written (and the next plain run into it is refused) or, worse, trains silently wrong (a negative ``clip_grad``
flips every gradient and exits 0)."""

from __future__ import annotations

import pytest
import yaml
from conftest import tiny_recipe

from zoo.cli.main import main
from zoo.training.recipe import load_recipe

# (section, key, value, field named in the error)
BAD_VALUES = [
    ("optim", "lr", float("nan"), "optim.lr"),
    ("optim", "lr", float("inf"), "optim.lr"),
    ("optim", "lr", 0.0, "optim.lr"),
    ("optim", "weight_decay", -5.0, "optim.weight_decay"),
    ("optim", "weight_decay", float("nan"), "optim.weight_decay"),
    ("optim", "clip_grad", -1.0, "optim.clip_grad"),
    ("optim", "betas", [2.0, 3.0], "optim.betas[0]"),
    ("optim", "betas", [0.9], "optim.betas"),
    ("optim", "eps", 0.0, "optim.eps"),
    ("optim", "lr_mult", {"router": -1.0}, "optim.lr_mult.router"),
    ("optim", "layer_decay", 1.5, "optim.layer_decay"),
    ("schedule", "epochs", float("nan"), "schedule.epochs"),
    ("schedule", "epochs", float("inf"), "schedule.epochs"),
    ("schedule", "warmup", 1.0, "schedule.warmup"),
    ("schedule", "min_lr_ratio", 2.0, "schedule.min_lr_ratio"),
    ("schedule", "rewarmup", -0.1, "schedule.rewarmup"),
    ("train", "seed", -1, "train.seed"),
    ("train", "label_smoothing", 5.0, "train.label_smoothing"),
    ("train", "eval_every", 0.0, "train.eval_every"),
    ("train", "eval_every", float("nan"), "train.eval_every"),
    ("train", "log_every", 0, "train.log_every"),
    ("train", "checkpoint_every", 0, "train.checkpoint_every"),
    ("train", "ema", 1.0, "train.ema"),
    ("train", "accumulation", 0, "train.accumulation"),
    ("data", "eval_batch_size", 0, "data.eval_batch_size"),
    ("data", "crop_pad", -5, "data.crop_pad"),
    ("data", "num_workers", -1, "data.num_workers"),
    ("data", "train_subset", 0, "data.train_subset"),
    ("data", "in_chans", 2, "data.in_chans"),
    ("data", "batch_size", "many", "data.batch_size"),
]


def _write(path, text: str) -> None:
    path.write_text(text)


@pytest.mark.parametrize("section,key,value,field", BAD_VALUES, ids=[f"{c[0]}.{c[1]}={c[2]}" for c in BAD_VALUES])
def test_bad_value_exits_2_naming_file_and_field_and_writes_nothing(tmp_path, capsys, section, key, value, field):
    recipe = tmp_path / "bad.yaml"
    _write(recipe, yaml.safe_dump(tiny_recipe(**{section: {key: value}})))
    out = tmp_path / "out"
    assert main(["train", str(recipe), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(recipe) in err and f"{field}:" in err, err
    assert not out.exists(), "nothing may be written for a refused recipe"


@pytest.mark.parametrize(
    "text,words",
    [
        ("", "empty"),
        ("model:\n  name: zoo_vit_micro_p4\noptim:\n  lr: 0.1\noptim:\n  lr: 0.2\n", "duplicate key 'optim'"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", "line 3: duplicate key 'lr'"),
        ("a: &x [1, 2]\nb: *x\n", "anchors"),
        # the alias bomb: refused at the first anchor instead of expanding to 9^8 entries
        ("".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'x'}]\n" for i in range(9)), "anchors"),
        ("model: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "top level"),
        ("model: !!python/object/apply:os.system ['echo planted']\n", "not valid YAML"),
    ],
    ids=["empty", "duplicate-section", "duplicate-key", "alias", "alias-bomb", "malformed", "list", "python-tag"],
)
def test_bad_file_is_refused_naming_the_file(tmp_path, capsys, text, words):
    recipe = tmp_path / "bad.yaml"
    _write(recipe, text)
    assert main(["train", str(recipe), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(recipe) in err and words in err, err
    assert not (tmp_path / "out").exists()


def test_non_utf8_recipe_names_the_file(tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    assert main(["train", str(recipe), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(recipe) in err and "not UTF-8" in err


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    """PyYAML reads YAML 1.1, where `2e-3` (no dot) is a string; in a recipe and in --set it is the number."""
    recipe = tmp_path / "r.yaml"
    _write(recipe, "optim:\n  lr: 2e-3\n  weight_decay: 5E-2\n")
    r = load_recipe(recipe, ["schedule.warmup=1e-1", "optim.eps=1e-8"])
    assert (r.optim.lr, r.optim.weight_decay, r.schedule.warmup, r.optim.eps) == (2e-3, 5e-2, 0.1, 1e-8)
    assert load_recipe(recipe).to_dict() == load_recipe(recipe, ["optim.lr=0.002"]).to_dict()  # same hash


def test_nan_override_names_the_field(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    _write(recipe, yaml.safe_dump(tiny_recipe()))
    assert main(["train", str(recipe), "--out", str(tmp_path / "o"), "--set", "optim.lr=.nan", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "finite" in err


def test_a_refused_recipe_leaves_the_earlier_run_untouched(tmp_path, capsys, fmnist):
    recipe = tmp_path / "r.yaml"
    _write(recipe, yaml.safe_dump(tiny_recipe(schedule={"steps": 2})))
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), "--no-progress"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _write(recipe, yaml.safe_dump(tiny_recipe(schedule={"steps": 2}, optim={"clip_grad": -1.0})))
    for flags in ([], ["--resume"], ["--force"]):
        assert main(["train", str(recipe), "--out", str(out), "--no-progress", *flags]) == 2, flags
        assert "optim.clip_grad" in capsys.readouterr().err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
