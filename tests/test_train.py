"""The training loop on real Fashion-MNIST data: learns, resumes exactly, is deterministic, guards its run folder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file

from zoo.training.recipe import RecipeError, recipe_from_dict
from zoo.training.trainer import train


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "model,extra",
    [
        ({"name": "zoo_vit_micro_p7", "args": {"depth": 2}}, {}),
        ({"name": "zoo_vit_micro_p7", "args": {"depth": 2}}, {"routing": {"capacity": 0.5, "layers": "all"}}),
        (
            {"name": "zoo_vit_micro_p7", "args": {"depth": 2, "attn_type": "window", "attn_args": {"window_size": 2}}},
            {},
        ),
        ({"name": "zoo_vit_micro_p7", "args": {"depth": 2, "attn_type": "spatial_reduction"}}, {}),
        ({"name": "zoo_revvit_micro_p4", "args": {"depth": 2, "patch_size": 7, "embed_dim": 128, "num_heads": 4}}, {}),
    ],
    ids=["dense", "routed", "window", "spatial_reduction", "reversible"],
)
def test_short_training_clearly_beats_chance(tmp_path, fmnist, model, extra):
    # 4000 images, 3 epochs of a 2-block model: chance is 10%; 55% is far beyond what a broken pipeline
    # (misaligned labels, wrong normalisation, no gradient reaching a layer) could reach, and reached with margin here
    recipe = recipe_from_dict(
        tiny_recipe(
            model=model,
            data={"train_subset": 4000, "test_subset": 1000, "batch_size": 64},
            schedule={"steps": None, "epochs": 3, "warmup": 0.1},
            optim={"lr": 0.002},
            train={"log_every": 20, "eval_every": 1.0},
            **extra,
        )
    )
    res = train(recipe, tmp_path / "run", progress=False)
    assert res.final_acc >= 0.55, res
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert losses[-1] < losses[0]
    for name in ("recipe.yaml", "manifest.json", "result.json", "model/config.json", "model/model.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name


def test_same_seed_bitwise_equal_weights(tmp_path, fmnist):
    recipe = recipe_from_dict(tiny_recipe())
    train(recipe, tmp_path / "a", progress=False)
    train(recipe, tmp_path / "b", progress=False)
    assert_bitwise_equal(weights(tmp_path / "a"), weights(tmp_path / "b"))


@pytest.mark.parametrize(
    "sections,stop",
    [
        ({}, 3),
        ({"train": {"accumulation": 2, "ema": 0.9, "log_every": 1}}, 3),
        (
            {
                "routing": {"capacity": 0.5, "start": 1.0, "anneal": 0.5},
                "model": {"args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "drop_path_rate": 0.1}},
            },
            3,
        ),
        ({"unfreeze": {"mode": "gradual", "every": 0.25}}, 3),  # between boundaries (2, 4, 6)
        ({"unfreeze": {"mode": "gradual", "every": 0.25}}, 4),  # exactly at a boundary
        ({"unfreeze": {"mode": "freezeout", "every": 0.25, "anneal_lr": True}}, 3),
        ({"unfreeze": {"mode": "freezeout", "start": 0.5, "every": 0.125, "anneal_lr": True, "scale_lr": True}}, 5),
        ({"unfreeze": {"mode": "adaptive", "check_every": 0.25, "threshold": 10.0}}, 3),  # before a decision
        ({"unfreeze": {"mode": "adaptive", "check_every": 0.25, "threshold": 10.0}}, 5),  # reference in the checkpoint
        ({"growth": {"stages": [{"at": 0.5, "depth": 3, "mlp_hidden": 192}]}, "train": {"ema": 0.9}}, 4),
        ({"growth": {"stages": [{"at": 0.5, "depth": 4, "depth_op": "stack"}]}, "schedule": {"rewarmup": 0.25}}, 5),
        (
            {
                "model": {"args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 20}},
                "growth": {"stages": [{"at": 0.25, "img_size": 24}, {"at": 0.5, "img_size": 28, "embed_dim": 64}]},
                "unfreeze": {"mode": "gradual", "every": 0.25},
            },
            4,
        ),
    ],
    ids=[
        "plain",
        "accum-ema",
        "routing-droppath",
        "unfreeze-mid",
        "unfreeze-at-boundary",
        "freezeout-anneal",
        "freezeout-late-scaled",
        "adaptive-before-decision",
        "adaptive-after-decision",
        "grow-depth-mlp-ema",
        "grow-stack-rewarm",
        "grow-res-width-unfreeze",
    ],
)
def test_resume_mid_epoch_is_bitwise_exact(tmp_path, fmnist, sections, stop):
    # 8 steps of 64 on 512 images = one epoch; stopping after 3 resumes mid-epoch (and mid-schedule)
    recipe = recipe_from_dict(tiny_recipe(**sections))
    full = train(recipe, tmp_path / "full", progress=False)
    part = train(recipe, tmp_path / "part", progress=False, stop_after=stop)
    assert part.steps == stop and not (tmp_path / "part" / "model").exists()
    train(recipe, tmp_path / "part", resume=True, progress=False)
    assert_bitwise_equal(weights(tmp_path / "full"), weights(tmp_path / "part"))
    records = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    full_records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert len(train_steps) == len(set(train_steps)), "each step logged once"
    strip = ("time_s", "img_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in records] == [
        {k: v for k, v in r.items() if k not in strip} for r in full_records
    ], "the resumed log equals the uninterrupted one (events included)"
    assert full.final_acc == pytest.approx(json.loads((tmp_path / "part" / "result.json").read_text())["final_acc"])


def test_refuses_to_mix_runs(tmp_path, fmnist):
    recipe = recipe_from_dict(tiny_recipe(schedule={"steps": 2}))
    train(recipe, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    with pytest.raises(RecipeError, match="already holds a run"):
        train(recipe, tmp_path / "run", progress=False)
    other = recipe_from_dict(tiny_recipe(schedule={"steps": 2}, optim={"lr": 0.01}))
    with pytest.raises(RecipeError, match="different recipe"):
        train(other, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == before
    train(other, tmp_path / "run", force=True, progress=False)


def test_growth_run_exports_final_architecture(tmp_path, fmnist):
    import timm

    recipe = recipe_from_dict(tiny_recipe(growth={"stages": [{"at": 0.5, "depth": 3, "embed_dim": 64}]}))
    train(recipe, tmp_path / "run", progress=False)
    cfg = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert cfg["model_args"]["depth"] == 3 and cfg["model_args"]["embed_dim"] == 64
    model = timm.create_model(f"local-dir:{tmp_path / 'run' / 'model'}", pretrained=True)
    assert len(model.blocks) == 3 and model.embed_dim == 64
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    growth = [e for e in events if "event" in e]
    assert [e["step"] for e in growth] == [4] and growth[0]["event"]["growth_stage"] == 1
    assert any("loss_after_event" in e and e["step"] == 5 for e in events)


def test_precision_auto_is_measured_once_and_kept_on_resume(tmp_path, fmnist):
    recipe = recipe_from_dict(tiny_recipe(train={"precision": "auto"}))
    train(recipe, tmp_path / "run", progress=False, stop_after=2)
    record = json.loads((tmp_path / "run" / "precision.json").read_text())
    assert record["precision"] in ("fp32", "bf16") and record["measured_bf16_speedup"] > 0
    (tmp_path / "run" / "precision.json").write_text(json.dumps({**record, "precision": "bf16"}))
    train(recipe, tmp_path / "run", resume=True, progress=False)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["precision"] == "bf16", "resume reuses the recorded choice instead of measuring again"


def test_resuming_a_finished_run_keeps_its_result(tmp_path, fmnist):
    recipe = recipe_from_dict(tiny_recipe(schedule={"steps": 2}))
    first = train(recipe, tmp_path / "run", progress=False)
    result = (tmp_path / "run" / "result.json").read_bytes()
    again = train(recipe, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "result.json").read_bytes() == result
    assert again.final_acc == first.final_acc and not (again.final_acc != again.final_acc)  # not NaN
    # killed after the last checkpoint, before the result: resuming evaluates the final weights again
    (tmp_path / "run" / "result.json").unlink()
    redone = train(recipe, tmp_path / "run", resume=True, progress=False)
    assert redone.final_acc == pytest.approx(first.final_acc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the EMA copy must follow the model onto the GPU")
@pytest.mark.parametrize("growth", [None, {"stages": [{"at": 0.5, "depth": 3}]}], ids=["plain", "grown"])
def test_ema_trains_on_cuda(tmp_path, fmnist, growth):
    # the EMA copy was made on the CPU before prepare() moved the model, and its first update mixed devices
    extra = {"growth": growth} if growth else {}
    recipe = recipe_from_dict(tiny_recipe(train={"ema": 0.9}, **extra))
    res = train(recipe, tmp_path / "run", progress=False)
    assert res.final_acc > 0.1 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
