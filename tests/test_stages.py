"""Stage plans that compose features: gradual unfreezing across a growth boundary, routing on grown blocks."""

from __future__ import annotations

import pytest
import timm
from conftest import tiny_recipe

from zoo.nn.routing import RoutedBlock
from zoo.training.recipe import recipe_from_dict
from zoo.training.stage_plan import StagePlan, apply_structure, set_step_values

TOTAL = 8


def _walk(recipe):
    """Apply the plan step by step as training does; yields (step, model, trainable parameter names)."""
    m = recipe.model
    model = timm.create_model(m.name, num_classes=10, in_chans=1, img_size=28, **m.args)
    if recipe.routing is not None:
        from zoo.training.stage_plan import routing_args

        model.set_routing(routing_args(recipe))
    plan = StagePlan.from_recipe(recipe, TOTAL)
    plan.validate(model)
    apply_structure(model, plan, 0)
    for step in range(TOTAL):
        if plan.changes_at(step):
            apply_structure(model, plan, step)
        set_step_values(model, plan, step)
        yield step, model, {n for n, p in model.named_parameters() if p.requires_grad}


def test_gradual_unfreezing_never_refreezes_after_growth():
    # 4 groups before growth (stem, 2 blocks, head); depth 2 -> 4 at step 4 appends two zero-init blocks on top
    recipe = recipe_from_dict(
        tiny_recipe(
            schedule={"steps": TOTAL, "warmup": 0.1},
            growth={"stages": [{"at": 0.5, "depth": 4, "depth_op": "zero"}]},
            unfreeze={"mode": "gradual", "every": 0.25, "start_groups": 1},
        )
    )
    prev: set[str] = set()
    seen_growth = False
    for step, model, trainable in _walk(recipe):
        names = {n for n, _ in model.named_parameters()}
        refrozen = sorted((prev & names) - trainable)
        assert not refrozen, f"step {step}: groups that were training froze again: {refrozen[:3]}"
        if len(model.blocks) == 4:
            seen_growth = True
            assert {n for n in names if n.startswith(("blocks.2.", "blocks.3."))} <= trainable, "new blocks train"
        prev = trainable
    assert seen_growth
    # at step 4 (progress 0.5) three of the four original groups train: block 0 and block 1, not the stem
    model = next(m for s, m, _ in _walk(recipe) if s == 4)
    assert model.no_grad_prefix == 0 and not model.patch_embed.proj.weight.requires_grad
    assert model.blocks[0].attn.qkv.weight.requires_grad


def test_routing_anneals_on_blocks_added_by_growth():
    recipe = recipe_from_dict(
        tiny_recipe(
            schedule={"steps": TOTAL, "warmup": 0.1},
            routing={"capacity": 0.5, "layers": "every_other", "start": 1.0, "anneal": 0.75},
            growth={"stages": [{"at": 0.25, "depth": 4, "depth_op": "zero"}]},
        )
    )
    caps = {}
    for step, model, _ in _walk(recipe):
        caps[step] = [b.capacity if isinstance(b, RoutedBlock) else None for b in model.blocks]
    assert caps[0] == [None, 1.0]
    mid = pytest.approx(1.0 - 0.5 * (2 / TOTAL) / 0.75)  # step 2: a third of the way through the anneal
    assert caps[2] == [None, mid, None, mid], "the routed block added by growth anneals with the others"
    assert caps[TOTAL - 1] == [None, 0.5, None, 0.5]
