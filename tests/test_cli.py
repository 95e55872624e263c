"""The CLI's user paths: list, the README's main job (demo, shortened), eval, help."""

from __future__ import annotations

import json

import pytest

from zoo.cli import build_parser, main


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


def test_demo_shortened_writes_a_loadable_hub_folder(tmp_path, capsys, fmnist):
    out = tmp_path / "demo"
    sets = ["schedule.steps=6", "data.train_subset=512", "data.test_subset=256", "train.log_every=2"]
    assert main(["demo", "--out", str(out), *[x for s in sets for x in ("--set", s)]]) == 0
    text = capsys.readouterr().out
    assert "hub-ready model folder" in text and (out / "model" / "model.safetensors").is_file()
    assert main(["eval", f"local-dir:{out / 'model'}", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 10000 and 0.0 <= res["acc"] <= 1.0
