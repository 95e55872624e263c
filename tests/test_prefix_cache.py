"""The cached frozen prefix (``unfreeze.cache_prefix``, ``zoo.training.prefix_cache``).

What must hold: the model run from cached prefix outputs computes what it computes from the images (the same views:
the cache is looked up with the same flip draws); advancing the cache through newly frozen blocks gives exactly what
building it at that depth gives (so a resumed run, which rebuilds, holds the same tokens); the frozen prefix gets no
gradient and no update; training killed mid-epoch resumes bitwise across a freezing boundary; two processes agree;
augmentations that change the prefix's input, and models that cannot run from it, are refused by field.
"""

from __future__ import annotations

import json
import signal

import pytest
import timm
import torch
import yaml
from conftest import tiny_recipe
from safetensors.torch import load_file
from test_kill_resume import finish, start, wait_for_step
from test_multiprocess import train_in_two_processes

from zoo.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from zoo.data.pipeline import draw_mirror, normalize, random_crop_flip
from zoo.data.sources import TensorSource
from zoo.training.freezing import set_trainable_from
from zoo.training.prefix_cache import PrefixCache, prefix_input
from zoo.training.recipe import RecipeError, recipe_from_dict
from zoo.training.trainer import train

BIG = 2**30


def tiny_model(depth: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("zoo_vit_micro_conv_p4", embed_dim=32, depth=depth, num_heads=2, num_classes=10)


def cache_of(source, model, frozen_blocks: int, flip: bool = True) -> PrefixCache:
    cache = PrefixCache(source, FASHION_MNIST_MEAN, FASHION_MNIST_STD, flip, BIG)
    cache.sync(model, frozen_blocks, torch.device("cpu"))
    return cache


# ------------------------------------------------------------------------------------------------------- the cache
@pytest.mark.parametrize("trainable_from", [1, 2, 3])
def test_model_run_from_the_cache_computes_what_it_computes_from_images(fmnist, trainable_from):
    model = tiny_model()
    set_trainable_from(model, trainable_from)  # the stem and trainable_from - 1 blocks frozen
    model.train()
    source = TensorSource(fmnist["train_x"][:48], fmnist["train_y"][:48])
    cache = cache_of(source, model, model.no_grad_prefix)
    idx = torch.tensor([5, 0, 47, 12, 12, 30, 7, 21])
    draws, again = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    images = normalize(random_crop_flip(source.load(idx), draws, 0, True), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    expected = model(images)
    mirrored = draw_mirror(len(idx), again)
    assert 0 < int(mirrored.sum()) < len(idx), "both views are looked up"
    with prefix_input(model, True):
        got = model(cache.lookup(idx, mirrored))
    assert not model.prefix_input
    # equal up to the rounding of a different batch composition (the cache is built 256 images and one view at a time)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_advancing_the_cache_equals_building_it(fmnist):
    model = tiny_model()
    source = TensorSource(fmnist["train_x"][:300], fmnist["train_y"][:300])  # two chunks
    advanced = cache_of(source, model, 0)
    assert advanced.tokens.shape == (300, 2, 50, 32)  # 49 patch tokens and the class token, two views
    assert advanced.sync(model, 2, torch.device("cpu")) and advanced.builds == 2
    assert torch.equal(advanced.tokens, cache_of(source, model, 2).tokens), "a resumed run rebuilds the same tokens"
    assert not advanced.sync(model, 2, torch.device("cpu")), "nothing to do at the same depth"
    advanced.sync(model, 1, torch.device("cpu"))  # shorter (top-down unfreezing): rebuilt
    assert torch.equal(advanced.tokens, cache_of(source, model, 1).tokens)
    assert cache_of(source, model, 1, flip=False).tokens.shape[1] == 1, "without flips, one view per image"


def test_the_budget_is_checked_before_training(tmp_path):
    recipe = cached_recipe({"mode": "stages", "stages": [{"step": 0, "trainable_from": 1}], "cache_max_mb": 0.5})
    with pytest.raises(RecipeError) as info:  # 512 images x 2 views x 50 x 32 floats = 6.25 MB
        train(recipe_from_dict(recipe), tmp_path / "run", progress=False)
    assert info.value.field_path == "unfreeze.cache_max_mb"


@pytest.mark.parametrize(
    ("section", "value", "field"),
    [
        ("data", {"crop_pad": 2}, "data.crop_pad"),
        ("data", {"auto_augment": "rand-m9-mstd0.5"}, "data.auto_augment"),
        ("data", {"reprob": 0.25}, "data.reprob"),
        ("data", {"mixup": 0.8}, "data.mixup"),
        ("growth", {"stages": [{"at": 0.5, "depth": 3}]}, "unfreeze.cache_prefix"),
    ],
)
def test_what_changes_the_prefix_input_is_refused(section, value, field):
    recipe = cached_recipe({"mode": "stages", "stages": [{"step": 0, "trainable_from": 1}]})
    recipe[section] = {**recipe.get(section, {}), **value}
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(recipe)
    assert info.value.field_path == field


def test_a_model_that_cannot_run_from_a_prefix_is_refused(tmp_path):
    recipe = cached_recipe({"mode": "stages", "stages": [{"step": 0, "trainable_from": 1}]})
    recipe["model"] = {"name": "zoo_revvit_micro_p4", "args": {"embed_dim": 32, "depth": 2, "num_heads": 2}}
    with pytest.raises(RecipeError) as info:
        train(recipe_from_dict(recipe), tmp_path / "run", progress=False)
    assert info.value.field_path == "unfreeze.cache_prefix"


# ------------------------------------------------------------------------------------------------------ training
def cached_recipe(unfreeze: dict, cache: bool = True) -> dict:
    recipe = tiny_recipe(
        model={"name": "zoo_vit_micro_conv_p4", "args": {"embed_dim": 32, "depth": 2, "num_heads": 2}},
        data={"crop_pad": 0},
        train={"seed": 0, "log_every": 1, "eval_every": 100.0, "checkpoint_every": 2},
    )
    recipe["unfreeze"] = {**unfreeze, "cache_prefix": cache}
    return recipe


def log_of(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_from_the_cache_matches_training_without_it(tmp_path, fmnist):
    """The stem and block 0 frozen from the start: they never change (no gradient, no update: equal at a mid-run
    checkpoint and at the end), and the trained blocks end where the uncached run ends."""
    schedule = {"mode": "stages", "stages": [{"step": 0, "trainable_from": 2}]}
    finals = {}
    for cache in (True, False):
        recipe = recipe_from_dict(cached_recipe(schedule, cache))
        train(recipe, tmp_path / str(cache), progress=False)
        finals[cache] = load_file(str(tmp_path / str(cache) / "model" / "model.safetensors"))
    train(recipe_from_dict(cached_recipe(schedule)), tmp_path / "mid", progress=False, stop_after=2)
    last = sorted((tmp_path / "mid" / "checkpoints").glob("step_*"))[-1]
    mid = load_file(str(next(last.glob("**/model.safetensors"))))
    frozen = [n for n in finals[True] if n.startswith(("patch_embed.", "blocks.0.", "pos_embed", "cls_token"))]
    assert frozen and all(torch.equal(finals[True][n], mid[n]) for n in frozen), "the frozen prefix never changed"
    assert all(torch.equal(finals[True][n], finals[False][n]) for n in frozen)
    for name, value in finals[True].items():
        torch.testing.assert_close(value, finals[False][name], rtol=0, atol=1e-4, msg=name)
    built = [r for r in log_of(tmp_path / "True") if "prefix_cache_blocks" in r]
    assert [(r["step"], r["prefix_cache_blocks"]) for r in built] == [(0, 1)], "built once, before the first step"


def test_killed_mid_epoch_with_a_cache_resumes_bitwise(tmp_path):
    """Bottom-up freezing every 25% of 12 steps: the cache is built at step 3 (the stem frozen) and advanced at steps
    6 and 9 (each block); the kill lands past the checkpoint at step 6, and the resumed run rebuilds the cache it
    held from the images."""
    recipe = cached_recipe({"mode": "freezeout", "every": 0.25})
    recipe["schedule"] = {"steps": 12, "warmup": 0.1}
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, log = finish(start(path, tmp_path / "ref"))
    assert code == 0, log
    assert [r["prefix_cache_blocks"] for r in log_of(tmp_path / "ref") if "prefix_cache_blocks" in r] == [0, 1, 2]
    proc = start(path, tmp_path / "killed")
    wait_for_step(proc, tmp_path / "killed", 7)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    code, log = finish(start(path, tmp_path / "killed", "--resume"))
    assert code == 0, log
    ref, resumed = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("ref", "killed"))
    assert all(torch.equal(ref[k], resumed[k]) for k in ref), "weights differ"


def test_two_processes_train_from_a_cache_in_step(tmp_path):
    """``torchrun`` with 2 processes: each holds the whole cache; the trainer's own rank check at the end compares
    the ranks' weights."""
    recipe = cached_recipe({"mode": "stages", "stages": [{"step": 0, "trainable_from": 1}]})
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert train_in_two_processes(path, tmp_path / "run")["steps"] == 8
