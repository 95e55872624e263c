"""Token merging (ToMe) as a zoo block option: exact at r = 0, merges r tokens per block, size-weighted pooling,
training-free conversion of a trained model, and the option survives a hub folder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from conftest import tiny_recipe
from test_train import assert_bitwise_equal, weights

from zoo.hub import load_model, save_model_folder
from zoo.nn.merging import bipartite_soft_matching, merge_weighted, resolve_merge_plan
from zoo.training.recipe import recipe_from_dict
from zoo.training.stage_plan import build_model
from zoo.training.trainer import train


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("zoo_vit_micro_conv_p4", **kwargs).eval()


def test_conversion_is_exact_at_r_zero():
    dense, x = _model(), torch.randn(4, 1, 28, 28)
    merged = _model()
    merged.set_merging({"r": 0})
    with torch.no_grad():
        assert torch.equal(merged(x), dense(x))


def test_merging_r_tokens_per_block_and_pooling_by_size():
    model, x = _model(merging={"r": 8}), torch.randn(2, 1, 28, 28)
    tokens = model.stem(x)
    for blk in model.blocks:
        before = tokens.shape[1]
        tokens = blk(tokens)
        assert tokens.shape[1] == before - 8
    size = model.token_sizes.size
    assert size.shape == (2, 1 + 49 - 4 * 8, 1)
    assert torch.equal(size[:, 0], torch.ones(2, 1)), "the class token is never merged"
    assert torch.allclose(size[:, 1:].sum(1), torch.full((2, 1), 49.0)), "every patch is in exactly one token"


def test_merge_weighted_is_a_size_weighted_average():
    x = torch.tensor([[[1.0], [10.0], [3.0], [11.0]]])  # A (even) = tokens 0, 2; B (odd) = tokens 1, 3
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.05], [0.5, 1.0], [0.0, 1.0]]])  # 0 ~ 1 is the closest pair
    merge = bipartite_soft_matching(metric, r=1)
    out, size = merge_weighted(merge, x, torch.tensor([[[1.0], [1.0], [1.0], [3.0]]]))
    # kept A token 2 first, then B: token 1 with token 0 merged in ((1 + 10) / 2, size 2), token 3 unchanged
    assert torch.equal(out.flatten(), torch.tensor([3.0, 5.5, 11.0]))
    assert torch.equal(size.flatten(), torch.tensor([1.0, 2.0, 3.0]))


def test_merging_options_survive_a_folder_and_are_checked(tmp_path):
    model = _model(merging={"r": [4, 4, 0, 0]})
    save_model_folder(model, tmp_path / "m")
    loaded = load_model(f"local-dir:{tmp_path / 'm'}").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert resolve_merge_plan(4, {"r": 2, "layers": [1, 3]}) == [0, 2, 0, 2]
    with pytest.raises(ValueError, match="unknown key"):
        resolve_merge_plan(4, {"ratio": 2})
    with pytest.raises(ValueError, match="cannot be combined"):
        _model(merging={"r": 2}, routing={"capacity": 0.5})


def test_torch_export_of_a_merging_model():
    model, x = _model(merging={"r": 6}), torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(torch.export.export(model, (x,)).module()(x), model(x), atol=1e-5)


def test_recipe_merging_section_converts_a_pretrained_model_and_trains_resumably(tmp_path, fmnist):
    """``merging:`` in a recipe converts the pretrained model as it loads (exact at r = 0), builds merging blocks
    from scratch, and a merging run resumes bitwise exact; the exported folder keeps the merging."""
    teacher = str(Path(__file__).resolve().parents[1] / "model_cards" / "zoo_vit_micro_p7.fmnist")
    x = torch.randn(4, 1, 28, 28)
    dense = load_model(teacher).eval()
    fmnist_shape = SimpleNamespace(num_classes=10, in_chans=1, img_size=28)
    for r, same in ((0, True), (3, False)):
        model_section = {"name": "zoo_vit_micro_p7", "pretrained": teacher, "args": {}}
        recipe = recipe_from_dict(tiny_recipe(model=model_section, merging={"r": r}))
        model = build_model(recipe, fmnist_shape).eval()
        assert model.model_args["merging"] == {"r": r, "layers": "all"}
        with torch.no_grad():
            assert torch.equal(model(x), dense(x)) is same
    recipe = recipe_from_dict(tiny_recipe(merging={"r": [2, 4], "layers": "all"}))
    train(recipe, tmp_path / "full", progress=False)
    train(recipe, tmp_path / "part", progress=False, stop_after=3)
    train(recipe, tmp_path / "part", resume=True, progress=False)
    assert_bitwise_equal(weights(tmp_path / "full"), weights(tmp_path / "part"))
    saved = json.loads((tmp_path / "full" / "model" / "config.json").read_text())
    assert saved["model_args"]["merging"] == {"r": [2, 4], "layers": "all"}
