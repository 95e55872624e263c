"""Recipe schema: every error names the file and field; every bundled recipe loads and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zoo.training.recipe import RecipeError, load_recipe, recipe_from_dict

SCHEDULES = sorted((Path(__file__).resolve().parent.parent / "schedules").glob("*.yaml"))


def write(tmp_path, data) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    "data,field,words",
    [
        ({"modle": {}}, "modle", "unknown key"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "expected a number"),
        ({"optim": {"lr": -1}}, "optim.lr", "> 0"),
        ({"data": {"batch_size": 1.5}}, "data.batch_size", "expected an integer"),
        ({"train": {"precision": "fp8"}}, "train.precision", "'fp32', 'bf16'"),
        ({"train": {"accumulation": 3}}, "train.accumulation", "divide"),
        ({"routing": {"capacity": -0.25}}, "routing.capacity", "must be > 0"),
        ({"routing": {"capacity": 1.5}}, "routing.capacity", "must be <= 1"),
        ({"routing": {"capacity": [1.0, 2.0]}}, "routing.capacity[1]", "must be <= 1"),
        ({"routing": {"router": "magic"}}, "routing.router", "linear"),
        ({"routing": {"layers": "odd"}}, "routing.layers", "every_other"),
        (
            {"growth": {"stages": [{"at": 0.6, "depth": 6}, {"at": 0.3, "depth": 12}]}},
            "growth.stages[1].at",
            "increasing",
        ),
        (
            {"growth": {"stages": [{"at": 0.3, "depth": 12}, {"at": 0.6, "depth": 6}]}},
            "growth.stages[1].depth",
            "smaller",
        ),
        ({"growth": {"stages": [{"at": 0.3}]}}, "growth.stages[0]", "grows nothing"),
        ({"unfreeze": {"mode": "sideways"}}, "unfreeze.mode", "gradual"),
        (
            {
                "unfreeze": {
                    "mode": "stages",
                    "stages": [{"at": 0.5, "trainable_from": 3}, {"at": 0.2, "trainable_from": 1}],
                }
            },
            "unfreeze.stages[1].at",
            "increasing",
        ),
        ({"schedule": {"warmup": 1.5}}, "schedule.warmup", "must be < 1"),
        ({"model": {"args": []}}, "model.args", "mapping"),
    ],
)
def test_errors_name_file_and_field(tmp_path, data, field, words):
    path = write(tmp_path, data)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and f": {field}:" in msg and words in msg, msg


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, {"optim": {"lr": 0.001}})
    r = load_recipe(path, ["optim.lr=0.01", "data.classes=[5,6,7]", "routing.capacity=0.25", "train.ema=null"])
    assert r.optim.lr == 0.01 and r.data.classes == [5, 6, 7] and r.routing.capacity == 0.25 and r.train.ema is None
    with pytest.raises(RecipeError, match=r"optim.lrr: unknown key"):
        load_recipe(path, ["optim.lrr=0.1"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(path, ["optim.lr"])


def test_round_trip_is_stable():
    r = recipe_from_dict({"routing": {"capacity": 0.25}, "unfreeze": {"mode": "gradual", "every": 0.2}})
    again = recipe_from_dict(r.to_dict())
    assert again == r


@pytest.mark.parametrize("path", SCHEDULES, ids=[p.stem for p in SCHEDULES])
def test_every_bundled_recipe_loads_and_builds(path, fmnist, tmp_path):
    import timm

    from zoo.data.datasets import build_datasets
    from zoo.hub import save_model_folder
    from zoo.training.stage_plan import StagePlan, build_model

    text = path.read_text()
    assert text.startswith("#") and "zoo train" in text, "header comment must state the command that runs it"
    recipe = load_recipe(path)
    from zoo.models.pretrained import PUBLISHED

    src = recipe.model.pretrained
    if src is not None and not src.startswith("local-dir:model_cards/") and src not in PUBLISHED:
        # the source folder is another recipe's output; stand in a freshly initialised one of the same architecture
        # (a published model, by tag or bundled folder under model_cards/, is loaded as it is)
        assert recipe.model.pretrained.startswith("local-dir:runs/"), "bundled recipes point at a bundled run"
        src = save_model_folder(timm.create_model(recipe.model.name), tmp_path / "src")
        recipe = load_recipe(path, [f"model.pretrained=local-dir:{src}"])
    d = recipe.data
    bundle = build_datasets(d.name, path=d.path, classes=d.classes, train_subset=32, test_subset=32)
    model = build_model(recipe, bundle)
    assert timm.is_model(model.pretrained_cfg["architecture"]) and model.num_classes == bundle.num_classes
    # stages given by `step` must fall inside the run: stand in a run long enough for them
    steps = [
        s.step for sec in (recipe.growth, recipe.unfreeze) if sec is not None for s in sec.stages if s.step is not None
    ]
    StagePlan.from_recipe(recipe, total=max([100, *(s + 1 for s in steps)])).validate(model)


def test_overrides_index_lists(tmp_path):
    """`--set growth.stages[1].at=0.7` changes one stage; a missing entry or a path through a non-list is an error
    naming the override."""
    path = write(tmp_path, {"growth": {"stages": [{"at": 0.3, "depth": 4}, {"at": 0.6, "depth": 6}]}})
    r = load_recipe(path, ["growth.stages[1].at=0.7", "growth.stages[0].noise=1e-3"])
    assert [s.at for s in r.growth.stages] == [0.3, 0.7] and r.growth.stages[0].noise == 1e-3
    with pytest.raises(RecipeError, match=r"growth.stages\[2\]: no such entry: growth.stages has 2 entries"):
        load_recipe(path, ["growth.stages[2].at=0.9"])
    with pytest.raises(RecipeError, match=r"optim\[0\]: no such entry: optim is not a list"):
        load_recipe(path, ["optim[0].lr=0.1"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(path, ["growth.stages[x].at=0.9"])
    with pytest.raises(RecipeError, match=r"growth.stages\[1\].at: stages must be in increasing order"):
        load_recipe(path, ["growth.stages[1].at=0.1"])


def test_types_are_strict_and_messages_name_the_field():
    """Pydantic strict mode: no silent coercion of strings, booleans or floats into other types."""
    cases = [
        ({"data": {"batch_size": "128"}}, "data.batch_size: expected an integer, got '128'"),
        ({"data": {"flip": 1}}, "data.flip: expected true/false, got 1"),
        ({"optim": {"lr": True}}, "optim.lr: expected a number, got True"),
        ({"optim": {"betas": [0.9]}}, "optim.betas: must have at least 2 entries, got 1"),
        ({"routing": {"capacity": [0.5, None, "x"]}}, "routing.capacity[2]: expected a number, got 'x'"),
        ({"growth": {"stages": [{"at": 0.5, "depht": 4}]}}, "growth.stages[0].depht: unknown key (allowed: at, "),
        ({"unfreeze": {"stages": [{"at": 0.5}]}}, "unfreeze.stages[0].trainable_from: required field is missing"),
    ]
    for data, words in cases:
        with pytest.raises(RecipeError) as e:
            recipe_from_dict(data, "r.yaml")
        assert str(e.value).startswith(f"r.yaml: {words}"), (data, str(e.value))
