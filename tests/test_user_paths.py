"""First contact as a timm / hub user: a name means the same weights everywhere, misspelt names get suggestions, a
run folder given as a model is pointed at its model, and the project says its license."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import yaml
from conftest import tiny_recipe

import zoo  # noqa: F401
from zoo.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def test_license_file_matches_the_declared_license():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_eval_of_a_bare_name_uses_its_published_weights(capsys, fmnist):
    assert main(["eval", "zoo_vit_micro_p7", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "zoo_vit_micro_p7.fmnist" in err
    card = json.loads((ROOT / "model_cards" / "zoo_vit_micro_p7.fmnist" / "result.json").read_text())
    assert abs(json.loads(out)["acc"] - card["final_acc"]) < 1e-3  # the published model, not a random one


def test_eval_of_a_name_without_published_weights_is_refused(capsys):
    assert main(["eval", "zoo_vit_mini_p4"]) == 2
    assert "without published weights" in capsys.readouterr().err


def test_published_tag_carries_label_names_like_a_folder_load():
    m = timm.create_model("zoo_vit_micro_p7.fmnist", pretrained=True)
    names = m.pretrained_cfg["label_names"]
    assert len(names) == 10 and names[0] == "T-shirt/top"


def test_a_run_folder_given_as_a_model_points_at_its_model(tmp_path, capsys, fmnist):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 1})))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert str(tmp_path / "run" / "model") in capsys.readouterr().err


def test_misspelt_names_list_the_close_matches(capsys):
    assert main(["train", "fmnist_micro_dens", "--no-progress"]) == 2
    assert "did you mean fmnist_micro_dense" in capsys.readouterr().err
    assert main(["eval", "zoo_vit_micro_p77"]) == 2
    assert "did you mean zoo_vit_micro_p7" in capsys.readouterr().err


def test_set_routing_refuses_misspelt_keys_and_converts_back_to_dense():
    import torch

    m = timm.create_model("zoo_vit_micro_p4").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        y = m(x)
        try:
            m.set_routing({"capacity": 0.5, "layer": "all"})
            raise AssertionError("a misspelt key was accepted")
        except ValueError as e:
            assert "layer" in str(e) and "layers" in str(e)
        assert all(type(b).__name__ == "Block" for b in m.blocks), "a refused spec changes nothing"
        m.set_routing({"capacity": 1.0, "layers": "all"})
        torch.testing.assert_close(m(x), y, atol=1e-5, rtol=0)
        m.set_routing(None)  # back to dense: routers dropped, the function kept
        assert all(type(b).__name__ == "Block" for b in m.blocks) and m.model_args["routing"] is None
        torch.testing.assert_close(m(x), y, atol=1e-5, rtol=0)


def test_a_tracker_that_is_not_installed_is_an_error_before_anything_is_written(tmp_path, capsys, fmnist):
    import importlib.util

    missing = next(t for t in ("tensorboard", "wandb", "comet_ml") if importlib.util.find_spec(t) is None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(train={"tracker": missing.replace("_ml", "")})))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "train.tracker" in capsys.readouterr().err
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_trackers_get_the_resolved_recipe_as_flat_scalar_hparams():
    from zoo.training.recipe import recipe_from_dict
    from zoo.training.run_setup import flat_hparams

    hp = flat_hparams(recipe_from_dict(tiny_recipe()).to_dict())
    assert hp["optim.lr"] == 0.003 and hp["model.args.depth"] == 2 and hp["optim.betas"] == "[0.9, 0.999]"
    assert all(isinstance(v, (int, float, str, bool)) for v in hp.values() if v is not None)


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("ACCELERATE_MIXED_PRECISION", "bf16", "train.precision"),
        ("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR", "train.compile"),
    ],
)
def test_accelerate_launch_settings_that_the_recipe_overrides_are_warned(tmp_path, monkeypatch, fmnist, variable,
                                                                          value, field):  # fmt: skip
    """What `accelerate launch --mixed_precision / --dynamo_backend` sets is overridden by the recipe, loudly."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 1})))
    monkeypatch.setenv(variable, value)
    with pytest.warns(UserWarning, match=f"overridden by the recipe's {field}"):
        assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0


def test_profile_accepts_auto_precision_as_recipes_do(capsys):
    assert main(["profile", "zoo_vit_micro_p7", "--precision", "auto", "--iters", "1", "--batch", "4", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "auto:" in err and json.loads(out)["precision"] in ("fp32", "bf16")
