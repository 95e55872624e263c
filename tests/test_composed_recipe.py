"""The three efficiency features composed in one fine-tune (`schedules/fmnist_composed_finetune.yaml`): growth, top-down
unfreezing and routing on the published dense model, each boundary function-preserving where it should be."""

from __future__ import annotations

import timm
import torch

from zoo.nn.routing import RoutedBlock
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path

COMPOSED_RECIPE = "fmnist_composed_finetune"
SOURCE = "local-dir:model_cards/zoo_vit_micro_p7.fmnist"


def test_composed_recipe_grows_unfreezes_and_routes_a_published_model(tmp_path, monkeypatch, fmnist):
    from zoo.data.datasets import build_datasets
    from zoo.training.stage_plan import StagePlan, apply_structure, build_model, set_step_values

    monkeypatch.chdir(tmp_path)  # the bundled model must resolve from any working directory
    recipe = load_recipe(resolve_recipe_path(COMPOSED_RECIPE))
    assert recipe.model.pretrained == SOURCE
    bundle = build_datasets("fashion-mnist", train_subset=64, test_subset=64)
    published = timm.create_model("zoo_vit_micro_p7.fmnist", pretrained=True).eval()
    model = build_model(recipe, bundle).eval()
    assert len(model.blocks) == 6 and [isinstance(b, RoutedBlock) for b in model.blocks] == [False, True] * 3

    total = 936  # 2 epochs of 468 steps
    plan = StagePlan.from_recipe(recipe, total)
    plan.validate(model)
    assert plan.growth_steps == [94], "one growth event, at 10%"
    apply_structure(model, plan, 0)
    set_step_values(model, plan, 0)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():  # converted to routed blocks at capacity 1.0: still the published function
        torch.testing.assert_close(model(x), published(x), atol=1e-5, rtol=0)

    firsts, depth = [], {}
    for step in range(total):
        if step == 94:  # the growth boundary: the `zero` operator keeps the (annealing, routed) model's function
            set_step_values(model, plan, step)
            with torch.no_grad():
                y_before = model.eval()(x)
        if plan.changes_at(step):
            apply_structure(model, plan, step)
        set_step_values(model, plan, step)
        if step == 94:
            with torch.no_grad():
                torch.testing.assert_close(model.eval()(x), y_before, atol=1e-5, rtol=0)
        firsts.append(plan.describe(step)["trainable_from"])
        depth[step] = len(model.blocks)
    assert depth[93] == 6 and depth[94] == 8
    assert firsts[0] == 7 and firsts[-1] == 0, "head only at the start, everything by the end (top-down)"
    assert all(a >= b for a, b in zip(firsts, firsts[1:])) and len(set(firsts)) == 8
    caps = [b.capacity for b in model.blocks if isinstance(b, RoutedBlock)]
    assert [isinstance(b, RoutedBlock) for b in model.blocks] == [False, True] * 4 and caps == [0.5] * 4
