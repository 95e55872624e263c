"""``train.compile``: the model compiled through Accelerate's TorchDynamo plugin trains like the eager one, across a
growth boundary (re-prepared, so recompiled) and a resume, and saves its own parameter names."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file

from zoo.training.recipe import RecipeError, recipe_from_dict
from zoo.training.trainer import train


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def test_compiled_training_matches_eager_across_growth_and_resume(tmp_path, fmnist):
    # aot_eager: dynamo's graph capture and autograd tracing without generating C++ (no compiler needed in CI)
    grow = {"stages": [{"step": 4, "depth": 3}]}
    eager = recipe_from_dict(tiny_recipe(growth=grow))
    compiled = recipe_from_dict(tiny_recipe(growth=grow, train={"compile": "aot_eager"}))
    train(eager, tmp_path / "eager", progress=False)
    train(compiled, tmp_path / "full", progress=False)
    train(compiled, tmp_path / "part", progress=False, stop_after=4)  # stops at the growth boundary
    train(compiled, tmp_path / "part", resume=True, progress=False)
    a, b, e = weights(tmp_path / "full"), weights(tmp_path / "part"), weights(tmp_path / "eager")
    assert a.keys() == e.keys() and not any("_orig_mod" in k for k in a)  # the model's own names, grown to 3 blocks
    assert any(k.startswith("blocks.2.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "a compiled run resumes bitwise"
    for k in a:  # the same training up to the kernels' summation order
        torch.testing.assert_close(a[k], e[k], rtol=1e-3, atol=1e-4)


def test_compile_backend_is_validated():
    with pytest.raises(RecipeError, match="train.compile"):
        recipe_from_dict(tiny_recipe(train={"compile": "tensorrt"}))
