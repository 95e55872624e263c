"""Registry-driven conformance: every zoo_* model (and routed variants) behaves like a timm model.

Mirrors timm's own model tests: forward at batch 1 without NaN, backward with every parameter receiving a gradient,
output unchanged with gradient checkpointing (rtol 1e-4, atol 1e-5), reset_classifier, and a save -> local-dir: ->
create_model round trip with equal outputs.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from zoo.hub import save_model_folder

ZOO_MODELS = timm.list_models("zoo_*")
# routed and otherwise-optioned variants are part of the registry surface that contributors' files must pass too
VARIANTS = [(name, {}) for name in ZOO_MODELS] + [
    ("zoo_vit_micro_p4", {"routing": {"capacity": 0.25, "layers": "every_other"}}),
    ("zoo_vit_micro_p4", {"routing": {"capacity": 0.5, "layers": "all", "router": "cls_attn"}}),
    ("zoo_vit_micro_p4", {"routing": {"capacity": 0.5, "layers": [0, 2], "context": "all"}}),
    ("zoo_vit_micro_p4", {"global_pool": "avg", "reg_tokens": 2, "init_values": 1e-5}),
    # efficient attention (zoo.nn.attention): window 4 pads the 7 x 7 grid to 8 x 8
    ("zoo_vit_micro_p4", {"attn_type": "window", "attn_args": {"window_size": 4}}),
    ("zoo_vit_micro_p4", {"attn_type": "spatial_reduction", "attn_args": {"sr_ratio": 2}}),
    ("zoo_vit_micro_p4", {"attn_type": "lowrank", "attn_args": {"k_len": 16}}),
    ("zoo_vit_micro_p4", {"attn_type": "shared_qk"}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)]


# 224-px families are checked at 64 px: the same code paths at a fraction of the cost (full size: test_parity.py)
SMALL_INPUT = {"zoo_vit_tiny_p16": 64, "zoo_vit_small_p16": 64, "zoo_vit_base_p16": 64, "zoo_revvit_small_p16": 64}


def make(name: str, kwargs: dict):
    torch.manual_seed(0)
    if name in SMALL_INPUT:
        kwargs = {"img_size": SMALL_INPUT[name], **kwargs}
    m = timm.create_model(name, **kwargs)
    if "routing" in kwargs:  # routers start at zero; perturb them so gradients and selection are non-trivial
        with torch.no_grad():
            for n, p in m.named_parameters():
                if ".router." in n:
                    p.normal_(0, 0.02)
    return m


def example_input(model, batch: int = 1) -> torch.Tensor:
    c, s = model.model_args["in_chans"], model.model_args["img_size"]
    return torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(1))


def test_registry_lists_all_families():
    expected = {"zoo_vit_tiny_p16", "zoo_vit_small_p16", "zoo_vit_base_p16", "zoo_vit_micro_p4", "zoo_vit_mini_p4",
                "zoo_vit_micro_p7", "zoo_revvit_micro_p4", "zoo_revvit_mini_p4", "zoo_revvit_small_p16",
                "zoo_msvit_micro_p2", "zoo_msvit_tiny_p4"}  # fmt: skip
    assert expected <= set(ZOO_MODELS)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_forward_backward_every_param_gets_grad(name, kwargs):
    model = make(name, kwargs).train()
    x = example_input(model, batch=2)
    out = model(x)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_grad_checkpointing_same_output(name, kwargs):
    model = make(name, kwargs).eval()
    x = example_input(model)
    with torch.no_grad():
        ref = model(x)
    model.set_grad_checkpointing(True)
    x.requires_grad_(True)
    out = model(x)  # grad enabled, so checkpointing is really used
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_reset_classifier_and_features(name, kwargs):
    model = make(name, kwargs).eval()
    x = example_input(model)
    model.reset_classifier(7)
    assert model(x).shape == (1, 7)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    feats = model.forward_features(x)
    assert feats.shape[-1] == model.num_features


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_local_dir_round_trip(name, kwargs, tmp_path):
    model = make(name, kwargs).eval()
    x = example_input(model)
    folder = save_model_folder(model, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == name and cfg["model_args"]["depth"] == len(model.blocks)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_default_cfg_keys():
    for name in ZOO_MODELS:
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
        for key in ("input_size", "mean", "std", "num_classes", "first_conv", "classifier"):
            assert key in cfg, (name, key)


def test_model_args_are_json_safe():
    m = timm.create_model("zoo_vit_micro_p4", routing={"capacity": 0.25})
    assert json.loads(json.dumps(m.model_args)) == m.model_args


def test_features_only_getter():
    m = timm.create_model("zoo_vit_micro_p4", features_only=True, out_indices=(1, 3))
    feats = m(torch.randn(2, 1, 28, 28))
    assert [f.shape for f in feats] == [torch.Size([2, 96, 7, 7])] * 2


# ------------------------------------------------------------------------------------- the contributed-family contract
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_every_family_meets_the_contract_and_trains_a_step_with_each_declared_feature(name):
    """One optimizer step per registered model: plain, with the bottom half frozen (the frozen blocks must run
    without a graph, or freezing saves nothing), and with routing and growth where the family declares them."""
    from zoo.growth.operators import grow
    from zoo.models.contract import check_zoo_model
    from zoo.training.freezing import set_trainable_from

    def step(m):
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        loss = m.train()(example_input(m, 2)).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)

    m = make(name, {})
    check_zoo_model(m)
    step(m)

    m = make(name, {})
    half = len(m.blocks) // 2
    set_trainable_from(m, 1 + half)  # the stem and blocks[:half] frozen
    graphs = []

    def record(mod, inputs, out):  # reversible blocks return their two streams
        graphs.append((out[0] if isinstance(out, tuple) else out).requires_grad)

    hooks = [b.register_forward_hook(record) for b in m.blocks]
    step(m)
    for h in hooks:
        h.remove()
    assert graphs[:half] == [False] * half, f"{name}: frozen blocks built an autograd graph"
    assert all(p.grad is None for p in m.blocks[0].parameters())

    if getattr(m, "supports_routing", False):
        m = make(name, {})
        m.set_routing({"capacity": 0.5, "layers": "every_other"})
        check_zoo_model(m)
        step(m)
    if getattr(m, "supports_growth", False):
        m = make(name, {})
        grow(m, {"depth": len(m.blocks) + 1})
        check_zoo_model(m)
        step(m)


def test_a_family_missing_a_piece_fails_at_build_naming_it():
    from zoo.models.contract import ContractError, check_zoo_model

    class Mixer(torch.nn.Module):  # what a contributor might write first
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
            self.model_args = {"img_size": "28", "in_chans": 1, "depth": 1}

        def forward_features(self, x):
            return x

        def forward_head(self, x):
            return x

        def reset_classifier(self, n):
            pass

    with pytest.raises(ContractError, match=r"Mixer: missing timm interface method\(s\) \['group_matcher'\]"):
        check_zoo_model(Mixer())
    Mixer.group_matcher = lambda self, coarse=False: {}
    with pytest.raises(ContractError, match="img_size"):
        check_zoo_model(Mixer())
