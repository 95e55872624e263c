"""Bad input: a clear error naming the file and field, exit code 2 from the CLI, and nothing overwritten."""

from __future__ import annotations

import json
import struct

import pytest
import timm
import torch
import yaml
from conftest import tiny_recipe
from safetensors.torch import save_file

from zoo.cli.main import main
from zoo.hub import save_model_folder


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    return save_model_folder(timm.create_model("zoo_vit_micro_p4", embed_dim=32, depth=2, num_heads=2), tmp_path / "m")


def test_truncated_safetensors(folder, capsys):
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    code, err = run(capsys, "eval", folder)
    assert code == 2 and "model.safetensors" in err and "corrupt or truncated" in err


def test_corrupt_bytes_inside_intact_file_detected_by_hash(folder, capsys):
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 + header_len + 100] ^= 0xFF  # flip a byte inside the tensor data, header intact
    w.write_bytes(bytes(data))
    code, err = run(capsys, "eval", folder)
    assert code == 2 and "model.safetensors" in err and "sha256" in err.lower()


def test_shape_mismatch_missing_and_unknown_keys(folder, capsys):
    state = timm.create_model("zoo_vit_micro_p4", embed_dim=32, depth=2, num_heads=2).state_dict()
    cases = {
        "shape mismatch": {**state, "head.weight": torch.zeros(3, 32)},
        "missing keys": {k: v for k, v in state.items() if k != "norm.weight"},
        "unknown keys": {**state, "extra.weight": torch.zeros(1)},
    }
    for words, sd in cases.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
        code, err = run(capsys, "eval", folder)
        assert code == 2 and "model.safetensors" in err and words in err, (words, err)


@pytest.mark.parametrize(
    "config,field",
    [
        ("{not json", "<file>"),
        (json.dumps({"architecture": "zoo_vit_nonexistent", "model_args": {}}), "architecture"),
        (json.dumps({"architecture": "zoo_vit_micro_p4", "model_args": {"depth": "six"}}), "model_args"),
        (json.dumps({"architecture": "zoo_vit_micro_p4", "model_args": ["depth"]}), "model_args"),
        # loader arguments of timm.create_model: would open any readable file / redirect the weights
        (
            json.dumps({"architecture": "zoo_vit_micro_p4", "model_args": {"checkpoint_path": "/etc/passwd"}}),
            "model_args.checkpoint_path",
        ),
        (
            json.dumps({"architecture": "zoo_vit_micro_p4", "model_args": {"pretrained_cfg_overlay": {"file": "x"}}}),
            "model_args.pretrained_cfg_overlay",
        ),
        # sizes that hang the loader or exhaust memory before the weights are read
        (json.dumps({"architecture": "zoo_vit_micro_p4", "model_args": {"depth": 1000000}}), "model_args.depth"),
        (json.dumps({"architecture": "zoo_vit_micro_p4", "model_args": {"embed_dim": -8}}), "model_args.embed_dim"),
        (
            json.dumps({"architecture": "zoo_vit_micro_p4", "model_args": {"img_size": [28, 10**9]}}),
            "model_args.img_size",
        ),
    ],  # fmt: skip
)
def test_bad_config(folder, capsys, config, field):
    (folder / "config.json").write_text(config)
    code, err = run(capsys, "eval", folder)
    assert code == 2 and "config.json" in err and f": {field}:" in err, err


def test_image_size_or_channels_that_do_not_fit(tmp_path, capsys, fmnist):
    rgb = save_model_folder(timm.create_model("zoo_vit_tiny_p16", depth=1, img_size=32), tmp_path / "rgb")
    code, err = run(capsys, "eval", rgb, "--data", "fashion-mnist")
    assert code == 2 and ("in_chans" in err or "img_size" in err), err


def test_recipe_errors_write_nothing(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    for data, field in [
        (tiny_recipe(routing={"capacity": 1.5}), "routing.capacity"),
        (tiny_recipe(growth={"stages": [{"at": 0.5, "depth": 1}]}), "growth.stages[0].depth"),
        (tiny_recipe(unfreeze={"mode": "stages", "stages": [{"at": 0.1, "trainable_from": 40}]}),
         "unfreeze.stages[0].trainable_from"),
        (tiny_recipe(data={"path": str(tmp_path / "nowhere")}), "nowhere"),
    ]:  # fmt: skip
        recipe.write_text(yaml.safe_dump(data))
        out = tmp_path / f"out-{field}"
        code, err = run(capsys, "train", recipe, "--out", out, "--no-progress")
        assert code == 2 and field in err, (field, err)
        assert not (out / "recipe.yaml").exists() and not (out / "checkpoints").exists(), field


def test_output_dir_holding_a_different_run_is_refused(tmp_path, capsys, fmnist):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 2})))
    assert run(capsys, "train", recipe, "--out", tmp_path / "run", "--no-progress")[0] == 0
    before = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    recipe.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 2}, optim={"lr": 0.5})))
    code, err = run(capsys, "train", recipe, "--out", tmp_path / "run", "--no-progress")
    assert code == 2 and "already holds a run" in err
    code, err = run(capsys, "train", recipe, "--out", tmp_path / "run", "--resume", "--no-progress")
    assert code == 2 and "different recipe" in err
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == before


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, fmnist):
    from safetensors.torch import load_file

    recipe = tmp_path / "r.yaml"
    bad = tiny_recipe(optim={"lr": 1e30, "clip_grad": None}, train={"checkpoint_every": 1, "log_every": 1})
    recipe.write_text(yaml.safe_dump(bad))
    code, err = run(capsys, "train", recipe, "--out", tmp_path / "stop", "--no-progress")
    assert code == 3 and "non-finite" in err
    ckpts = sorted((tmp_path / "stop" / "checkpoints").glob("step_*"))
    assert ckpts, "a checkpoint from before the blow-up is kept"
    bad["train"]["nonfinite"] = "skip"
    recipe.write_text(yaml.safe_dump(bad))
    code, _ = run(capsys, "train", recipe, "--out", tmp_path / "skip", "--no-progress")
    assert code == 0
    logged = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("skipped_nonfinite", 0) for r in logged) > 0
    kept = load_file(str(ckpts[-1] / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in kept.values()), "the kept checkpoint is a good one"


def test_integer_weights_are_refused_not_cast(folder, capsys):
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    state["head.weight"] = state["head.weight"].to(torch.int64)
    save_file(state, str(folder / "model.safetensors"))
    code, err = run(capsys, "eval", folder)
    assert code == 2 and "model.safetensors" in err and "dtype mismatch" in err and "head.weight" in err, err


def test_config_json_that_is_a_folder_names_the_path(folder, capsys):
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    code, err = run(capsys, "eval", folder)
    assert code == 2 and "config.json" in err and "Traceback" not in err, err


def test_a_cards_base_model_cannot_lead_outside_the_card_folders(tmp_path):
    from zoo.publish.reproduce import base_model_candidates

    card = tmp_path / "cards" / "mine"
    card.mkdir(parents=True)
    for bad in ("growzoo/..", "growzoo/.", "..", "growzoo/a b", "growzoo/../../etc/passwd/.."):
        assert base_model_candidates(card, bad) == [], bad
    found = base_model_candidates(card, "growzoo/zoo_vit_micro_p7.fmnist")
    assert found and all(p.parent in (card.parent.resolve(), p.parent) for p in found)
    assert all(p.name == "zoo_vit_micro_p7.fmnist" for p in found)
