"""Layer groups, freezing and layer-wise LR decay."""

from __future__ import annotations

import pytest
import timm
import torch

from zoo.training.freezing import layer_groups, layer_scales, param_groups, set_group_lrs, set_trainable_from


@pytest.mark.parametrize("kwargs", [{}, {"routing": {"capacity": 0.5}}, {"reg_tokens": 2, "init_values": 1e-5}])
def test_groups_cover_every_parameter_exactly_once(kwargs):
    model = timm.create_model("zoo_vit_micro_p4", depth=3, **kwargs)
    groups = layer_groups(model)
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert len(groups) == 3 + 2 and groups[-1] == ["head.weight", "head.bias"]
    assert all(n.startswith("blocks.1.") for n in groups[2])


def test_frozen_params_get_no_gradient_and_no_update():
    torch.manual_seed(0)
    model = timm.create_model("zoo_vit_micro_p4", depth=4, embed_dim=32, num_heads=2)
    set_trainable_from(model, 3)  # stem, blocks 0 and 1 frozen
    frozen = {n for g in layer_groups(model)[:3] for n in g}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([g for g in param_groups(model, 0.05)], lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 1, 28, 28)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, before[n]), n
        else:
            assert not torch.equal(p, before[n]), n


def test_frozen_prefix_builds_no_graph():
    model = timm.create_model("zoo_vit_micro_p4", depth=4, embed_dim=32, num_heads=2).train()
    set_trainable_from(model, 3)  # the stem and blocks 0-1 run under no_grad
    seen = {}
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (a[0].requires_grad, out.grad_fn)))
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert seen[0] == (False, None) and seen[1] == (False, None), "frozen blocks: no graph in or out"
    assert seen[2][0] is False and seen[2][1] is not None, "first trainable block starts the graph"
    assert not model.blocks[0].training and model.blocks[2].training, "frozen blocks run in eval mode"
    set_trainable_from(model, 0)
    assert model.no_grad_prefix == -1 and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="out of range"):
        set_trainable_from(model, 99)


def test_layer_decay_values_per_group():
    assert layer_scales(4, 0.5) == [0.125, 0.25, 0.5, 1.0] and layer_scales(3, None) == [1.0, 1.0, 1.0]
    model = timm.create_model("zoo_vit_micro_p4", depth=2, routing={"capacity": 0.5})
    groups = param_groups(model, 0.05, layer_decay=0.5, lr_mult={"router": 10.0})
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["head.weight"]["lr_scale"] == 1.0 and by_name["pos_embed"]["lr_scale"] == 0.125
    assert by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == 0.25
    assert by_name["blocks.1.router.weight"]["lr_scale"] == pytest.approx(0.5 * 10)
    assert by_name["blocks.0.norm1.weight"]["weight_decay"] == 0.0 and by_name["pos_embed"]["weight_decay"] == 0.0
    assert by_name["blocks.0.mlp.fc1.weight"]["weight_decay"] == 0.05
    # recomputed when depth grows: the groups follow the current blocks
    from zoo.growth.operators import grow_depth

    grow_depth(model, 4)
    deeper = {n: g for g in param_groups(model, 0.05, layer_decay=0.5) for n in g["names"]}
    assert deeper["blocks.3.attn.qkv.weight"]["lr_scale"] == 0.5 and deeper["pos_embed"]["lr_scale"] == 0.5**5


def test_layer_decay_applies_through_the_lr_the_trainer_sets():
    model = timm.create_model("zoo_vit_micro_p4", depth=2)
    opt = torch.optim.AdamW(param_groups(model, 0.05, layer_decay=0.5), lr=1.0)
    set_group_lrs(opt, 0.01)
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert lrs["head.weight"] == pytest.approx(0.01) and lrs["blocks.1.mlp.fc1.weight"] == pytest.approx(0.005)
    assert lrs["patch_embed.proj.weight"] == pytest.approx(0.01 * 0.5**3)


# ------------------------------------------------------------------------------------------ FreezeOut (bottom-up)
@pytest.mark.parametrize(
    "total,groups,every,start",
    [(100, 6, 0.1, None), (37, 4, 0.2, None), (8, 4, 0.25, None), (10, 5, 0.3, None), (100, 6, 0.1, 0.5),
     (40, 6, 0.15, 0.6)],
)  # fmt: skip
def test_freezeout_steps_match_the_stage_plan(total, groups, every, start):
    from zoo.training.progress import freezeout_steps
    from zoo.training.recipe import recipe_from_dict
    from zoo.training.stage_plan import StagePlan

    at = freezeout_steps(total, groups, every, start)
    assert list(at) == sorted(at) and groups - 1 not in at, "bottom-up, and the top group never freezes"
    first = every if start is None else start
    assert at, "at least the lowest group freezes in these settings"
    assert all(s == pytest.approx((first + g * every) * total, abs=1) and 0 < s < total for g, s in at.items())
    unfreeze = {"mode": "freezeout", "every": every, **({} if start is None else {"start": start})}
    plan = StagePlan.from_recipe(recipe_from_dict({"unfreeze": unfreeze}), total)
    for step in range(total):
        assert plan.trainable_from(step, groups) == sum(1 for s in at.values() if step >= s)


def test_freezeout_lr_factors_end_at_each_groups_freeze_step():
    from zoo.training.progress import freezeout_lr_factors, lr_factor

    at = {0: 20, 1: 40}
    f0 = [freezeout_lr_factors(s, at, 5)[0] for s in range(20)]
    assert f0[:5] == pytest.approx([lr_factor(s, 100, 5) for s in range(5)]), "the run's warm-up"
    assert all(a >= b for a, b in zip(f0[5:], f0[6:])) and f0[-1] < 0.02, "decays to ~0 at its freeze step"
    assert freezeout_lr_factors(20, at, 5).keys() == {1}, "a frozen group has no LR"
    assert freezeout_lr_factors(10, at, 5)[1] > freezeout_lr_factors(10, at, 5)[0], "later groups decay later"
    scaled, plain = freezeout_lr_factors(7, at, 5, scale_total=100), freezeout_lr_factors(7, at, 5)
    assert scaled == pytest.approx({0: plain[0] * 100 / 20, 1: plain[1] * 100 / 40}), "FreezeOut's alpha / t_i"
    set_lrs = {"layer_group": 0, "lr_scale": 0.5}, {"layer_group": 3, "lr_scale": 1.0}

    class Opt:
        param_groups = [dict(g) for g in set_lrs]

    set_group_lrs(Opt, 1e-3, {0: 2e-4})
    assert [g["lr"] for g in Opt.param_groups] == pytest.approx([1e-4, 1e-3])


def test_freezeout_anneal_needs_freezeout_mode():
    from zoo.training.recipe import RecipeError, recipe_from_dict

    with pytest.raises(RecipeError, match="unfreeze.anneal_lr"):
        recipe_from_dict({"unfreeze": {"mode": "gradual", "anneal_lr": True}})
    with pytest.raises(RecipeError, match="unfreeze.every"):
        recipe_from_dict({"unfreeze": {"mode": "freezeout", "every": 1.5}})
    with pytest.raises(RecipeError, match="unfreeze.start: the first group freezes at 0.03, inside schedule.warmup"):
        recipe_from_dict({"unfreeze": {"mode": "freezeout", "start": 0.03, "anneal_lr": True, "scale_lr": True}})
    with pytest.raises(RecipeError, match="unfreeze.scale_lr"):
        recipe_from_dict({"unfreeze": {"mode": "freezeout", "scale_lr": True}})
    with pytest.raises(RecipeError, match="unfreeze.start"):
        recipe_from_dict({"unfreeze": {"mode": "adaptive", "start": 0.5}})
    with pytest.raises(RecipeError, match="unfreeze.start"):
        recipe_from_dict({"unfreeze": {"mode": "freezeout", "start": 1.0}})


def test_freezeout_training_freezes_bottom_up_with_annealed_lr(tmp_path, fmnist):
    """8 steps, 4 groups (stem, 2 blocks, head), every 0.25: the stem freezes at step 2, block 0 at step 4, block 1
    at step 6. Weights stop changing at their freeze step, and the annealed run differs from the plain freezeout."""
    from conftest import tiny_recipe
    from safetensors.torch import load_file
    from test_train import weights

    from zoo.training.recipe import recipe_from_dict
    from zoo.training.trainer import train

    runs = {}
    for anneal in (False, True):
        sections = {"unfreeze": {"mode": "freezeout", "every": 0.25, "anneal_lr": anneal}}
        recipe = recipe_from_dict(tiny_recipe(**sections, train={"seed": 0, "checkpoint_every": 2}))
        train(recipe, tmp_path / f"a{anneal}", progress=False)
        runs[anneal] = weights(tmp_path / f"a{anneal}")
        # stopped right after its freeze step, the stem already holds its final weights
        train(recipe, tmp_path / f"b{anneal}", progress=False, stop_after=2)
        ckpt = sorted((tmp_path / f"b{anneal}" / "checkpoints").glob("step_*"))[-1]
        mid = load_file(str(next(ckpt.glob("**/model.safetensors"))))
        for name, value in runs[anneal].items():
            if name.startswith("patch_embed."):
                assert torch.equal(mid[name], value), name
    differs = [n for n in runs[True] if not torch.equal(runs[True][n], runs[False][n])]
    assert any(n.startswith("blocks.0.") for n in differs), "annealing changed what the lower groups learned"


# ------------------------------------------------------------------------------------ adaptive bottom-up freezing
def test_adaptive_check_steps_and_relative_change():
    from zoo.training.adaptive_freezing import check_steps, relative_change

    assert check_steps(8, 0.25) == [2, 4, 6] and check_steps(100, 0.3) == [30, 60, 90]
    a = {"w": torch.tensor([3.0, 4.0])}
    assert relative_change(a, a) == 0.0
    assert relative_change(a, {"w": torch.tensor([3.0, 3.0])}) == pytest.approx(1 / 5)


def test_plasticity_monitor_freezes_the_lowest_group_once_it_stops_changing(tmp_path):
    from zoo.training.adaptive_freezing import PlasticityMonitor

    model = timm.create_model("zoo_vit_micro_p4", depth=2, embed_dim=32, num_heads=2)
    mon = PlasticityMonitor(threshold=0.01)
    assert not mon.should_freeze(model, 0), "the first measurement only takes the reference"
    with torch.no_grad():
        model.patch_embed.proj.weight.mul_(1.5)  # the stem is still changing a lot
    assert not mon.should_freeze(model, 0)
    assert mon.should_freeze(model, 0), "unchanged since the last check: freeze"
    assert mon.group == 1 and all(n.startswith("blocks.0.") for n in mon.reference), "next group's reference"
    mon.save(tmp_path)
    again = PlasticityMonitor(threshold=0.01)
    again.load(tmp_path)
    assert again.group == 1 and again.reference.keys() == mon.reference.keys()
    top = PlasticityMonitor(threshold=0.01)
    top.should_freeze(model, 3)
    assert not top.should_freeze(model, 3), "the top group (head) always trains"


@pytest.mark.parametrize("threshold,frozen_at", [(10.0, [4, 6]), (1e-12, [])])
def test_adaptive_freezing_in_training(tmp_path, fmnist, threshold, frozen_at):
    """8 steps, checks at 2, 4, 6: a threshold nothing stays under never freezes; one everything stays under
    freezes the stem at 4 (its reference was taken at 2) and block 0 at 6 (reference taken at 4)."""
    import json

    from conftest import tiny_recipe

    from zoo.training.recipe import recipe_from_dict
    from zoo.training.trainer import train

    sections = {"unfreeze": {"mode": "adaptive", "check_every": 0.25, "threshold": threshold}}
    train(recipe_from_dict(tiny_recipe(**sections)), tmp_path / "run", progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = [(r["step"], r["event"]["trainable_from"]) for r in log if "event" in r]
    assert events == [(s, i + 1) for i, s in enumerate(frozen_at)]
