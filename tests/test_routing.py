"""Token routing: exact top-k, untouched skipped tokens, prefix always processed, router learns, conversion exact."""

from __future__ import annotations

import pytest
import timm
import torch

from zoo.nn.block import Block
from zoo.nn.routing import (
    RoutedBlock,
    capacity_to_k,
    gather_tokens,
    resolve_route_plan,
    scatter_add_tokens,
    select_topk,
)


def routed_block(router="linear", context="selected", capacity=0.25, prefix=1, dim=32):
    torch.manual_seed(0)
    blk = RoutedBlock(dim, 2, capacity=capacity, router=router, context=context, num_prefix_tokens=prefix).eval()
    if blk.router is not None:
        with torch.no_grad():
            blk.router.weight.normal_(0, 0.5)
    return blk


def test_capacity_to_k():
    assert capacity_to_k(49, 0.25) == 13 and capacity_to_k(196, 0.125) == 25 and capacity_to_k(49, 1.0) == 49
    assert capacity_to_k(4, 0.01) == 1
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            capacity_to_k(10, bad)


def test_select_topk_is_the_true_topk_not_argsort_of_values():
    # the community bug argsort(topk.values) returns positions 0..k-1 of the *top-k list*, i.e. always the first k
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.0, 0.7], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    idx = select_topk(scores, 3)
    assert [set(r.tolist()) for r in idx] == [{1, 3, 5}, {0, 1, 2}]
    rand = torch.randn(4, 50)
    idx = select_topk(rand, 10)
    true = rand.argsort(dim=1, descending=True)[:, :10]
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(idx, true))


def test_gather_scatter_roundtrip_and_untouched_rows():
    x = torch.randn(2, 6, 4)
    idx = torch.tensor([[4, 1], [0, 5]])
    sel = gather_tokens(x, idx)
    assert torch.equal(sel[0, 0], x[0, 4]) and torch.equal(sel[1, 1], x[1, 5])
    out = scatter_add_tokens(x, idx, torch.ones(2, 2, 4))
    assert torch.equal(out[0, 4], x[0, 4] + 1) and torch.equal(out[0, 0], x[0, 0]) and torch.equal(out[1, 2], x[1, 2])


@pytest.mark.parametrize("router", ["linear", "cls_attn"])
@pytest.mark.parametrize("context", ["selected", "all"])
def test_unselected_tokens_unchanged_bitwise_and_prefix_processed(router, context):
    blk = routed_block(router, context, capacity=0.25, prefix=2)
    x = torch.randn(3, 2 + 16, 32)
    out = blk(x)
    k = capacity_to_k(16, 0.25)
    chosen = select_topk(blk.scores(x), k) + 2
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[torch.arange(3)[:, None], chosen] = True
    mask[:, :2] = True
    assert torch.equal(out[~mask[..., None].expand_as(out)], x[~mask[..., None].expand_as(x)])
    changed = (out != x).any(-1)
    assert changed[:, :2].all(), "prefix tokens (CLS, registers) are always processed"
    assert torch.equal(changed[:, 2:], mask[:, 2:]), "exactly the top-k patch tokens are processed"


def test_selected_tokens_get_gated_block_residual():
    blk = routed_block("linear", "selected", capacity=0.5, prefix=1)
    x = torch.randn(2, 1 + 8, 32)
    out = blk(x)
    scores = blk.scores(x)
    idx = select_topk(scores, 4)
    full_idx = torch.cat([torch.zeros(2, 1, dtype=torch.long), idx + 1], 1)
    x_sel = gather_tokens(x, full_idx)
    dense = Block(32, 2)
    dense.load_state_dict({k: v for k, v in blk.state_dict().items() if "router" not in k})
    f = dense.eval()(x_sel) - x_sel  # the block run on the selected tokens only, minus the residual
    gate = torch.cat([torch.ones(2, 1), 2 * torch.sigmoid(scores.gather(1, idx))], 1)
    expected = x_sel + gate[..., None] * f
    torch.testing.assert_close(gather_tokens(out, full_idx), expected, rtol=1e-5, atol=1e-5)


def test_router_receives_gradient():
    blk = routed_block("linear", capacity=0.25).train()
    x = torch.randn(2, 17, 32)
    blk(x).pow(2).sum().backward()
    assert blk.router.weight.grad is not None and blk.router.weight.grad.abs().sum() > 0


def test_tanh_weight_is_bounded_reaches_skipped_tokens_and_teaches_the_router_through_them():
    torch.manual_seed(0)
    blk = RoutedBlock(32, 2, capacity=0.25, num_prefix_tokens=1, weight="tanh", weight_scale=0.3).train()
    with torch.no_grad():
        blk.router.weight.normal_(0, 0.5)
    x = torch.randn(2, 17, 32)
    scores = blk.scores(x)
    idx = select_topk(scores, capacity_to_k(16, 0.25))
    skipped = torch.ones(2, 16, dtype=torch.bool)
    skipped[torch.arange(2)[:, None], idx] = False
    out = blk(x)
    w = 1 + 0.3 * torch.tanh(scores)
    assert ((w >= 0.7) & (w <= 1.3)).all()
    torch.testing.assert_close(out[:, 1:][skipped], (x[:, 1:] * w[..., None])[skipped], rtol=1e-6, atol=1e-6)
    out[:, 1:][skipped].pow(2).sum().backward()  # a loss on the skipped tokens only
    assert blk.router.weight.grad.abs().sum() > 0, "the router learns from the tokens it skips"
    mod = RoutedBlock(32, 2, capacity=0.25, num_prefix_tokens=1).train()
    mod.load_state_dict(blk.state_dict())
    out = mod(x)
    assert torch.equal(out[:, 1:][skipped], x[:, 1:][skipped]), "MoD's sigmoid weight leaves skipped tokens alone"
    out[:, 1:][skipped].pow(2).sum().backward()
    assert mod.router.weight.grad is None or mod.router.weight.grad.abs().sum() == 0


def test_both_weights_equal_the_unweighted_block_at_zero_init():
    torch.manual_seed(0)
    x = torch.randn(2, 17, 32)
    outs = []
    for weight in ("sigmoid", "tanh"):
        torch.manual_seed(1)
        outs.append(RoutedBlock(32, 2, capacity=0.5, num_prefix_tokens=1, weight=weight).eval()(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="routing.weight_scale"):
        RoutedBlock(32, 2, weight="tanh", weight_scale=1.0)
    from zoo.training.recipe import RecipeError, recipe_from_dict

    with pytest.raises(RecipeError, match="routing.weight"):
        recipe_from_dict({"routing": {"weight": "tanh", "router": "cls_attn"}})
    r = recipe_from_dict({"routing": {"weight": "tanh", "weight_scale": 0.2}})
    from zoo.training.stage_plan import routing_args

    assert routing_args(r)["weight"] == "tanh" and routing_args(r)["weight_scale"] == 0.2
    assert "weight" not in routing_args(recipe_from_dict({"routing": {}})), "old model args unchanged"


@pytest.mark.parametrize(
    "routing",
    [
        {"capacity": 1.0, "layers": "all"},
        {"capacity": 1.0, "layers": "every_other", "context": "all"},
        {"capacity": 1.0, "layers": "all", "router": "cls_attn"},
        {"capacity": 1.0, "layers": "all", "weight": "tanh", "weight_scale": 0.5},
    ],
)
def test_dense_to_routed_conversion_is_exact_at_capacity_1(routing):
    torch.manual_seed(0)
    dense = timm.create_model("zoo_vit_micro_p4").eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = dense(x)
        dense.set_routing(routing)
        out = dense(x)
    assert sum(isinstance(b, RoutedBlock) for b in dense.blocks) > 0
    assert (out - ref).abs().max().item() <= 1e-5
    assert dense.model_args["routing"] == routing


def test_resolve_route_plan():
    assert resolve_route_plan(4, None) == [None] * 4
    assert resolve_route_plan(4, {"capacity": 0.25}) == [None, 0.25, None, 0.25]
    assert resolve_route_plan(3, {"capacity": 0.5, "layers": [0]}) == [0.5, None, None]
    assert resolve_route_plan(2, {"capacity": [None, 0.3]}) == [None, 0.3]
    with pytest.raises(ValueError, match="out of range"):
        resolve_route_plan(3, {"capacity": 0.5, "layers": [3]})
    with pytest.raises(ValueError, match="entries for depth"):
        resolve_route_plan(3, {"capacity": [0.5]})


def test_static_shapes_compile_matches_eager():
    torch.manual_seed(0)
    model = timm.create_model(
        "zoo_vit_micro_p4", embed_dim=32, depth=2, num_heads=2, routing={"capacity": 0.25, "layers": "all"}
    ).eval()
    with torch.no_grad():
        for b in model.blocks:
            b.router.weight.normal_(0, 0.5)
        x = torch.randn(2, 1, 28, 28)
        eager = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
