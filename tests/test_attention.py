"""Efficient attention variants (zoo.nn.attention): semantics against dense / explicit references, FLOPs, errors,
I/O."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from zoo.growth.operators import grow_embed_dim, grow_heads, grow_resolution
from zoo.hub import save_model_folder
from zoo.measure.flops import analytical_vit_flops, attention_block_flops, attention_flops, count_flops
from zoo.nn.attention import (
    ATTENTION_TYPES,
    Attention,
    LocalitySelfAttention,
    SharedQKAttention,
    SpatialReductionAttention,
    WindowAttention,
)

DIM, HEADS = 32, 2
GRID = (5, 6)  # not divisible by the window / reduction sizes below: exercises padding and ceil cells
VARIANT_ARGS = {
    "dense": {},
    "window": {"window_size": 4},
    "spatial_reduction": {"sr_ratio": 2},
    "lowrank": {"k_len": 8},
    "shared_qk": {},
    "lsa": {},
}


def tokens(prefix: int, grid: tuple[int, int] = GRID, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, prefix + grid[0] * grid[1], DIM, generator=g)


def make_attn(attn_type: str, prefix: int, grid: tuple[int, int] = GRID, **opts) -> Attention:
    torch.manual_seed(0)
    kw = {**VARIANT_ARGS[attn_type], **opts}
    return ATTENTION_TYPES[attn_type](DIM, HEADS, grid_size=grid, num_prefix_tokens=prefix, **kw)


def dense_like(attn: Attention) -> Attention:
    """A dense Attention with the same weights (variants whose state dict is a dense one)."""
    dense = Attention(DIM, HEADS)
    dense.load_state_dict(attn.state_dict())
    return dense


def heads(t: torch.Tensor) -> torch.Tensor:
    B, N, _ = t.shape
    return t.view(B, N, HEADS, DIM // HEADS).transpose(1, 2)


def merge(attn: Attention, o: torch.Tensor) -> torch.Tensor:
    B, _, N, _ = o.shape
    return attn.proj(o.transpose(1, 2).reshape(B, N, DIM))


def micro(attn_type: str, attn_args: dict | None = None, **kwargs):
    torch.manual_seed(0)
    return timm.create_model("zoo_vit_micro_p4", attn_type=attn_type, attn_args=attn_args, **kwargs)


# ------------------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("prefix", [0, 2])
@pytest.mark.parametrize("attn_type", list(VARIANT_ARGS))
def test_shape_finite_and_every_param_gets_grad(attn_type, prefix):
    attn = make_attn(attn_type, prefix).train()
    x = tokens(prefix).requires_grad_(True)
    out = attn(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in attn.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("attn_type", ["window", "spatial_reduction", "lowrank", "shared_qk", "lsa"])
def test_context_is_rejected(attn_type):
    attn = make_attn(attn_type, 1)
    x = tokens(1)
    with pytest.raises(ValueError, match="context"):
        attn(x[:, :5], context=x)


@pytest.mark.parametrize("attn_type", ["window", "spatial_reduction", "lowrank"])
def test_grid_variants_reject_a_token_subset(attn_type):
    with pytest.raises(ValueError, match="full sequence"):
        make_attn(attn_type, 1)(tokens(1)[:, :-3])


# -------------------------------------------------------------------------------------------------------- window
@pytest.mark.parametrize("prefix", [0, 1, 3])
@pytest.mark.parametrize("window_size", [max(GRID), max(GRID) + 2])  # one exact window / one padded window
def test_window_covering_the_grid_equals_dense(window_size, prefix):
    attn = make_attn("window", prefix, window_size=window_size).eval()
    x = tokens(prefix)
    torch.testing.assert_close(attn(x), dense_like(attn)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefix", [0, 2])
def test_window_equals_dense_with_the_documented_mask(prefix):
    """Patch queries see prefix keys + their own (padded) window; prefix queries see everything."""
    ws = 4
    attn = make_attn("window", prefix, window_size=ws).eval()
    x = tokens(prefix)
    n_w = math.ceil(GRID[1] / ws)
    cell = torch.tensor([(i // GRID[1]) // ws * n_w + (i % GRID[1]) // ws for i in range(GRID[0] * GRID[1])])
    N = x.shape[1]
    mask = torch.ones(N, N, dtype=torch.bool)
    mask[prefix:, prefix:] = cell[:, None] == cell[None, :]
    q, k, v = attn.qkv(x).view(2, N, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
    ref = merge(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- spatial reduction
def test_spatial_reduction_ratio_one_equals_dense():
    attn = make_attn("spatial_reduction", 1, sr_ratio=1).eval()
    x = tokens(1)
    torch.testing.assert_close(attn(x), dense_like(attn)(x), rtol=1e-5, atol=1e-6)


def test_spatial_reduction_keys_are_prefix_plus_cell_means():
    r, P = 2, 1
    attn = make_attn("spatial_reduction", P, sr_ratio=r).eval()
    x = tokens(P)
    grid = x[:, P:].reshape(2, *GRID, DIM)
    cells = [grid[:, i : i + r, j : j + r].mean(dim=(1, 2)) for i in range(0, GRID[0], r) for j in range(0, GRID[1], r)]
    context = torch.cat([x[:, :P], torch.stack(cells, dim=1)], dim=1)  # edge cells average only what they cover
    assert context.shape[1] == P + math.ceil(GRID[0] / r) * math.ceil(GRID[1] / r)
    torch.testing.assert_close(attn(x), dense_like(attn)(x, context=context), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------------- lowrank
def test_lowrank_with_identity_projections_equals_dense():
    N = 1 + GRID[0] * GRID[1]
    attn = make_attn("lowrank", 1, k_len=N).eval()
    with torch.no_grad():
        attn.e_proj.copy_(torch.eye(N))
        attn.f_proj.copy_(torch.eye(N))
    dense = Attention(DIM, HEADS)
    dense.load_state_dict({k: v for k, v in attn.state_dict().items() if k not in ("e_proj", "f_proj")})
    x = tokens(1)
    torch.testing.assert_close(attn(x), dense(x), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------- shared QK
def test_shared_qk_layout_reference_and_determinism():
    attn = make_attn("shared_qk", 1).eval()
    assert attn.qkv.weight.shape == (2 * DIM, DIM)  # [qk; v]
    x = tokens(1)
    out = attn(x)
    torch.testing.assert_close(attn(x), out, rtol=0, atol=0)
    # Reformer: keys are the unit-normalised queries, no attention to self
    qk, v = attn.qkv(x).split(DIM, dim=-1)
    q, v = heads(qk), heads(v)
    mask = ~torch.eye(x.shape[1], dtype=torch.bool)
    torch.testing.assert_close(out, merge(attn, F.scaled_dot_product_attention(q, F.normalize(q, dim=-1), v, mask)))
    # and it is not dense attention with q's weights for both q and k
    dense = Attention(DIM, HEADS)
    state = attn.state_dict()
    for key in ("qkv.weight", "qkv.bias"):  # [qk; v] -> [qk; qk; v]
        state[key] = torch.cat([state[key][:DIM], state[key]])
    dense.load_state_dict(state)
    assert not torch.allclose(dense(x), out, atol=1e-4)


def test_shared_qk_lone_token_is_finite():
    attn = make_attn("shared_qk", 1)
    assert torch.isfinite(attn(tokens(1)[:, :1])).all()


def test_shared_qk_runs_in_routed_blocks():
    for router in ("linear", "cls_attn"):
        m = micro("shared_qk", routing={"capacity": 0.5, "router": router}).train()
        m(torch.randn(2, 1, 28, 28)).sum().backward()
        assert all(p.grad is not None for n, p in m.named_parameters() if ".router." not in n)


# ------------------------------------------------------------------------------------------- locality self-attention
def test_lsa_is_dense_attention_with_a_learned_scale_and_no_self_attention():
    attn = make_attn("lsa", 1).eval()
    with torch.no_grad():
        attn.log_scale.fill_(math.log(0.7))  # away from the dense default, so the scale is seen to be used
    x = tokens(1)
    q, k, v = (heads(t) for t in attn.qkv(x).split(DIM, dim=-1))
    scores = 0.7 * q @ k.transpose(-2, -1)
    scores = scores.masked_fill(torch.eye(x.shape[1], dtype=torch.bool), float("-inf"))
    torch.testing.assert_close(attn(x), merge(attn, scores.softmax(-1) @ v))
    # its state dict is a dense one plus the scale, which starts at the dense default head_dim ** -0.5
    fresh = make_attn("lsa", 1)
    assert set(fresh.state_dict()) == set(Attention(DIM, HEADS).state_dict()) | {"log_scale"}
    assert fresh.log_scale.exp().item() == pytest.approx((DIM // HEADS) ** -0.5)


def test_lsa_learns_its_scale_and_a_lone_token_is_finite():
    attn = make_attn("lsa", 0)
    attn(tokens(0)).square().sum().backward()
    assert attn.log_scale.grad is not None and attn.log_scale.grad.abs() > 0
    assert torch.isfinite(attn(tokens(0)[:, :1])).all()


def test_lsa_runs_in_routed_blocks_and_its_model_grows_preserving_function():
    m = micro("lsa", routing={"capacity": 0.5, "router": "cls_attn"}).train()
    m(torch.randn(2, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if ".router." not in n)
    m = micro("lsa").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for blk in m.blocks:  # distinct learned scales, so a widening that lost them would show
            blk.attn.log_scale.uniform_(-2.0, 0.0)
        ref = m(x)
        grow_embed_dim(m, 2 * m.embed_dim)
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)
        grow_heads(m, 2 * m.blocks[0].attn.num_heads)
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize(
    "attn_type,attn_args",
    [
        ("window", {"window_size": 4}),
        ("spatial_reduction", {"sr_ratio": 2}),
        ("lowrank", {"k_len": 32}),
        ("shared_qk", None),
    ],
)
def test_counted_flops_below_dense_and_match_analytical(attn_type, attn_args):
    """28 px, patch 2: a 14 x 14 grid + CLS = 197 tokens, the sequence length of a 224 px /16 ViT."""
    grid, P, D, hidden, depth = (14, 14), 1, 96, 384, 1
    x = torch.randn(1, 1, 28, 28)

    def counted(t, a):
        m = micro(t, a, patch_size=2, depth=depth).eval()
        return count_flops(m, x)

    total, per = counted(attn_type, attn_args)
    dense_total, dense_per = counted("dense", None)
    assert per["blocks.0.attn"] < dense_per["blocks.0.attn"] and total < dense_total
    expected_attn = attention_flops(attn_type, grid, P, D, attn_args=attn_args)
    stem_head = analytical_vit_flops(0, D, 197, hidden, 10, 2, 1, batch=1)
    expected = stem_head + depth * attention_block_flops(attn_type, grid, P, D, hidden, attn_args=attn_args)
    assert per["blocks.0.attn"] == pytest.approx(expected_attn, rel=0.02)
    assert total == pytest.approx(expected, rel=0.02)
    assert dense_per["blocks.0.attn"] == attention_flops("dense", grid, P, D)


# ------------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("attn_type", ["window", "spatial_reduction", "lowrank"])
@pytest.mark.parametrize("context", ["selected", "all"])
def test_routing_with_grid_attention_is_a_clear_error(attn_type, context):
    with pytest.raises(ValueError, match="cannot run in routed blocks"):
        micro(attn_type, routing={"capacity": 0.5, "context": context})
    m = micro(attn_type)
    with pytest.raises(ValueError, match="cannot run in routed blocks"):
        m.set_routing({"capacity": 0.5})
    assert m.model_args["routing"] is None  # nothing changed


def test_shared_qk_with_routing_context_all_is_a_clear_error():
    with pytest.raises(ValueError, match="context 'all'"):
        micro("shared_qk", routing={"capacity": 0.5, "context": "all"})


@pytest.mark.parametrize(
    "attn_type,attn_args,match",
    [
        ("flash", None, "attn_type must be one of"),
        ("window", {"sr_ratio": 2}, "unknown"),
        ("window", {"window_size": 0}, "positive integer"),
        ("lowrank", {"k_len": 4.0}, "positive integer"),
        ("shared_qk", {"window_size": 4}, "unknown"),
    ],
)
def test_invalid_attention_config(attn_type, attn_args, match):
    with pytest.raises(ValueError, match=match):
        micro(attn_type, attn_args)


def test_model_args_record_filled_defaults_and_are_json_safe():
    m = micro("window")
    assert m.model_args["attn_type"] == "window" and m.model_args["attn_args"] == {"window_size": 7}
    assert json.loads(json.dumps(m.model_args)) == m.model_args
    assert micro("dense").model_args["attn_args"] is None


def test_window_and_sr_state_dicts_are_dense_ones():
    dense = micro("dense").state_dict()
    for t, a in (("window", {"window_size": 4}), ("spatial_reduction", {"sr_ratio": 2})):
        micro(t, a).load_state_dict(dense, strict=True)
    assert micro("shared_qk").state_dict()["blocks.0.attn.qkv.weight"].shape == (2 * 96, 96)
    assert {"blocks.0.attn.e_proj", "blocks.0.attn.f_proj"} <= set(micro("lowrank", {"k_len": 16}).state_dict())


# --------------------------------------------------------------------------------------------- resolution, growth
@pytest.mark.parametrize(
    "attn_type,attn_args", [("window", {"window_size": 4}), ("spatial_reduction", {"sr_ratio": 2})]
)
def test_grid_attention_follows_resolution_growth(attn_type, attn_args):
    m = micro(attn_type, attn_args).eval()
    grow_resolution(m, 36)
    assert all(blk.attn.grid_size == (9, 9) for blk in m.blocks)
    assert torch.isfinite(m(torch.randn(1, 1, 36, 36))).all()


def test_lowrank_resolution_change_is_a_clear_error_and_changes_nothing():
    m = micro("lowrank", {"k_len": 16})
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="Linformer"):
        grow_resolution(m, 36)
    assert m.model_args["img_size"] == 28 and m.patch_embed.grid_size == (7, 7)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_lowrank_width_growth_preserves_function():
    # E and F act on the token axis, so widening the residual stream leaves them untouched
    m = micro("lowrank", {"k_len": 16}).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = m(x)
        grow_embed_dim(m, 2 * m.embed_dim)
        assert (m(x) - ref).abs().max().item() <= 1e-5


def test_shared_qk_head_growth_is_a_clear_error():
    m = micro("shared_qk")
    with pytest.raises(ValueError, match="shared_qk"):
        grow_heads(m, 4)


# ---------------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("attn_type", ["window", "spatial_reduction", "lowrank", "shared_qk", "lsa"])
def test_local_dir_round_trip(attn_type, tmp_path):
    m = micro(attn_type, VARIANT_ARGS[attn_type] or None).eval()
    folder = save_model_folder(m, tmp_path / "m")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(loaded.blocks[0].attn) is type(m.blocks[0].attn)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_variant_classes_share_the_constructor():
    for cls in (WindowAttention, SpatialReductionAttention, SharedQKAttention, LocalitySelfAttention):
        attn = cls(DIM, HEADS, True, 0.0, 0.0, None, GRID, 1)  # Attention's positional signature + grid, prefix
        assert attn.num_prefix_tokens == 1
