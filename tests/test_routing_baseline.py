"""The routing-baseline suite: budget matching of the token-dropping and merging arms, and the suite end to end."""

import json

import pytest
import torch
from timm.layers import PatchDropout

from zoo.bench.suites.routing_baseline import (
    DENSE_RECIPE,
    HEADLINE,
    ROUTED_RECIPE,
    SECOND_CAPACITY,
    budgets,
    capacity_override,
    drop_rate_for,
    matched_overrides,
    nearest_setting,
)
from zoo.measure.flops import step_flops
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path
from zoo.training.stage_plan import build_model


def test_nearest_setting_prefers_the_first_listed_on_a_tie():
    assert nearest_setting({"a": 10.0, "b": 7.0, "c": 3.0}, 6.0) == "b"
    assert nearest_setting({"mild": 8.0, "harsh": 4.0}, 6.0) == "mild"


@pytest.mark.parametrize("num_patches", [16, 49, 196])
def test_drop_rate_keeps_exactly_the_asked_number_of_tokens(num_patches):
    x = torch.zeros(1, num_patches + 1, 4)  # CLS + patches
    for kept in range(1, num_patches + 1):
        drop = PatchDropout(drop_rate_for(kept, num_patches), num_prefix_tokens=1).train()
        assert drop(x).shape[1] == kept + 1, kept
    with pytest.raises(ValueError, match="kept tokens"):
        drop_rate_for(0, num_patches)


def test_second_budget_changes_only_the_routed_blocks_capacity():
    assert capacity_override([None, 0.25, 0.25], 0.5) == "routing.capacity=[null, 0.5, 0.5]"
    assert capacity_override(0.25, 0.5) == "routing.capacity=0.5"
    recipe = load_recipe(resolve_recipe_path(ROUTED_RECIPE))
    (first, none), (second, extra) = budgets(recipe.routing.capacity).items()
    assert (first, none) == ("", [])
    assert second == f"_c{SECOND_CAPACITY:g}"
    changed = load_recipe(resolve_recipe_path(ROUTED_RECIPE), extra)
    assert changed.routing.capacity == [c if c is None else SECOND_CAPACITY for c in recipe.routing.capacity]
    assert None in changed.routing.capacity, "the dense first block stays dense"
    assert changed.model_dump(exclude={"routing"}) == recipe.model_dump(exclude={"routing"})


class _Shapes:  # what build_model reads of a dataset bundle: Fashion-MNIST's shapes, without loading it
    num_classes, in_chans, img_size = 10, 1, 28


def _build(overrides):
    return build_model(load_recipe(resolve_recipe_path(DENSE_RECIPE), overrides), _Shapes())


def test_matched_settings_cost_the_target_flops_within_one_step_of_the_search():
    dense = _build([])
    n = dense.patch_embed.num_patches
    full = step_flops(dense, 2, train=True)
    target = 0.7 * full
    matched = matched_overrides(_build, n, target)
    assert set(matched) == {"dropped", "merged"}
    drop = matched["dropped"]
    rate = float(drop["overrides"][0].split("=")[1])
    assert 0.0 < rate < 1.0 and drop["overrides"][0].startswith("model.args.patch_drop_rate=")
    assert drop["train_flops"] == step_flops(_build(drop["overrides"]), 2, train=True)
    # one more or one fewer kept token is no closer to the target
    kept = int(n * (1 - rate))
    for other in (kept - 1, kept + 1):
        cost = step_flops(_build([f"model.args.patch_drop_rate={drop_rate_for(other, n)}"]), 2, train=True)
        assert abs(cost - target) >= abs(drop["train_flops"] - target)
    merge = matched["merged"]
    r = int(merge["overrides"][0].split("=")[1])
    assert r > 0 and merge["train_flops"] < full
    assert abs(merge["train_flops"] - target) < 0.2 * full


@pytest.mark.slow  # 1-3 minutes alone: every arm of the suite (two budgets) trained end to end on a subset
def test_routing_baseline_suite_end_to_end_on_a_subset(tmp_path, fmnist):
    from zoo.bench.suites import SUITES

    tiny = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "schedule.epochs=1"]
    res = SUITES["routing-baseline"](quick=False, out=tmp_path, seeds=[0], overrides=tiny)
    assert res["headline_arm"] == HEADLINE
    second = f"_c{SECOND_CAPACITY:g}"
    names = {"dense"} | {f"{family}{suffix}" for family in (HEADLINE, "dropped", "merged") for suffix in ("", second)}
    assert {a["arm"] for a in res["arms"]} == names | {f"{HEADLINE}_equal_time"}
    assert {r["arm"] for r in res["rows"]} == names
    flops = {r["arm"]: r["train MFLOP/img"] for r in res["rows"]}
    assert flops[HEADLINE] < flops[HEADLINE + second] < flops["dense"], "the second budget is the milder one"
    dense_row = next(r for r in res["rows"] if r["arm"] == "dense")
    assert dense_row["train_speedup"] == 1.0
    assert dense_row["train 95% CI"] == dense_row["infer 95% CI"] == "[1.00, 1.00]", "dense against itself"
    acc = {a["arm"]: a["acc"]["mean"] for a in res["arms"]}
    wall = {a["arm"]: a["wall_clock_s"]["mean"] for a in res["arms"]}
    assert res["acc_delta"] == pytest.approx(100 * (acc[HEADLINE] - acc["dense"]))
    assert res["train_speedup"] == pytest.approx(wall["dense"] / wall[HEADLINE])
    assert res["equal_time_epochs"] == round(1 * wall["dense"] / wall[HEADLINE], 2), "its speed-up buys the epochs"
    assert res["acc_delta_equal_time"] == pytest.approx(100 * (acc[f"{HEADLINE}_equal_time"] - acc["dense"]))
    equal_recipe = (tmp_path / "runs" / f"{HEADLINE}_equal_time" / "seed0" / "recipe.yaml").read_text()
    assert f"epochs: {res['equal_time_epochs']}" in equal_recipe
    assert res["step_train_speedup"] == next(r for r in res["rows"] if r["arm"] == HEADLINE)["train_speedup"]
    matched = json.dumps(res["matched"])
    assert "model.args.patch_drop_rate=" in matched and "merging.r=" in matched
    assert json.loads((tmp_path / "matched.json").read_text()).keys() == names - {"dense", HEADLINE, HEADLINE + second}
