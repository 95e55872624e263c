"""Growth and unfreeze stages that start at an optimizer step (``step``) instead of a fraction of training (``at``):
recipe errors name the field, a stage takes effect at exactly its step, ``step`` and ``at`` recipes that map to the
same steps give the same plan, and a training run grows at the given step (and resumes exactly across it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe
from safetensors.torch import load_file

from zoo.training.recipe import GrowthStage, RecipeError, load_recipe, recipe_from_dict
from zoo.training.stage_plan import StagePlan, stage_step, stage_steps

SCHEDULES = Path(__file__).resolve().parent.parent / "schedules"


def _grow(*stages) -> dict:
    return {"growth": {"stages": list(stages)}}


def _unfreeze(*stages) -> dict:
    return {"unfreeze": {"mode": "stages", "stages": list(stages)}}


@pytest.mark.parametrize(
    "data,field,words",
    [
        (_grow({"at": 0.5, "step": 10, "depth": 4}), "growth.stages[0].step", "not both"),
        (_grow({"at": 0.3, "depth": 4}, {"depth": 6}), "growth.stages[1].at", "required"),
        (_grow({"at": 0.3, "depth": 4}, {"step": 500, "depth": 6}), "growth.stages[1].step", "mixes"),
        (_grow({"step": 500, "depth": 4}, {"at": 0.6, "depth": 6}), "growth.stages[1].at", "mixes"),
        (_grow({"step": 500, "depth": 4}, {"step": 500, "depth": 6}), "growth.stages[1].step", "increasing"),
        (_grow({"step": 500, "depth": 4}, {"step": 200, "depth": 6}), "growth.stages[1].step", "increasing"),
        (_grow({"step": -1, "depth": 4}), "growth.stages[0].step", "from step 0"),
        (_grow({"step": 0, "depth": 4}, {"step": 0, "depth": 6}), "growth.stages[1].step", "increasing"),
        (_grow({"step": 1.5, "depth": 4}), "growth.stages[0].step", "expected an integer"),
        (
            {"schedule": {"steps": 100}, **_grow({"step": 40, "depth": 4}, {"step": 100, "depth": 6})},
            "growth.stages[1].step",
            "outside the run",
        ),
        (
            {"growth": {"budget_flops": 1.0e12, "stages": [{"step": 100, "depth": 4}]}},
            "growth.stages[0].step",
            "budget_flops",
        ),
        (
            {"growth": {"budget_seconds": 60.0, "stages": [{"at": 0.3, "depth": 4}, {"step": 900, "depth": 6}]}},
            "growth.stages[1].step",
            "budget_seconds",
        ),
        (_unfreeze({"at": 0.0, "step": 0, "trainable_from": 1}), "unfreeze.stages[0].step", "not both"),
        (_unfreeze({"trainable_from": 1}), "unfreeze.stages[0].at", "required"),
        (
            _unfreeze({"step": 10, "trainable_from": 2}, {"step": 10, "trainable_from": 0}),
            "unfreeze.stages[1].step",
            "increasing",
        ),
        (
            {
                "schedule": {"steps": 50},
                **_unfreeze({"step": 0, "trainable_from": 1}, {"step": 60, "trainable_from": 0}),
            },
            "unfreeze.stages[1].step",
            "outside the run",
        ),
    ],
    ids=[
        "grow-at-and-step",
        "grow-neither",
        "grow-mixed-at-then-step",
        "grow-mixed-step-then-at",
        "grow-step-repeated",
        "grow-step-decreasing",
        "grow-step-negative",
        "grow-step-zero-twice",
        "grow-step-not-int",
        "grow-step-at-end-of-run",
        "budget-flops-with-step",
        "budget-seconds-with-step",
        "unfreeze-at-and-step",
        "unfreeze-neither",
        "unfreeze-step-repeated",
        "unfreeze-step-after-run",
    ],
)
def test_step_errors_name_file_and_field(tmp_path, data, field, words):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and f": {field}:" in msg and words in msg, msg


def test_valid_step_recipes_load_and_round_trip():
    r = recipe_from_dict(
        {
            "schedule": {"steps": 100},
            **_grow({"step": 1, "depth": 7}, {"step": 99, "depth": 8}),
            **_unfreeze({"step": 0, "trainable_from": 2}, {"step": 50, "trainable_from": 0}),
        }
    )
    assert [s.step for s in r.growth.stages] == [1, 99] and all(s.at is None for s in r.growth.stages)
    assert recipe_from_dict(r.to_dict()) == r
    stages = r.to_dict()["growth"]["stages"]
    assert all("at" not in s and s["step"] is not None for s in stages), "only the start that is set is written"
    # a fraction recipe writes no `step` key: its hash (manifest, checkpoints, model cards) is what it was before
    frac = recipe_from_dict(_grow({"at": 0.5, "depth": 8})).to_dict()
    assert "step" not in frac["growth"]["stages"][0] and frac["growth"]["stages"][0]["at"] == 0.5


def test_model_card_recipes_keep_their_recorded_hash():
    from zoo.models.pretrained import MODEL_CARDS
    from zoo.utils.manifest import recipe_hash

    cards = sorted(p for p in MODEL_CARDS.iterdir() if (p / "manifest.json").is_file())
    assert cards
    for folder in cards:
        recorded = json.loads((folder / "manifest.json").read_text())["recipe_hash"]
        assert recipe_hash(load_recipe(folder / "recipe.yaml").identity()) == recorded, folder.name


def test_stage_step_is_the_step_or_the_fraction_rounded_up():
    assert stage_step(GrowthStage(step=1053, depth=4), 4212) == 1053
    assert stage_step(GrowthStage(step=1053, depth=4), 10_000) == 1053, "a step does not scale with the run"
    assert stage_step(GrowthStage(at=0.25, depth=4), 4212) == 1053
    assert stage_step(GrowthStage(at=0.25, depth=4), 10) == 3  # ceil(2.5)
    with pytest.raises(RecipeError, match=r"recipe: growth\.stages\[1\]\.step: step 20 is outside the run"):
        stage_steps([GrowthStage(step=5, depth=3), GrowthStage(step=20, depth=4)], 20, "growth")


def test_a_stage_given_by_step_takes_effect_at_exactly_that_step():
    recipe = recipe_from_dict(
        tiny_recipe(
            schedule={"steps": 20, "warmup": 0.1},
            growth={"stages": [{"step": 7, "depth": 3}, {"step": 13, "depth": 4}]},
            unfreeze={"mode": "stages", "stages": [{"step": 0, "trainable_from": 2}, {"step": 5, "trainable_from": 0}]},
        )
    )
    plan = StagePlan.from_recipe(recipe, 20)
    assert plan.growth_steps == [7, 13] and plan.rewarm_steps() == [7, 13]
    assert plan.unfreeze_steps == [(0, 2), (5, 0)]
    assert [plan.growth_stage(s) for s in (0, 6, 7, 12, 13, 19)] == [0, 0, 1, 1, 2, 2]
    assert [plan.trainable_from(s, 4) for s in (0, 4, 5, 19)] == [2, 2, 0, 0]
    assert [s for s in range(20) if plan.changes_at(s)] == [5, 7, 13]
    # the same recipe in a longer run: the steps stay where they are (fractions would move)
    assert StagePlan.from_recipe(recipe, 1000).growth_steps == [7, 13]


def test_a_step_outside_an_epoch_based_run_is_refused_at_run_start():
    # the run length of an epoch-based recipe is only known when training starts: the recipe loads, the plan refuses
    recipe = recipe_from_dict(
        {
            "schedule": {"epochs": 9},
            **_grow({"step": 1053, "depth": 8}, {"step": 5000, "depth": 10}),
            **_unfreeze({"step": 0, "trainable_from": 1}, {"step": 4212, "trainable_from": 0}),
        }
    )
    with pytest.raises(RecipeError, match=r"unfreeze\.stages\[1\]\.step: step 4212 is outside the run"):
        StagePlan.from_recipe(recipe, 4212)
    recipe.unfreeze = None
    with pytest.raises(RecipeError, match=r"growth\.stages\[1\]\.step: step 5000 is outside the run"):
        StagePlan.from_recipe(recipe, 4212)
    assert StagePlan.from_recipe(recipe, 5001).growth_steps == [1053, 5000]


@pytest.mark.parametrize("total", [8, 37, 1000, 4212])
def test_step_and_fraction_recipes_that_map_to_the_same_steps_give_the_same_plan(total):
    growth = [{"at": 0.25, "depth": 4, "depth_op": "zero"}, {"at": 0.5, "depth": 6, "mlp_hidden": 256}]
    unfreeze = [{"at": 0.0, "trainable_from": 3}, {"at": 0.3, "trainable_from": 1}, {"at": 0.75, "trainable_from": 0}]
    schedule = {"steps": total, "warmup": 0.1}
    by_at = recipe_from_dict(
        tiny_recipe(schedule=schedule, growth={"stages": growth}, unfreeze={"mode": "stages", "stages": unfreeze})
    )

    def as_steps(stages, parsed):
        return [
            {**{k: v for k, v in s.items() if k != "at"}, "step": stage_step(p, total)} for s, p in zip(stages, parsed)
        ]

    by_step = recipe_from_dict(
        tiny_recipe(
            schedule=schedule,
            growth={"stages": as_steps(growth, by_at.growth.stages)},
            unfreeze={"mode": "stages", "stages": as_steps(unfreeze, by_at.unfreeze.stages)},
        )
    )
    assert all(s.at is None and s.step is not None for s in [*by_step.growth.stages, *by_step.unfreeze.stages])
    p_at, p_step = StagePlan.from_recipe(by_at, total), StagePlan.from_recipe(by_step, total)
    assert p_step.growth_steps == p_at.growth_steps and p_step.unfreeze_steps == p_at.unfreeze_steps
    assert p_step.rewarm_steps() == p_at.rewarm_steps()
    assert all(p_step.describe(s) == p_at.describe(s) for s in range(total))


def test_bundled_depth_steps_recipe_is_the_depth_recipe_in_steps():
    """fmnist_grow_depth_steps gives the steps fmnist_grow_depth's fractions map to in its 9-epoch run; the run
    length follows zoo/training/trainer.py: ``len(train_loader) // accumulation`` steps per epoch, the loader dropping
    the last
    incomplete batch."""
    from zoo.data.pipeline import make_loader

    at = load_recipe(SCHEDULES / "fmnist_grow_depth.yaml")
    by_step = load_recipe(SCHEDULES / "fmnist_grow_depth_steps.yaml")
    n = 60_000  # Fashion-MNIST training images (neither recipe takes a subset or a class selection)
    assert at.data.train_subset is None and at.data.classes is None and by_step.data == at.data
    micro = at.data.batch_size // at.train.accumulation
    loader = make_loader(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), micro,
                         shuffle=True, seed=0, drop_last=True)  # fmt: skip
    steps_per_epoch = len(loader) // at.train.accumulation
    assert steps_per_epoch == 468
    total = int(math.ceil(at.schedule.epochs * steps_per_epoch))
    assert total == 4212
    assert StagePlan.from_recipe(by_step, total).growth_steps == StagePlan.from_recipe(at, total).growth_steps
    assert StagePlan.from_recipe(at, total).growth_steps == [1053, 2106]

    def without_starts(r):
        d = r.to_dict()
        for s in d["growth"]["stages"]:
            s.pop("at", None)
            s.pop("step", None)
        return d

    assert without_starts(by_step) == without_starts(at), "the recipes differ only in how the stages start"


def test_grow_ignores_the_stage_start_keys():
    import timm

    from zoo.growth.operators import grow

    model = timm.create_model("zoo_vit_micro_p4", embed_dim=32, depth=2, num_heads=2, num_classes=10, in_chans=1)
    grow(model, GrowthStage(step=3, depth=3).model_dump())
    assert len(model.blocks) == 3


def test_card_describes_step_stages():
    from zoo.publish.run_history import unfreeze_summary

    by_step = {
        "unfreeze": {"mode": "stages", "stages": [{"step": 0, "trainable_from": 1}, {"step": 500, "trainable_from": 0}]}
    }
    assert unfreeze_summary(by_step) == "staged unfreezing: from group 1 at step 0, from group 0 at step 500"
    by_at = {"unfreeze": {"mode": "stages", "stages": [{"at": 0.5, "trainable_from": 0}]}}
    assert unfreeze_summary(by_at) == "staged unfreezing: from group 0 at 50%"


def test_step_outside_the_run_fails_at_start_and_writes_nothing(tmp_path, capsys, fmnist):
    from zoo.cli.main import main

    recipe = tmp_path / "r.yaml"
    # 512 images at batch 64: 8 steps per epoch, so step 100 of a 1-epoch run never comes
    data = tiny_recipe(schedule={"steps": None, "epochs": 1}, growth={"stages": [{"step": 100, "depth": 3}]})
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    code = main(["train", str(recipe), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "growth.stages[0].step" in err and "outside the run" in err, err
    assert not (out / "recipe.yaml").exists() and not (out / "checkpoints").exists()


def test_training_grows_and_unfreezes_at_the_given_steps_and_resumes_exactly(tmp_path, fmnist):
    from zoo.training.trainer import train

    # 8 steps; depth 2 -> 3 at step 3, stem and block 0 frozen until step 5; the session stops right at the growth
    recipe = recipe_from_dict(
        tiny_recipe(
            growth={"stages": [{"step": 3, "depth": 3}]},
            unfreeze={"mode": "stages", "stages": [{"step": 0, "trainable_from": 2}, {"step": 5, "trainable_from": 0}]},
        )
    )
    train(recipe, tmp_path / "full", progress=False)
    train(recipe, tmp_path / "part", progress=False, stop_after=3)
    train(recipe, tmp_path / "part", resume=True, progress=False)
    for run in ("full", "part"):
        records = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        events = [(r["step"], r["event"]) for r in records if "event" in r]
        assert events == [
            (3, {"trainable_from": 2, "growth_stage": 1}),
            (5, {"trainable_from": 0, "growth_stage": 1}),
        ], run
        assert any("loss_after_event" in r and r["step"] == 4 for r in records), run
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume across a step boundary is exact"
    cfg = json.loads((tmp_path / "full" / "model" / "config.json").read_text())
    assert cfg["model_args"]["depth"] == 3


def test_growth_at_step_0_grows_a_loaded_model_before_training_and_resumes_exactly(tmp_path, fmnist):
    """Growing a pretrained model: a stage at step 0 applies as the model is built, before the optimizer exists (no
    event, no re-warm-up); with the function-preserving operator the grown model computes what the loaded one does."""
    import timm

    from zoo.hub import load_folder, save_model_folder
    from zoo.training.trainer import train

    torch.manual_seed(0)
    base = timm.create_model("zoo_vit_micro_p4", embed_dim=32, depth=2, num_heads=2, num_classes=10, in_chans=1)
    folder = save_model_folder(base.eval(), tmp_path / "base")
    stages = [{"step": 0, "depth": 4, "depth_op": "zero"}]
    data = tiny_recipe(model={"name": "zoo_vit_micro_p4", "pretrained": f"local-dir:{folder}", "reset_head": False},
                       growth={"stages": stages})  # fmt: skip
    recipe = recipe_from_dict(data)
    plan = StagePlan.from_recipe(recipe, 8)
    assert plan.growth_steps == [0] and plan.rewarm_steps() == [] and not any(plan.changes_at(s) for s in range(8))
    train(recipe, tmp_path / "full", progress=False)
    train(recipe, tmp_path / "part", progress=False, stop_after=3)
    train(recipe, tmp_path / "part", resume=True, progress=False)
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume of a grown pretrained run is exact"
    grown = load_folder(tmp_path / "full" / "model")
    assert len(grown.blocks) == 4
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert not any("event" in r for r in records)  # nothing changes during the run


def test_growth_at_step_0_is_function_preserving_on_the_loaded_weights(tmp_path, fmnist):
    import timm

    from zoo.data.datasets import build_datasets
    from zoo.hub import save_model_folder
    from zoo.training.stage_plan import apply_structure, build_model

    torch.manual_seed(0)
    base = timm.create_model("zoo_vit_micro_p4", embed_dim=32, depth=2, num_heads=2, num_classes=10, in_chans=1).eval()
    folder = save_model_folder(base, tmp_path / "base")
    data = tiny_recipe(model={"name": "zoo_vit_micro_p4", "pretrained": f"local-dir:{folder}", "reset_head": False},
                       growth={"stages": [{"step": 0, "depth": 4, "depth_op": "zero"}]})  # fmt: skip
    recipe = recipe_from_dict(data)
    model = build_model(recipe, build_datasets("fashion-mnist", train_subset=16, test_subset=16))
    apply_structure(model, StagePlan.from_recipe(recipe, 8), 0)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert len(model.blocks) == 4
        torch.testing.assert_close(model.eval()(x), base(x), rtol=1e-5, atol=1e-6)
