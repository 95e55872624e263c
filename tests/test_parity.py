"""A timm vit_* checkpoint loads into its zoo counterpart through timm's normal routes with identical outputs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

PAIRS = [("vit_tiny_patch16_224", "zoo_vit_tiny_p16"), ("vit_small_patch16_224", "zoo_vit_small_p16")]


@pytest.mark.parametrize("timm_name,zoo_name", PAIRS)
def test_timm_weights_via_pretrained_cfg_overlay(timm_name, zoo_name, tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model(timm_name, pretrained=False).eval()
    file = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(file))
    model = timm.create_model(zoo_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file))).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5


def test_timm_weights_via_local_dir(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "model.safetensors"))
    cfg = {"architecture": "zoo_vit_tiny_p16", "num_classes": 1000, "pretrained_cfg": {"input_size": [3, 224, 224]}}
    (folder / "config.json").write_text(json.dumps(cfg))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5


def test_timm_weights_into_routed_model_are_function_preserving_at_capacity_1(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(file))
    routed = timm.create_model(
        "zoo_vit_tiny_p16",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(file)),
        routing={"capacity": 1.0, "layers": "every_other"},
    ).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (routed(x) - ref(x)).abs().max().item() <= 1e-5
