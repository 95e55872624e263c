"""The dense baseline model (``zoo_vit_micro_conv_p4``) is a zoo model in every way: the growth, routing, freezing
and checkpointing features work on it as on the patch-stem models, and the ``baseline`` suite's numbers are computed
as the issue defines them."""

import pytest
import timm
import torch

import zoo  # noqa: F401
from zoo.bench.suites.baseline import (
    BASELINE_RECIPE,
    BUDGET_CAPABILITY,
    budget_keys,
    forward_flops_per_image,
    training_tflop,
)
from zoo.growth.operators import grow
from zoo.measure.flops import count_flops
from zoo.training.freezing import set_trainable_from
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path

NAME = "zoo_vit_micro_conv_p4"


def _model():
    torch.manual_seed(0)
    return timm.create_model(NAME).eval()


def _x(batch=4):
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_baseline_model_has_49_tokens_and_json_safe_args():
    m = _model()
    assert m.patch_embed.num_patches == 49 and m.patch_embed.grid_size == (7, 7)
    args = m.model_args
    assert args["stem"] == "early" and args["stem_width"] == 32
    rebuilt = timm.create_model("zoo_vit_micro_p4", **{k: v for k, v in args.items() if k != "routing"})
    rebuilt.load_state_dict(m.state_dict())  # model_args alone rebuild the architecture
    torch.testing.assert_close(rebuilt.eval()(_x()), m(_x()))


def test_depth_and_mlp_growth_keep_the_function():
    m = _model()
    x = _x()
    with torch.no_grad():
        before = m(x)
        grow(m, {"depth": 6, "depth_op": "zero", "mlp_hidden": 256})
        after = m(x)
    assert len(m.blocks) == 6 and m.blocks[0].mlp.fc1.out_features == 256
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_routing_conversion_at_capacity_one_keeps_the_function():
    m = _model()
    x = _x()
    with torch.no_grad():
        before = m(x)
        m.set_routing({"capacity": 1.0, "layers": "every_other"})
        after = m(x)
    assert sum(type(b).__name__ == "RoutedBlock" for b in m.blocks) == 2
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_frozen_stem_and_blocks_get_no_gradient():
    m = _model().train()
    set_trainable_from(m, 3)  # groups: 0 = stem (convs, BatchNorm, proj, cls and position embeddings), 1.. = blocks
    m(_x()).sum().backward()
    for name, p in m.named_parameters():
        frozen = name.startswith(("patch_embed", "pos_embed", "cls_token", "blocks.0.", "blocks.1."))
        assert (p.grad is None) == frozen, name


def test_activation_checkpointing_keeps_outputs_and_gradients():
    ref, ckpt = _model().train(), _model().train()
    ckpt.set_grad_checkpointing(True)
    x = _x()
    ref(x).sum().backward()
    ckpt(x).sum().backward()
    for (n, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_training_compute_is_three_forwards_per_image_seen():
    # the budget: the old baseline's 0.0278 GFLOP forward x 3 x 779k images is about 65 TFLOP
    assert training_tflop(0.0278e9, 779_000 // 128, 128) == pytest.approx(65.0, rel=0.01)
    recipe = load_recipe(resolve_recipe_path(BASELINE_RECIPE))
    assert recipe.model.name == NAME and recipe.data.val_split is None  # reported runs train on all 60k images
    fwd = forward_flops_per_image(BASELINE_RECIPE, [])
    counted, _ = count_flops(_model(), _x(1))
    assert fwd == pytest.approx(counted)


def test_budget_keys_check_seconds_only_on_the_budget_capability():
    runs = [{"acc": a, "wall_clock_s": w, "train_tflop": t} for a, w, t in [(0.92, 850, 40), (0.93, 880, 40)]]
    keys = budget_keys(runs, BUDGET_CAPABILITY)
    assert keys["acc_mean_pct"] == pytest.approx(92.5) and keys["wall_clock_s_max"] == 880
    assert keys["acc_ci95_lo_pct"] < 92.5 < keys["acc_ci95_hi_pct"] and keys["train_tflop_max"] == 40
    elsewhere = budget_keys(runs, "AVX2")
    assert "wall_clock_s_max" not in elsewhere and elsewhere["wall_clock_s_max_unbudgeted"] == 880
