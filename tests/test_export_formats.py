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


# ---------------------------------------------------------------------------------------------------------- ONNX
ONNX_CASES = {**CASES, "merging": ("zoo_vit_micro_conv_p4", {"merging": {"r": 8}})}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[] if c == "routed" else pytest.mark.slow) for c in ONNX_CASES]
)  # the routed case (top-k gathers, the hardest graph) runs by default; every family in the slow suite
def test_onnx_export_matches_eager_at_any_batch_size(case, tmp_path):
    from zoo.publish.onnx_export import export_onnx

    model, _ = model_and_input(*ONNX_CASES[case])
    with torch.no_grad():  # a trained router: a fresh one scores every token alike, and top-k ties break differently
        for name, p in model.named_parameters():
            if ".router." in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
    record = export_onnx(model, tmp_path / "m.onnx")  # checks batches 1 and 3 in ONNX Runtime (exported at 2)
    assert record["max_abs_diff"] <= 1e-4 and record["opset"] >= 17
    assert (record["input"], record["output"]) == ("pixel_values", "logits")


def test_onnx_check_catches_a_file_that_does_not_match_the_model(tmp_path):
    from zoo.publish.onnx_export import OnnxExportError, check_onnx, export_onnx

    model, _ = model_and_input("zoo_vit_micro_p7", {})
    export_onnx(model, tmp_path / "m.onnx", check=False)
    with torch.no_grad():
        model.head.bias.add_(1.0)  # the eager model moves on; the file does not
    with pytest.raises(OnnxExportError, match="differs from the eager model by 1"):
        check_onnx(model, tmp_path / "m.onnx")


def test_onnx_without_the_extra_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from zoo.publish.onnx_export import OnnxExportError, export_onnx

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    model, _ = model_and_input("zoo_vit_micro_p7", {})
    with pytest.raises(OnnxExportError, match=r"pip install 'growzoo\[onnx\]'"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_zoo_onnx_command_writes_a_checked_file_and_never_overwrites(tmp_path, capsys):
    from zoo.cli.main import main

    out = tmp_path / "m.onnx"
    assert main(["onnx", "zoo_vit_micro_p7.fmnist", str(out)]) == 0
    assert "ONNX Runtime matches eager" in capsys.readouterr().out and out.stat().st_size > 0
    before = out.read_bytes()
    assert main(["onnx", "zoo_vit_micro_p7.fmnist", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_zoo_export_onnx_adds_the_checked_file_to_the_hub_folder(tmp_path, fmnist):
    import json

    import yaml
    from conftest import tiny_recipe

    from zoo.cli.main import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 2})))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = tmp_path / "folder"
    assert main(["export", str(tmp_path / "run"), str(out), "--onnx", "--profile-iters", "1"]) == 0
    record = json.loads((out / "onnx.json").read_text())
    assert record["path"] == "model.onnx" and record["max_abs_diff"] <= 1e-4
    assert (out / "model.onnx").stat().st_size > 0 and "model.onnx" in (out / "README.md").read_text()
