"""Graph capture of zoo models: ``torch.export`` (the path to ONNX, ExecuTorch and AOTInductor) works for every model
family, routed models included; ``torch.jit.trace`` and torch.fx tracing (timm's feature extraction) work for the
dense ViT. ``torch.jit.script`` is not supported (the block runner's routing / checkpointing / frozen-prefix logic
is dynamic Python); README.md says so."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import create_feature_extractor

CASES = {
    "dense_conv_stem": ("zoo_vit_micro_conv_p4", {}),
    "routed": ("zoo_vit_micro_p7", {"routing": {"capacity": 0.5, "layers": "every_other"}}),
    "multiscale": ("zoo_msvit_micro_p2", {}),
    "reversible": ("zoo_revvit_micro_p4", {}),
}


def model_and_input(name: str, kwargs: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    c, s = model.model_args["in_chans"], model.model_args["img_size"]
    return model, torch.randn(3, c, s, s, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", list(CASES))
def test_torch_export_matches_eager(case):
    model, x = model_and_input(*CASES[case])
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("case", ["dense_conv_stem", "routed"])
def test_jit_trace_matches_eager(case):
    model, x = model_and_input(*CASES[case])
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_fx_feature_extraction_of_the_dense_vit():
    model, x = model_and_input(*CASES["dense_conv_stem"])
    extractor = create_feature_extractor(model, return_nodes={"norm": "tokens", "head": "logits"})
    with torch.no_grad():
        out = extractor(x)
        assert torch.allclose(out["logits"], model(x), atol=1e-5)
        assert out["tokens"].shape == (3, model.patch_embed.num_patches + 1, model.embed_dim)


def test_patch_dropout_drops_patch_tokens_in_training_only_and_survives_a_folder(tmp_path):
    from zoo.hub import load_model, save_model_folder

    torch.manual_seed(0)
    model = timm.create_model("zoo_vit_micro_conv_p4", patch_drop_rate=0.5)
    x = torch.randn(4, 1, 28, 28)
    model.train()
    assert model.stem(x).shape == (4, 1 + 24, model.embed_dim)  # the class token and int(49 x 0.5) patch tokens
    model.eval()
    dense = timm.create_model("zoo_vit_micro_conv_p4")
    dense.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), dense.eval()(x)), "identity at inference"
    save_model_folder(model, tmp_path / "m")
    loaded = load_model(f"local-dir:{tmp_path / 'm'}")
    assert loaded.model_args["patch_drop_rate"] == 0.5
