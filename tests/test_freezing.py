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
