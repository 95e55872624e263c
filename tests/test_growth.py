"""Growth operators: exact function preservation, documented copies, current model_args, optimizer/EMA remapping."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import DropPath, resample_abs_pos_embed

import zoo  # noqa: F401  (registers the models)
from zoo.growth.operators import grow, grow_depth, grow_embed_dim, grow_heads, grow_mlp, grow_resolution
from zoo.growth.param_maps import ParamMap, load_state_by_name, optimizer_state_by_name, remap_optimizer, remap_tensors
from zoo.hub import save_model_folder
from zoo.nn.routing import RoutedBlock

CONFIGS = {
    "plain": {},
    "routed": {"routing": {"capacity": 0.5}},
    "layerscale_reg": {"init_values": 0.1, "reg_tokens": 1},
}


def make(depth: int = 2, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A 32-wide micro ViT in eval mode, with LayerNorm, LayerScale, bias and router weights moved off their init
    (ones / zeros / init_values) so that a wrongly mapped parameter changes the output."""
    torch.manual_seed(seed)
    model = timm.create_model("zoo_vit_micro_p4", embed_dim=32, depth=depth, num_heads=2, **kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "gamma" in name or "router" in name or "token" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def images(n: int = 3, size: int = 28) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


EXACT_SPECS = {
    "depth_zero": {"depth": 4},
    "mlp": {"mlp_hidden": 200},
    "heads": {"num_heads": 5},
    "embed_x2": {"embed_dim": 64},
    "composed": {"embed_dim": 64, "num_heads": 3, "mlp_hidden": 300, "depth": 3},
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_exact_function_preservation_and_maps_reproduce_weights(config, spec):
    model = make(**CONFIGS[config])
    x = images()
    before, old = model(x), state(model)
    maps = grow(model, EXACT_SPECS[spec])
    assert max_diff(model(x), before) <= 1e-5
    # the maps alone rebuild every mapped weight (what EMA / checkpoint remapping relies on)
    assert sorted(m.new for m in maps) == sorted(n for n, _ in model.named_parameters())
    remapped = remap_tensors(old, maps)
    for name, p in model.named_parameters():
        if name in remapped:
            assert torch.equal(remapped[name], p), name
    # model_args describe the grown architecture: a fresh build has exactly the same parameter shapes
    fresh = timm.create_model("zoo_vit_micro_p4", **model.model_args)
    assert {n: p.shape for n, p in fresh.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}


@pytest.mark.parametrize("config", CONFIGS)
def test_grown_model_saves_and_reloads_as_final_architecture(config, tmp_path):
    model = make(**CONFIGS[config])
    grow(model, {"embed_dim": 64, "num_heads": 3, "mlp_hidden": 200, "depth": 4})
    assert model.model_args["depth"] == 4 and model.model_args["embed_dim"] == 64
    assert model.model_args["num_heads"] == 3 and model.model_args["head_dim"] == 16
    assert model.num_features == model.head_hidden_size == 64 and len(model.feature_info) == 4
    save_model_folder(model, tmp_path / "grown")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'grown'}", pretrained=True).eval()
    x = images()
    assert max_diff(loaded(x), model(x)) <= 1e-6


def test_zero_blocks_are_identity_with_zero_branch_outputs():
    model = make(init_values=0.1)
    grow_depth(model, 3, op="zero")
    new = model.blocks[2]
    assert torch.all(new.ls1.gamma == 0) and torch.all(new.ls2.gamma == 0)
    assert new.attn.proj.weight.abs().sum() > 0  # LayerScale present: gamma = 0, proj keeps its init
    plain = make()
    grow_depth(plain, 3, op="zero")
    blk = plain.blocks[2]
    for lin in (blk.attn.proj, blk.mlp.fc2):
        assert torch.all(lin.weight == 0) and torch.all(lin.bias == 0)
    assert 0.01 < blk.mlp.fc1.weight.std().item() < 0.03 and torch.all(blk.mlp.fc1.bias == 0)
    assert torch.all(blk.norm1.weight == 1) and torch.all(blk.norm1.bias == 0)


@pytest.mark.parametrize(
    "op,depth,sources",
    [("stack", 5, [0, 1, 0, 1, 0]), ("interpolate", 5, [0, 0, 0, 1, 1]), ("interpolate", 4, [0, 0, 1, 1])],
)
def test_stack_and_interpolate_copy_documented_blocks(op, depth, sources):
    model = make()
    old = state(model)
    maps = {m.new: m for m in grow_depth(model, depth, op=op)}
    for j, s in enumerate(sources):
        for rest, p in model.blocks[j].named_parameters():
            assert torch.equal(p, old[f"blocks.{s}.{rest}"]), (j, rest)
            m = maps[f"blocks.{j}.{rest}"]
            assert m.old == f"blocks.{s}.{rest}"
            # the first copy of each old block is that block (moments kept); later copies are new entries
            assert (m.new_mask is None) == (sources.index(s) == j)


@pytest.mark.parametrize("op", ["stack", "interpolate"])
def test_source_supplies_copied_blocks_and_routers_follow_new_plan(op):
    model = make(routing={"capacity": 0.5})
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    ema_state, old = state(ema), state(model)
    maps = {m.new: m for m in grow_depth(model, 4, op=op, source=ema)}
    sources = [0, 1, 0, 1] if op == "stack" else [0, 0, 1, 1]
    assert [isinstance(b, RoutedBlock) for b in model.blocks] == [False, True, False, True]  # every_other at depth 4
    for j, s in enumerate(sources):
        blk = model.blocks[j]
        for rest, p in blk.named_parameters():
            if rest.startswith("router."):
                if s == 1:  # routed source: router copied
                    assert torch.equal(p, ema_state[f"blocks.1.{rest}"])
                else:  # dense source: router stays zero-init and is a brand-new parameter
                    assert torch.all(p == 0) and maps[f"blocks.{j}.{rest}"].old is None
            else:
                assert torch.equal(p, ema_state[f"blocks.{s}.{rest}"]), (j, rest)
    assert torch.equal(model.head.weight, old["head.weight"])  # non-block parameters stay the model's


def test_per_layer_capacity_list_is_extended_from_the_copied_block():
    model = make(routing={"capacity": [None, 0.5]})
    grow_depth(model, 3, op="zero")
    assert model.model_args["routing"]["capacity"] == [None, 0.5, 0.5]
    model = make(routing={"capacity": [None, 0.5]})
    grow_depth(model, 4, op="interpolate")
    assert model.model_args["routing"]["capacity"] == [None, None, 0.5, 0.5]
    assert [isinstance(b, RoutedBlock) for b in model.blocks] == [False, False, True, True]


def test_drop_path_rates_and_feature_info_follow_depth():
    model = make(drop_path_rate=0.1)
    grow_depth(model, 4, op="stack")
    assert len(model.feature_info) == 4 and model.feature_info[-1]["module"] == "blocks.3"
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)
    for i, want in enumerate([0.0, 0.1 / 3, 0.2 / 3, 0.1][1:], start=1):
        for dp in (model.blocks[i].drop_path1, model.blocks[i].drop_path2):
            assert isinstance(dp, DropPath) and dp.drop_prob == pytest.approx(want)


def test_embed_dim_non_multiple_and_noise_are_approximate_but_mapped():
    model = make()
    x = images()
    before, old = model(x), state(model)
    maps = grow_embed_dim(model, 48)  # 16 of 32 channels duplicated: LayerNorm statistics shift
    out = model(x)
    assert out.shape == before.shape and torch.isfinite(out).all()
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in remap_tensors(old, maps).items())
    model = make()
    maps = grow_mlp(model, 200, noise=0.1, generator=torch.Generator().manual_seed(0))
    w = model.blocks[0].mlp.fc1.weight
    assert torch.equal(w[:128], old["blocks.0.mlp.fc1.weight"])  # originals untouched, duplicates perturbed
    # noise is a value_scale, so the maps still reproduce the weights exactly
    assert torch.equal(remap_tensors(old, maps)["blocks.0.mlp.fc1.weight"], w)


def test_heads_split_fused_qkv_per_q_k_v():
    model = make()
    old = state(model)["blocks.0.attn.qkv.weight"]  # 2 heads x 16
    grow_heads(model, 3)
    new = model.blocks[0].attn.qkv.weight
    q, k, v = old.split(32)
    for part, (o, n) in enumerate(zip((q, k, v), new.split(48))):
        assert torch.equal(n[:32], o) and torch.equal(n[32:], o[:16]), part  # head 2 copies head 0 in q, k and v


def _adamw_state(model, steps: int = 2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(4, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return opt, optimizer_state_by_name(opt, model)


@pytest.mark.parametrize("mode", ["zero", "copy"])
def test_optimizer_remap_mlp_and_depth(mode):
    model = make()
    _, old_state = _adamw_state(model)
    maps = grow(model, {"mlp_hidden": 200, "depth": 3})  # round-robin: unit 128 + i copies unit i
    new_state = remap_optimizer(old_state, maps, mode=mode)
    assert not any(k.startswith("blocks.2.") for k in new_state)  # zero-op block: fresh state
    for name, st in new_state.items():
        assert torch.equal(st["step"], old_state[name]["step"])  # MSG: step count kept
    for key in ("exp_avg", "exp_avg_sq"):
        o1, n1 = old_state["blocks.1.mlp.fc1.weight"][key], new_state["blocks.1.mlp.fc1.weight"][key]
        o2, n2 = old_state["blocks.1.mlp.fc2.weight"][key], new_state["blocks.1.mlp.fc2.weight"][key]
        assert torch.equal(n1[:128], o1) and torch.equal(n2[:, :128], o2)  # kept bitwise
        if mode == "zero":
            assert torch.all(n1[128:] == 0) and torch.all(n2[:, 128:] == 0)
        else:  # duplicates copy their source's moments, without the Net2Net division
            assert torch.equal(n1[128:], o1[:72]) and torch.equal(n2[:, 128:], o2[:, :72])
        assert torch.equal(new_state["head.weight"][key], old_state["head.weight"][key])
    # install into a fresh optimizer over the grown model and keep training
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loaded = load_state_by_name(opt, model, new_state)
    assert set(loaded) == set(new_state)
    model(images()).sum().backward()
    opt.step()
    assert torch.equal(optimizer_state_by_name(opt, model)["blocks.2.norm1.weight"]["step"], torch.tensor(1.0))


def test_optimizer_remap_composed_widths_masks_both_dims():
    model = make()
    _, old_state = _adamw_state(model)
    maps = grow(model, {"embed_dim": 64, "mlp_hidden": 200})
    st = remap_optimizer(old_state, maps, mode="zero")["blocks.0.mlp.fc1.weight"]["exp_avg"]
    old = old_state["blocks.0.mlp.fc1.weight"]["exp_avg"]
    assert st.shape == (200, 64) and torch.equal(st[:128, :32], old)
    assert torch.all(st[128:] == 0) and torch.all(st[:, 32:] == 0)


def test_grow_resolution_resamples_values_and_moments():
    model = make(reg_tokens=1)
    _, old_state = _adamw_state(model)
    old = state(model)
    maps = grow_resolution(model, 32)  # patch 4: grid 7x7 -> 8x8
    assert model.pos_embed.shape == (1, 2 + 64, 32) and model.model_args["img_size"] == 32
    assert model(images(size=32)).shape == (3, 10)
    assert torch.equal(remap_tensors(old, maps)["pos_embed"], model.pos_embed)
    new_state = remap_optimizer(old_state, maps, mode="zero")
    pe_old, pe_new = old_state["pos_embed"], new_state["pos_embed"]
    assert pe_new["exp_avg"].shape == model.pos_embed.shape and torch.all(pe_new["exp_avg_sq"] >= 0)
    want = resample_abs_pos_embed(pe_old["exp_avg"], new_size=[8, 8], old_size=[7, 7], num_prefix_tokens=2)
    assert torch.equal(pe_new["exp_avg"], want)
    assert torch.equal(pe_new["exp_avg"][:, :2], pe_old["exp_avg"][:, :2])  # prefix tokens are not resampled
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    load_state_by_name(opt, model, new_state)
    model(images(size=32)).sum().backward()
    opt.step()


def test_resolution_composes_after_widening():
    model = make()
    old = state(model)
    maps = grow(model, {"embed_dim": 64, "img_size": 32})
    assert torch.equal(remap_tensors(old, maps)["pos_embed"], model.pos_embed)


def test_grow_carries_source_through_widening():
    model = make()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(2.0)
    ema_old = state(ema)
    maps = grow(model, {"embed_dim": 64, "depth": 4, "depth_op": "stack"}, source=ema)
    widened_ema = remap_tensors(ema_old, maps)
    for name, p in model.blocks.named_parameters():
        assert torch.equal(p, widened_ema[f"blocks.{name}"]), name


def test_shrinking_and_bad_specs_raise():
    model = make()
    for call in (
        lambda: grow_depth(model, 2),
        lambda: grow_depth(model, 1),
        lambda: grow_depth(model, 3, op="bogus"),
        lambda: grow_mlp(model, 64),
        lambda: grow_heads(model, 1),
        lambda: grow_embed_dim(model, 16),
        lambda: grow_resolution(model, 24),
        lambda: grow(model, {"width": 64}),
    ):
        with pytest.raises(ValueError):
            call()
    # a stage is validated as a whole before anything changes
    with pytest.raises(ValueError, match="depth"):
        grow(model, {"embed_dim": 64, "depth": 2})
    assert model.embed_dim == 32 and model.model_args["head_dim"] is None
    with pytest.raises(ValueError):
        ParamMap(new="x", old=None).map_value(torch.zeros(1))


@pytest.mark.parametrize("name", ["zoo_revvit_micro_p4", "zoo_msvit_micro_p2"])
def test_growth_refuses_families_without_support(name):
    model = timm.create_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NotImplementedError, match="does not support layer-wise growth"):
        grow(model, {"depth": 12})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
