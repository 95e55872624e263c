"""The CLI's user paths: list and help (the README's main job, `zoo demo`, is in test_demo.py)."""

from __future__ import annotations

import json

import pytest

from zoo.cli.main import build_parser, main


def test_help_for_every_subcommand(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"list", "train", "eval", "demo", "profile", "bench", "plan", "export", "push", "readme"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "zoo_vit_micro_p7" in out and "fmnist_micro_dense" in out


def test_eval_a_local_dir_folder(tmp_path, capsys, fmnist):
    import timm

    from zoo.hub import save_model_folder

    model = timm.create_model("zoo_vit_micro_p7", embed_dim=32, depth=1, num_heads=2)  # cheap on the 10k test set
    folder = save_model_folder(model, tmp_path / "model")
    assert main(["eval", f"local-dir:{folder}", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 10000 and 0.0 <= res["acc"] <= 1.0
