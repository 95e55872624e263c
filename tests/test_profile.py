"""zoo.measure.profile / zoo.measure.flops: counted FLOPs against analytical counts, memory tracking, MFU and the
profile dict."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from zoo.measure.flops import (
    SDPA_CPU_FLOP_MAPPING,
    analytical_routed_vit_flops,
    analytical_vit_flops,
    count_flops,
    sdpa_cpu_backward_flop,
    sdpa_cpu_flop,
)
from zoo.measure.profile import format_profile, measure_gemm_peak, measure_train_memory, profile_model
from zoo.nn.attention import Attention

ROUTING = dict(capacity=0.25, layers="every_other")
KEYS = {
    "params", "trainable_params", "flops_fwd", "flops_train_step", "peak_mem_train_bytes", "mem_breakdown",
    "mem_method", "train_img_per_s", "infer_img_per_s", "train_step_s", "gemm_peak_flops", "mfu", "batch",
    "precision", "device", "blocks",
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests check correctness, not speed: one thread avoids OpenMP spin-waits on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _shape_args(model) -> dict:
    a = model.model_args
    c = model.pretrained_cfg["input_size"][0]
    return dict(
        depth=a["depth"], dim=a["embed_dim"], tokens=model.patch_embed.num_patches + model.num_prefix_tokens,
        mlp_hidden=int(a["embed_dim"] * a["mlp_ratio"]), num_classes=model.num_classes, patch_size=a["patch_size"],
        in_chans=c, attn_dim=model.blocks[0].attn.attn_dim,
    )  # fmt: skip


def _forward_flops(model, batch: int) -> int:
    x = torch.randn(batch, *model.pretrained_cfg["input_size"])
    return count_flops(model.eval(), x)[0]


def test_sdpa_cpu_counted_and_consistent_with_torch():
    q = (2, 3, 50, 32)
    assert sdpa_cpu_flop(q, q, q) == sdpa_flop_count(q, q, q) == 4 * 2 * 3 * 50 * 50 * 32
    assert sdpa_cpu_backward_flop(q, q, q, q) == sdpa_backward_flop_count(q, q, q, q) == 2.5 * sdpa_cpu_flop(q, q, q)
    kv = (2, 3, 64, 32)  # cross-attention shapes (routed 'all' context)
    assert sdpa_cpu_flop(q, kv, kv) == sdpa_flop_count(q, kv, kv)
    assert sdpa_cpu_backward_flop(q, q, kv, kv) == sdpa_backward_flop_count(q, q, kv, kv)

    attn, x = Attention(96, 3), torch.randn(2, 50, 96, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOP_MAPPING) as fc:
        attn(x).sum().backward()
    aten = torch.ops.aten
    counts = fc.get_flop_counts()["Global"]
    assert counts[aten._scaled_dot_product_flash_attention_for_cpu] == sdpa_cpu_flop(q, q, q) > 0
    assert counts[aten._scaled_dot_product_flash_attention_for_cpu_backward] == 2.5 * sdpa_cpu_flop(q, q, q)


@pytest.mark.parametrize(
    ("name", "batch", "kwargs"),
    [("zoo_vit_small_p16", 1, {}), ("zoo_vit_micro_p4", 4, {}), ("zoo_vit_micro_p4", 2, {"head_dim": 48})],
)
def test_dense_forward_flops_match_analytical(name, batch, kwargs):
    model = timm.create_model(name, **kwargs)  # head_dim 48 x 3 heads: attention wider than the 96 residual
    expected = analytical_vit_flops(**_shape_args(model), batch=batch)
    assert _forward_flops(model, batch) == pytest.approx(expected, rel=0.02)


def test_routed_flops_below_dense_and_match_analytical():
    dense = timm.create_model("zoo_vit_micro_p4")
    routed = timm.create_model("zoo_vit_micro_p4", routing=ROUTING)
    args = _shape_args(routed)
    expected = analytical_routed_vit_flops(
        **args, batch=4, capacity=0.25, routed_blocks=range(1, args["depth"], 2)
    )  # k = ceil(0.25 * 49) = 13 patch tokens + CLS in blocks 1, 3, 5
    counted = _forward_flops(routed, 4)
    assert counted == pytest.approx(expected, rel=0.02)
    assert counted < 0.75 * _forward_flops(dense, 4)


def test_train_step_is_about_three_forwards():
    model = timm.create_model("zoo_vit_micro_p4")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    fwd = count_flops(model.eval(), x)[0]
    train, per_module = count_flops(model.train(), x, loss_fn=lambda out: F.cross_entropy(out, y))
    # linears 3x, attention 1 + 2.5, patch-embed conv 2x (no input grad)
    assert 2.9 * fwd < train < 3.3 * fwd
    assert per_module["blocks.0"] == pytest.approx(train / 6, rel=0.02)
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def dense_memory() -> dict[int, dict]:
    model = timm.create_model("zoo_vit_micro_p4")
    return {b: measure_train_memory(model, b) for b in (2, 8)}


def test_activation_memory_scales_with_batch(dense_memory):
    small, big = dense_memory[2], dense_memory[8]
    params = big["mem_breakdown"]["params"]
    assert small["mem_breakdown"]["params"] == params > 0
    assert big["mem_breakdown"]["grads"] == params  # every parameter is trainable
    assert big["mem_breakdown"]["optimizer"] == pytest.approx(2 * params, abs=4096)  # AdamW: exp_avg, exp_avg_sq
    ratio = big["mem_breakdown"]["activations"] / small["mem_breakdown"]["activations"]
    assert 3.0 < ratio < 4.5, ratio  # 4x the batch; the batch-independent part is small
    assert big["peak_mem_train_bytes"] > small["peak_mem_train_bytes"]


def test_checkpointing_reduces_activation_memory(dense_memory):
    model = timm.create_model("zoo_vit_micro_p4")  # 6 blocks
    model.set_grad_checkpointing(True)
    ckpt = measure_train_memory(model, 8)["mem_breakdown"]["activations"]
    dense = dense_memory[8]["mem_breakdown"]["activations"]
    assert ckpt < 0.5 * dense, (ckpt, dense)


@pytest.fixture(scope="module")
def micro_profile() -> dict:
    return profile_model("zoo_vit_micro_p4", batch=8, iters=2, warmup=1)


def test_profile_model_keys_and_values(micro_profile):
    r = micro_profile
    assert KEYS <= set(r)
    assert r["batch"] == 8 and r["precision"] == "fp32" and r["device"] == "cpu"
    assert (
        r["params"]
        == r["trainable_params"]
        == sum(p.numel() for p in timm.create_model("zoo_vit_micro_p4").parameters())
    )
    assert r["flops_fwd"] == analytical_vit_flops(**_shape_args(timm.create_model("zoo_vit_micro_p4")), batch=8)
    assert 2.9 * r["flops_fwd"] < r["flops_train_step"] < 3.3 * r["flops_fwd"]
    mb = r["mem_breakdown"]
    assert set(mb) == {"params", "grads", "optimizer", "activations"} and all(v > 0 for v in mb.values())
    assert mb["params"] + mb["optimizer"] + mb["activations"] <= r["peak_mem_train_bytes"]
    assert r["peak_mem_train_bytes"] <= sum(mb.values())
    assert "tensor tracking" in r["mem_method"]
    for key in ("train_img_per_s", "infer_img_per_s", "train_step_s", "gemm_peak_flops"):
        assert math.isfinite(r[key]) and r[key] > 0
    assert 0 < r["mfu"] <= 1
    names = [row["name"] for row in r["blocks"]]
    assert names == ["patch_embed", *(f"blocks.{i}" for i in range(6)), "norm", "head", "(other)"]
    assert sum(row["flops_fwd"] for row in r["blocks"]) == r["flops_fwd"]
    assert all(row["time_fwd_s"] >= 0 for row in r["blocks"])
    text = format_profile(r)
    assert "blocks.5" in text and "MFU" in text


def test_profile_model_leaves_module_untouched():
    model = timm.create_model("zoo_vit_micro_p4", routing=ROUTING)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = profile_model(model, batch=2, iters=1, warmup=0, breakdown=False)
    assert r["blocks"] == [] and r["model"] == "zoo_vit_micro_p4"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gemm_peak_positive():
    assert measure_gemm_peak("fp32", size=256, min_time=0.0) > 0


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "int8"])
def test_bad_precision_raises(bad):
    with pytest.raises(ValueError, match="precision"):
        profile_model("zoo_vit_micro_p4", precision=bad)
    with pytest.raises(ValueError, match="precision"):
        measure_gemm_peak(bad)
