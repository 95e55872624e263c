"""ZooRevViT: the reversible backward gives vanilla autograd's gradients without keeping per-block activations.

Models are 32 wide, 2 heads, 28x28 input with patch 4 (50 tokens), batch 2-4, so the whole file runs in seconds.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import timm
import torch

import zoo.models.zoo_revvit as revvit  # registers the zoo_revvit_* models
from zoo.hub import save_model_folder
from zoo.models.zoo_revvit import RevBlock, ZooRevViT
from zoo.training.freezing import set_trainable_from

SMALL = dict(embed_dim=32, num_heads=2)

# fp32, depth 12. Both paths run the same forward ops, so outputs are bit-identical; the gradients differ only
# because the reversible backward rebuilds each block's inputs as Y - F(X) in fp32 (one rounding, ~6e-8 relative to
# the stream, per stream per block) and that error reaches every block below. Measured: max|rev - vanilla| is about
# 4e-7 of max|grad| over all tensors. Per tensor we allow 1e-5 of the tensor's max |grad| (25x margin, and the
# ~1e-5 fp32 agreement the RevViT paper reports) plus rtol 1e-5; a missing term, an unrestored dropout mask or a
# wrong block order gives errors of order 1e-2 to 1.
FP32_RTOL, FP32_ATOL_REL = 1e-5, 1e-5
# bf16 autocast vs fp32: bf16 keeps 8 mantissa bits (unit roundoff 2^-9 = 2e-3) and rounds every matmul input; over
# 12 blocks the gradients move by ~1e-2 of their scale (measured 1.1e-2 of max|grad|). Loose bound: 5e-2 of max|grad|
# per tensor, 5e-2 relative.
BF16_RTOL, BF16_ATOL_REL = 5e-2, 5e-2
# bf16, reversible vs vanilla: with autocast re-entered in backward the recomputed branches are bit-identical to
# forward's, so the two agree to fp32 reconstruction error (measured 1e-7 of max|grad|). Without re-entry the
# recomputation runs in fp32, the rebuilt inputs are off by bf16 rounding, and the error is ~1e-2 (checked below).
# 1e-3 of max|grad| separates the two by 10x either way.
BF16_REV_ATOL_REL = 1e-3


def make(depth: int = 12, seed: int = 0, **kwargs) -> ZooRevViT:
    torch.manual_seed(seed)
    return timm.create_model("zoo_revvit_micro_p4", depth=depth, **{**SMALL, **kwargs})


def images(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def grads(
    model: ZooRevViT, vanilla: bool, x: torch.Tensor, amp: bool = False, seed: int = 5
) -> dict[str, torch.Tensor]:
    """Input and parameter gradients of a fixed loss, with the RNG seeded identically before the forward."""
    model.use_vanilla_backward = vanilla
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # same dropout / drop-path draws in both modes
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    # a loss that is not linear in the logits, so the head's gradient depends on the features
    out.float().square().sum().backward()
    g = {"input": x.grad}
    g.update({n: p.grad for n, p in model.named_parameters()})
    return g


def assert_grads_close(got: dict, ref: dict, rtol: float, atol_rel: float) -> None:
    """Every tensor: |got - ref| <= atol_rel * max|ref| + rtol * |ref| (atol scaled per tensor because gradient
    magnitudes differ by orders between the head and the bottom blocks)."""
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        assert r is not None and got[name] is not None, f"{name}: no gradient"
        atol = atol_rel * r.abs().max().item()
        torch.testing.assert_close(got[name], r, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def max_rel_err(got: dict, ref: dict) -> float:
    return max(((got[k] - r).abs().max() / r.abs().max()).item() for k, r in ref.items())


# ------------------------------------------------------------------------------------------------ gradients


def test_fp32_grads_equal_vanilla_depth12():
    model = make(depth=12).train()
    x = images()
    assert_grads_close(grads(model, False, x), grads(model, True, x), FP32_RTOL, FP32_ATOL_REL)


def test_fp32_grads_equal_vanilla_with_dropout_and_drop_path():
    model = make(depth=12, drop_path_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1).train()
    assert all(blk.stochastic for blk in model.blocks[1:])  # block 0 has drop path 0 but still proj dropout
    x = images()
    ref = grads(model, True, x)
    after_ref = torch.rand(4)  # the RNG stream after a vanilla step
    got = grads(model, False, x)
    after_rev = torch.rand(4)
    assert_grads_close(got, ref, FP32_RTOL, FP32_ATOL_REL)
    # recomputation replays the masks inside fork_rng: the caller's RNG stream is where vanilla training leaves it
    torch.testing.assert_close(after_rev, after_ref, rtol=0, atol=0)


def test_rng_restore_is_what_makes_dropout_grads_match(monkeypatch):
    """Negative control: with the RNG not restored in backward, the masks differ and so do the gradients."""
    model = make(depth=4, drop_path_rate=0.1, proj_drop_rate=0.1).train()
    x = images()
    ref = grads(model, True, x)
    monkeypatch.setattr(revvit, "_restored_rng", lambda state, device: contextlib.nullcontext())
    assert max_rel_err(grads(model, False, x), ref) > 1e-2


def test_bf16_autocast_grads_finite_and_close_to_fp32():
    model = make(depth=12).train()
    x = images()
    ref32 = grads(model, True, x)
    rev16 = grads(model, False, x, amp=True)
    for name, g in rev16.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
    assert_grads_close(rev16, ref32, BF16_RTOL, BF16_ATOL_REL)
    # and close to vanilla under the same autocast: the backward recomputed in bf16, not fp32
    van16 = grads(model, True, x, amp=True)
    assert_grads_close(rev16, van16, 0.0, BF16_REV_ATOL_REL)


def test_autocast_reentry_is_what_makes_bf16_grads_match(monkeypatch):
    """Negative control: without re-entering autocast in backward, bf16 gradients drift from vanilla's."""
    model = make(depth=12).train()
    x = images()
    van16 = grads(model, True, x, amp=True)
    monkeypatch.setattr(revvit, "_autocast", lambda state, cache: contextlib.ExitStack())
    assert max_rel_err(grads(model, False, x, amp=True), van16) > BF16_REV_ATOL_REL


def test_frozen_prefix_grads_equal_vanilla():
    """``no_grad_prefix`` (set by zoo.training.freezing): stem and leading blocks without a graph, rest reversible."""
    model = make(depth=6).train()
    set_trainable_from(model, 3)  # freezes the stem and blocks 0-1
    assert model.no_grad_prefix == 2 and not model.blocks[0].training
    x = images(2)
    x.requires_grad_(False)

    def param_grads(vanilla: bool) -> dict[str, torch.Tensor]:
        model.use_vanilla_backward = vanilla
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    got, ref = param_grads(False), param_grads(True)
    assert "blocks.2.attn.qkv.weight" in ref and "blocks.1.attn.qkv.weight" not in ref
    assert_grads_close(got, ref, FP32_RTOL, FP32_ATOL_REL)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# ---------------------------------------------------------------------------------------------------- memory


def saved_by_forward(model: ZooRevViT, x: torch.Tensor) -> tuple[int, int]:
    """(count, bytes) of the tensors autograd saves for backward during one training forward."""
    count, nbytes = 0, 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count, nbytes
        count += 1
        nbytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return count, nbytes


@pytest.mark.parametrize("drop", [0.0, 0.1])
def test_saved_activations_do_not_grow_with_depth(drop):
    x = images(2)
    kw = dict(drop_path_rate=drop, proj_drop_rate=drop)
    shallow = saved_by_forward(make(depth=4, **kw).train(), x)
    deep = saved_by_forward(make(depth=12, **kw).train(), x)
    assert shallow == deep, (shallow, deep)
    # the vanilla path over the same blocks does keep every block's activations (the check is not vacuous)
    van = make(depth=4, use_vanilla_backward=True, **kw).train()
    assert saved_by_forward(van, x)[1] > 2 * shallow[1]


def test_flop_counter_sees_one_extra_forward_of_the_blocks():
    """zoo.measure.flops (FlopCounterMode + module hooks) runs through the custom backward, and the reversible step
    costs
    exactly the vanilla step plus one recomputation of every block's forward."""
    from zoo.measure.flops import count_flops

    model = make(depth=3).train()
    x = images(2)
    _, fwd = count_flops(model, x)
    rev, _ = count_flops(model, x, loss_fn=lambda out: out.sum())
    model.use_vanilla_backward = True
    van, _ = count_flops(model, x, loss_fn=lambda out: out.sum())
    assert rev - van == sum(fwd[f"blocks.{i}"] for i in range(3)) > 0


def test_no_grad_forward_is_a_plain_loop_with_equal_output():
    model = make(depth=4).eval()
    x = images(2)
    with torch.no_grad():
        plain = model(x)
    out = model(x.requires_grad_(True))  # grad enabled: through RevStackFunction
    assert plain.grad_fn is None and out.grad_fn is not None
    torch.testing.assert_close(out, plain, rtol=0, atol=0)


def test_block_inverts():
    torch.manual_seed(0)
    blk = RevBlock(dim=32, num_heads=2).eval()
    x1, x2 = torch.randn(2, 2, 50, 32).unbind(0)
    r1, r2 = blk.invert(*blk(x1, x2))
    torch.testing.assert_close(r1, x1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r2, x2, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ timm conformance


def test_registered_sizes_and_cfgs():
    names = set(timm.list_models("zoo_revvit_*"))
    assert names == {"zoo_revvit_micro_p4", "zoo_revvit_mini_p4", "zoo_revvit_small_p16"}
    shapes = {
        "zoo_revvit_micro_p4": (96, 6, 3),
        "zoo_revvit_mini_p4": (192, 12, 3),
        "zoo_revvit_small_p16": (384, 12, 6),
    }
    for name, (dim, depth, heads) in shapes.items():
        with torch.device("meta"):  # construction only: skip allocating and initialising the weights
            m = timm.create_model(name)
        a = m.model_args
        assert (a["embed_dim"], a["depth"], a["num_heads"]) == (dim, depth, heads), name
        for key in ("input_size", "mean", "std", "num_classes", "first_conv", "classifier"):
            assert key in m.pretrained_cfg, (name, key)
    assert timm.create_model("zoo_revvit_micro_p4").pretrained_cfg["input_size"] == (1, 28, 28)


def test_forward_batch1_and_every_param_gets_grad():
    model = make(depth=3, drop_path_rate=0.1, init_values=1e-5, global_pool="avg", reg_tokens=1).train()
    out = model(images(1))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


def test_reset_classifier_features_and_groups():
    model = make(depth=3).eval()
    x = images(1)
    model.reset_classifier(7)
    assert model(x).shape == (1, 7)
    model.reset_classifier(0, global_pool="avg")
    assert model(x).shape == (1, model.num_features) and model.model_args["global_pool"] == "avg"
    assert model.forward_features(x).shape == (1, 50, 32)
    final, feats = model.forward_intermediates(x, indices=2)
    assert len(feats) == 2 and feats[0].shape == (1, 32, 7, 7)
    torch.testing.assert_close(final, model.forward_features(x))
    fm = timm.create_model("zoo_revvit_micro_p4", features_only=True, out_indices=(1, 3))
    assert [f.shape for f in fm(images(2))] == [torch.Size([2, 96, 7, 7])] * 2
    model.set_grad_checkpointing(True)  # no-op: reversibility already bounds activation memory
    assert model.grad_checkpointing is False
    from zoo.training.freezing import layer_groups

    # same grouping as ZooViT: stem, one group per block (final norm joins the last), head on top
    groups = layer_groups(make(depth=3))  # a fresh model: the one above has no head any more
    vit_groups = layer_groups(timm.create_model("zoo_vit_micro_p4", depth=3, **SMALL))
    assert [len(g) for g in groups] == [len(g) for g in vit_groups] and len(groups) == 3 + 2
    assert (
        "blocks.0.norm1.weight" in groups[1]
        and "norm.weight" in groups[3]
        and groups[4] == ["head.weight", "head.bias"]
    )


def test_model_args_json_safe_and_local_dir_round_trip(tmp_path):
    model = make(depth=3, drop_path_rate=0.1, init_values=1e-5).eval()
    assert json.loads(json.dumps(model.model_args)) == model.model_args
    assert "use_vanilla_backward" not in model.model_args  # a runtime switch, not architecture
    x = images(2)
    folder = save_model_folder(model, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "zoo_revvit_micro_p4" and cfg["model_args"]["depth"] == len(model.blocks)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert isinstance(loaded, ZooRevViT) and loaded.model_args == model.model_args
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
