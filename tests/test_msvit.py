"""ZooMSViT: stage shapes and token counts, patch merging, gradients, checkpointing, layer groups, FLOPs, round
trips, the clear errors for ZooViT-only features, and a short Fashion-MNIST run well above chance.

Most tests use a 32/64-wide, 1+1-block version of zoo_msvit_micro_p2 (28x28 input, patch 2: 14x14 then 7x7
tokens), so the file runs in seconds; the registered sizes are checked as built (on the meta device) and the
224-px family at 64 px (16 -> 8 -> 4 -> 2 tokens per side).
"""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from zoo.data.fashion_mnist import FASHION_MNIST_MEAN as FMNIST_MEAN
from zoo.data.fashion_mnist import FASHION_MNIST_STD as FMNIST_STD
from zoo.hub import load_model, save_model_folder
from zoo.measure.flops import count_flops, vit_block_flops
from zoo.models.zoo_msvit import MergeBlock, PatchMerging, ZooMSViT, stage_grid_sizes
from zoo.training.freezing import layer_groups, set_trainable_from

SMALL = dict(embed_dims=[32, 64], depths=[1, 1], num_heads=[1, 2])


def make(seed: int = 0, **kwargs) -> ZooMSViT:
    torch.manual_seed(seed)
    return timm.create_model("zoo_msvit_micro_p2", **{**SMALL, **kwargs})


def images(batch: int = 2, side: int = 28, chans: int = 1) -> torch.Tensor:
    return torch.randn(batch, chans, side, side, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ registry, shapes
def test_registered_sizes_and_cfgs():
    assert set(timm.list_models("zoo_msvit_*")) == {"zoo_msvit_micro_p2", "zoo_msvit_tiny_p4"}
    expect = {
        # name: (embed_dims, depths, num_heads, stage grids, num_classes, input_size)
        "zoo_msvit_micro_p2": ([64, 128], [2, 4], [2, 4], [(14, 14), (7, 7)], 10, (1, 28, 28)),
        "zoo_msvit_tiny_p4": (
            [64, 128, 256, 512], [1, 1, 3, 1], [2, 4, 8, 16], [(56, 56), (28, 28), (14, 14), (7, 7)], 1000,
            (3, 224, 224),
        ),
    }  # fmt: skip
    for name, (dims, depths, heads, grids, classes, size) in expect.items():
        with torch.device("meta"):  # construction only
            m = timm.create_model(name)
        a = m.model_args
        assert (a["embed_dims"], a["depths"], a["num_heads"]) == (dims, depths, heads), name
        assert a["depth"] == sum(depths) == len(m.blocks), name
        assert m.grid_sizes == grids and m.num_classes == classes and m.num_features == dims[-1], name
        cfg = m.pretrained_cfg
        assert cfg["input_size"] == size and cfg["num_classes"] == classes, name
        for key in ("mean", "std", "first_conv", "classifier"):
            assert key in cfg, (name, key)
        assert len(cfg["mean"]) == len(cfg["std"]) == size[0], name
        # the first block of every later stage merges; no other block does
        starts = {sum(depths[:s]) for s in range(1, len(depths))}
        assert {i for i, b in enumerate(m.blocks) if isinstance(b, MergeBlock)} == starts, name


@pytest.mark.parametrize(
    "name,kwargs,side,chans,dims,grids,reductions",
    [
        ("zoo_msvit_micro_p2", {}, 28, 1, [64, 128], [(14, 14), (7, 7)], [2, 4]),
        ("zoo_msvit_tiny_p4", {"img_size": 64}, 64, 3, [64, 128, 256, 512], [(16, 16), (8, 8), (4, 4), (2, 2)],
         [4, 8, 16, 32]),
    ],
    ids=["micro", "tiny@64"],
)  # fmt: skip
def test_stage_shapes_token_counts_and_feature_info(name, kwargs, side, chans, dims, grids, reductions):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x = images(2, side, chans)
    assert model.grid_sizes == grids
    assert [f["num_chs"] for f in model.feature_info] == dims
    assert [f["reduction"] for f in model.feature_info] == reductions
    assert [f["module"] for f in model.feature_info] == [f"blocks.{e}" for e in model.stage_ends]
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        assert [tuple(f.shape) for f in feats] == [(2, c, h, w) for c, (h, w) in zip(dims, grids)]
        # the token count drops 4x per stage: N_s = N_0 / 4**s
        counts = [t.shape[1] for t in tokens]
        assert counts == [h * w for h, w in grids] and all(a == 4 * b for a, b in zip(counts, counts[1:]))
        torch.testing.assert_close(final, model.forward_features(x))
        assert final.shape == (2, grids[-1][0] * grids[-1][1], dims[-1])
        assert model.forward_head(final, pre_logits=True).shape == (2, dims[-1])
        # stage indices: an int takes the last n stages, negatives count from the end, stop_early skips the rest
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        torch.testing.assert_close(last[0], feats[-1])
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(first[0], feats[0])
        normed = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(normed[0], final)
    fm = timm.create_model(name, features_only=True, **kwargs)
    assert fm.feature_info.reduction() == reductions
    assert [f.shape[1:] for f in fm(x)] == [torch.Size([c, h, w]) for c, (h, w) in zip(dims, grids)]


def test_patch_merging_is_swins_and_pads_odd_grids():
    torch.manual_seed(0)
    merge = PatchMerging(4, 8, (6, 4))
    x = torch.randn(2, 6 * 4, 4)
    g = x.view(2, 6, 4, 4)
    # Swin's concatenation: x0 = [0::2, 0::2], x1 = [1::2, 0::2], x2 = [0::2, 1::2], x3 = [1::2, 1::2]
    cat = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], dim=-1)
    torch.testing.assert_close(merge(x), merge.reduction(merge.norm(cat.reshape(2, 3 * 2, 16))), rtol=0, atol=0)
    # odd grid: zero-padded at the bottom/right, ceil(H/2) x ceil(W/2) tokens
    odd, even = PatchMerging(4, 8, (5, 3)), PatchMerging(4, 8, (6, 4))
    even.load_state_dict(odd.state_dict())
    x = torch.randn(2, 5 * 3, 4)
    padded = F.pad(x.view(2, 5, 3, 4), (0, 0, 0, 1, 0, 1)).reshape(2, 6 * 4, 4)
    assert odd.out_grid_size == (3, 2) and odd(x).shape == (2, 6, 8)
    torch.testing.assert_close(odd(x), even(padded), rtol=0, atol=0)
    with pytest.raises(ValueError, match="5x3 grid"):
        odd(torch.randn(2, 16, 4))
    assert stage_grid_sizes((14, 14), 3) == [(14, 14), (7, 7), (4, 4)]
    # a third stage on the 7x7 grid: merged through padding to 8x8
    model = make(embed_dims=[16, 32, 64], depths=[1, 1, 1], num_heads=[1, 2, 4]).eval()
    assert model.grid_sizes == [(14, 14), (7, 7), (4, 4)]
    with torch.no_grad():
        assert model.forward_features(images()).shape == (2, 16, 64)


# ---------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"drop_path_rate": 0.1, "init_values": 1e-5, "proj_drop_rate": 0.1, "drop_rate": 0.1},
        {"attn_type": "window", "attn_args": {"window_size": 4}},
        {"attn_type": "spatial_reduction"},
        {"stem": "conv"},
        {"embed_dims": [16, 32, 64], "depths": [1, 2, 1], "num_heads": [1, 2, 4]},
    ],
    ids=["dense", "regularised", "window", "spatial_reduction", "conv_stem", "three_stages_odd_grid"],
)
def test_gradient_reaches_every_parameter(kwargs):
    model = make(**kwargs).train()
    x = images().requires_grad_(True)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    assert x.grad is not None and x.grad.abs().sum() > 0


def _output_and_grads(model: ZooMSViT, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.square().sum().backward()  # not linear in the logits: the head's gradient depends on the features
    return out.detach(), {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize("every,policy", [(1, "full"), (2, "full"), (3, "full"), (1, "selective")])
def test_grad_checkpointing_same_outputs_and_gradients(every, policy):
    model = make(depths=[2, 2]).train()  # no dropout: both runs are deterministic
    x = images()
    ref_out, ref = _output_and_grads(model, x)
    calls = []
    # a pre-hook: non-reentrant recomputation stops early, once the saved tensors are rebuilt (no post-hook)
    hook = model.blocks[2].downsample.register_forward_pre_hook(lambda *_: calls.append(1))  # block 2's merge
    model.set_grad_checkpointing(True, every=every, policy=policy)
    out, got = _output_and_grads(model, x)
    hook.remove()
    # block 2 is checkpointed when every divides 2: its patch merging runs again in backward
    assert len(calls) == (2 if 2 % every == 0 else 1)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        torch.testing.assert_close(got[name], r, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(ValueError, match="policy"):
        model.set_grad_checkpointing(True, policy="bogus")


# ------------------------------------------------------------------------------------------- groups and freezing
def test_layer_groups_cover_every_parameter_once():
    model = make(depths=[2, 2])
    groups = layer_groups(model)
    names = [n for g in groups for n in g]
    assert len(names) == len(set(names)) and set(names) == {n for n, _ in model.named_parameters()}
    assert len(groups) == len(model.blocks) + 2  # stem, one per block, head
    assert set(groups[0]) == {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in range(len(model.blocks)):
        assert {n.split(".")[1] for n in groups[i + 1] if n.startswith("blocks.")} == {str(i)}
    # the merge is part of the block that starts the stage; the final norm joins the last block; head on top
    assert "blocks.2.downsample.reduction.weight" in groups[3] and "blocks.2.attn.qkv.weight" in groups[3]
    assert "norm.weight" in groups[4] and groups[-1] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("first_trainable", [3, 4])
def test_frozen_prefix_across_a_merge(first_trainable):
    # group 3 is block 2 (the MergeBlock): trainable from 3 keeps the merge training, from 4 freezes it too
    model = make(depths=[2, 2])
    set_trainable_from(model, first_trainable)
    model.train()
    assert model.no_grad_prefix == first_trainable - 1
    assert not model.blocks[first_trainable - 2].training and model.blocks[first_trainable - 1].training
    model(images()).sum().backward()
    frozen = {n for g in layer_groups(model)[:first_trainable] for n in g}
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n in frozen), n


# ------------------------------------------------------------------------------------ FLOPs, sizes, round trips
def test_flop_counter_counts_every_matmul():
    model = make(depths=[2, 2]).eval()
    b, (c0, c1), classes = 2, SMALL["embed_dims"], 10
    n0, n1 = 14 * 14, 7 * 7
    expected = 2 * n0 * (1 * 2 * 2) * c0  # stem: the patch conv is one matmul per patch
    expected += 2 * vit_block_flops(n0, c0, 2 * c0) + 2 * vit_block_flops(n1, c1, 2 * c1)  # MLP ratio 2
    expected += 2 * n1 * (4 * c0) * c1  # patch merging: 4C -> C' on the merged tokens
    expected += 2 * c1 * classes  # head on the pooled feature
    total, per_module = count_flops(model, images(b))
    assert total == b * expected
    assert per_module["blocks.2.downsample"] == b * 2 * n1 * (4 * c0) * c1
    train_total, _ = count_flops(model.train(), images(b), loss_fn=lambda out: out.sum())
    assert train_total > 2 * total


def test_set_input_size_follows_every_stage():
    model = make(attn_type="spatial_reduction").eval()
    model.set_input_size(56)
    assert model.grid_sizes == [(28, 28), (14, 14)] and model.model_args["img_size"] == 56
    assert model.blocks[1].downsample.grid_size == (28, 28) and model.blocks[1].attn.grid_size == (14, 14)
    fresh = make(img_size=56, attn_type="spatial_reduction").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(images(side=56)), fresh(images(side=56)), rtol=0, atol=0)
    lowrank = make(attn_type="lowrank", attn_args={"k_len": 8})
    before = {k: v.clone() for k, v in lowrank.state_dict().items()}
    with pytest.raises(ValueError, match="lowrank"):
        lowrank.set_input_size(56)
    assert lowrank.grid_sizes == [(14, 14), (7, 7)] and lowrank.model_args["img_size"] == 28
    assert all(torch.equal(before[k], v) for k, v in lowrank.state_dict().items())


def test_model_args_json_safe_and_round_trips(tmp_path):
    model = make(drop_path_rate=0.1, init_values=1e-5, attn_type="window", attn_args={"window_size": 4}).eval()
    assert json.loads(json.dumps(model.model_args)) == model.model_args
    assert model.model_args["attn_args"] == {"window_size": 4}
    folder = save_model_folder(model, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "zoo_msvit_micro_p2" and cfg["model_args"] == model.model_args
    assert cfg["pretrained_cfg"]["input_size"] == [1, 28, 28] and cfg["num_features"] == 64
    x = images()
    with torch.no_grad():
        ref = model(x)
        for loaded in (timm.create_model(f"local-dir:{folder}", pretrained=True), load_model(f"local-dir:{folder}")):
            assert isinstance(loaded, ZooMSViT) and loaded.model_args == model.model_args
            torch.testing.assert_close(loaded.eval()(x), ref, rtol=0, atol=0)


def test_zoovit_only_features_are_clear_errors():
    with pytest.raises(ValueError, match="routing"):
        make(routing={"capacity": 0.5})
    model = make()
    model.set_routing(None)  # already dense: a no-op
    with pytest.raises(NotImplementedError, match="routing"):
        model.set_routing({"capacity": 0.5, "layers": "all"})
    with pytest.raises(ValueError, match="sum\\(depths\\)"):
        make(depth=6)
    with pytest.raises(ValueError, match="'avg'"):
        make(global_pool="token")
    with pytest.raises(ValueError, match="'avg'"):
        model.reset_classifier(3, global_pool="token")
    with pytest.raises(ValueError, match="num_heads has 3 entries"):
        make(num_heads=[1, 2, 4])
    with pytest.raises(ValueError, match="multiple of patch_size"):
        make(img_size=29)
    # growth: zoo.growth.operators needs the single width ZooViT has; it refuses clearly, before changing anything
    from zoo.growth.operators import grow

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NotImplementedError, match="does not support layer-wise growth"):
        grow(model, {"depth": 4})
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------- training
@pytest.mark.slow  # about a minute of training; the family's contract tests stay in the default suite
def test_short_training_clearly_beats_chance(fmnist):
    # 2048 training images, 3 epochs (192 steps of 32) of the small 1+1-block model, evaluated on 1000 test images.
    # Chance is 10%; measured 50-56% over seeds 0-2 (about 7 s on one thread). 40% is far beyond what a model whose
    # merge, position embedding or pooling were broken (or whose gradient missed a stage) would reach this quickly.
    def prep(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - FMNIST_MEAN[0]) / FMNIST_STD[0]

    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(fmnist["train_y"]), generator=g)[:2048]
    x_train, y_train = prep(fmnist["train_x"][idx]), fmnist["train_y"][idx]
    x_test, y_test = prep(fmnist["test_x"][:1000]), fmnist["test_y"][:1000]
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=0.004, weight_decay=0.05)
    batch, epochs, lr = 32, 3, 0.004
    total, step = epochs * (len(idx) // batch), 0
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(idx), generator=g)
        for i in range(0, len(idx) - batch + 1, batch):
            b = perm[i : i + batch]
            for group in opt.param_groups:  # 10 warm-up steps, then cosine decay
                group["lr"] = lr * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x_train[b]), y_train[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    assert acc >= 0.40, acc
