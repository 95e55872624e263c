"""``zoo reproduce``: the comparison point, base-model resolution, the verdict, bad input, and a real tiny card
re-trained end to end (shortened, then resumed to the full run) that must agree with its card exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import tiny_recipe

from zoo.cli.main import main
from zoo.publish.export import export_run
from zoo.publish.reproduce import (
    ReproduceError,
    card_base_model,
    choose_comparison_point,
    compare,
    final_point,
    recipe_changes,
    resolve_pretrained,
    run_state,
    steps_per_epoch,
)
from zoo.training import run_checkpoints as ckpt
from zoo.training.recipe import recipe_from_dict
from zoo.training.trainer import train


def log(spe: int, eval_steps: list[int], total: int) -> list[dict]:
    """A metrics.jsonl as train writes it: loss records every 4 steps, evaluations at ``eval_steps``."""
    recs = [{"step": s, "epoch": s / spe, "loss": 1.0, "time_s": s * 0.5} for s in range(4, total + 1, 4)]
    recs += [{"step": s, "epoch": s / spe, "eval_acc": s / 1000, "time_s": s * 0.5 + 0.1} for s in eval_steps]
    return sorted(recs, key=lambda r: r["step"])


# ------------------------------------------------------------------------------------------- comparison point
def test_comparison_point_is_the_cards_eval_at_that_step():
    records = log(spe=8, eval_steps=[8, 16, 24], total=24)
    assert steps_per_epoch(records, "m") == 8
    p = choose_comparison_point(records, 2, 24, "m")
    assert (p.step, p.acc, p.time_s) == (16, 0.016, 8.1)
    assert choose_comparison_point(records, 3, 24, "m").step == 24


def test_comparison_point_refuses_steps_without_an_eval_and_names_the_nearest():
    records = log(spe=8, eval_steps=[16, 32], total=32)
    with pytest.raises(ReproduceError, match=r"no evaluation at step 8 .*step 16 \(--epochs 2\)") as e:
        choose_comparison_point(records, 1, 32, "card/metrics.jsonl")
    assert "card/metrics.jsonl" in str(e.value) and "or" not in str(e.value).split("nearest")[1]
    with pytest.raises(ReproduceError, match=r"step 16 \(--epochs 2\) or step 32 \(--epochs 4\)"):
        choose_comparison_point(records, 3, 32, "m")
    with pytest.raises(ReproduceError, match="not a whole step"):
        choose_comparison_point(records, 0.3, 32, "m")
    with pytest.raises(ReproduceError, match="4 epochs"):
        choose_comparison_point(records, 5, 32, "m")
    for bad in (0, -1, float("nan")):
        with pytest.raises(ReproduceError, match="positive"):
            choose_comparison_point(records, bad, 32, "m")
    with pytest.raises(ReproduceError, match="no record has an epoch"):
        choose_comparison_point([{"step": 8, "eval_acc": 0.5}], 1, 8, "m")


def test_final_point_and_its_checks():
    p = final_point({"final_acc": 0.8791, "steps": 6084, "wall_clock_s": 889.2}, "r.json")
    assert (p.step, p.acc, p.time_s) == (6084, 0.8791, 889.2)
    with pytest.raises(ReproduceError, match="r.json: final_acc"):
        final_point({"steps": 1, "wall_clock_s": 1.0}, "r.json")


# ------------------------------------------------------------------------------------------------- the verdict
def test_tolerance_verdict():
    assert compare(0.8547, 0.8547, 0.5) == {"delta_pts": 0.0, "passed": True}
    at_edge = compare(0.8547, 0.8597, 0.5)  # 0.5000000000000004 pt after the x100: still "within 0.5"
    assert at_edge["passed"] and at_edge["delta_pts"] == pytest.approx(0.5)
    assert compare(0.8547, 0.8496, 0.5) == {"delta_pts": pytest.approx(-0.51), "passed": False}
    assert compare(0.8547, 0.8550, 0.0)["passed"] is False
    assert compare(0.8547, float("nan"), 100.0)["passed"] is False


# ------------------------------------------------------------------------------------------- base-model path
def card_dir(root, name, base=None):
    folder = root / name
    folder.mkdir(parents=True)
    meta = {"library_name": "timm", **({"base_model": base} if base else {})}
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(meta)}---\n\n# {name}\n")
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_card_base_model_from_the_metadata_block():
    assert card_base_model("---\nbase_model: org/base\nlicense: mit\n---\n# x\n") == "org/base"
    assert card_base_model("---\nbase_model: [org/base]\n---\n") == "org/base"
    assert card_base_model("---\nlicense: mit\n---\n# base_model: org/x\n") is None
    assert card_base_model("# no metadata\nbase_model: org/x\n") is None
    with pytest.raises(ReproduceError, match="README.md: <metadata>"):
        card_base_model("---\nbase_model: [unclosed\n---\n", "README.md")


def test_missing_local_dir_resolves_to_the_base_models_card_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recorded path is relative to the training machine's working directory
    cards = tmp_path / "model_cards"
    base = card_dir(cards, "zoo_base.fmnist")
    ft = card_dir(cards, "zoo_ft.fmnist", base="growzoo/zoo_base.fmnist")
    gone = "local-dir:runs/fmnist_base/model"
    assert resolve_pretrained(gone, ft, "growzoo/zoo_base.fmnist", "r.yaml") == f"local-dir:{base.resolve()}"
    # paths that exist here, hub ids, weights files and no pretrained at all are left as recorded
    (tmp_path / "runs" / "fmnist_base" / "model").mkdir(parents=True)
    assert resolve_pretrained(gone, ft, "growzoo/zoo_base.fmnist", "r.yaml") == gone
    for value in (None, "hf-hub:org/x", "vit.safetensors"):
        assert resolve_pretrained(value, ft, None, "r.yaml") == value


def test_unresolvable_base_model_is_a_clear_error(tmp_path):
    ft = card_dir(tmp_path / "model_cards", "zoo_ft.fmnist")
    with pytest.raises(ReproduceError, match=r"r.yaml: model.pretrained: .*names no base_model; pass --set"):
        resolve_pretrained("local-dir:/nowhere/model", ft, None, "r.yaml")
    with pytest.raises(ReproduceError, match=r"nor base model org/zoo_missing in .*model_cards/zoo_missing"):
        resolve_pretrained("local-dir:/nowhere/model", ft, "org/zoo_missing", "r.yaml")


def test_recipe_changes_lists_differing_fields():
    card = {"model": {"pretrained": "local-dir:a", "args": {}}, "train": {"precision": "auto", "seed": 0}}
    mine = {"model": {"pretrained": "local-dir:b", "args": {}}, "train": {"precision": "bf16", "seed": 0}}
    assert recipe_changes(card, mine) == [
        {"field": "model.pretrained", "card": "local-dir:a", "reproduced": "local-dir:b"},
        {"field": "train.precision", "card": "auto", "reproduced": "bf16"},
    ]
    assert recipe_changes(card, card) == []


# ---------------------------------------------------------------------------------------------- the run folder
def test_run_state_reuses_resumes_and_never_takes_another_run(tmp_path):
    out = tmp_path / "run"
    assert run_state(out, "h1", None) == "fresh"
    out.mkdir()
    (out / "recipe.yaml").write_text("x: 1\n")
    (out / "manifest.json").write_text(json.dumps({"recipe_hash": "h1"}))
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log(8, [8], 8)))
    assert run_state(out, "h1", 8) == "reuse"
    assert run_state(out, "h1", 16) == "resume"
    assert run_state(out, "h1", None) == "resume"
    (out / "result.json").write_text("{}")
    assert run_state(out, "h1", None) == "reuse"
    assert run_state(out, "h1", 8) == "reuse"
    with pytest.raises(ReproduceError, match="finished run .* has no evaluation at step 16"):
        run_state(out, "h1", 16)  # resuming a finished run would only rewrite its result
    with pytest.raises(ReproduceError, match="--out: holds a run of another recipe"):
        run_state(out, "h2", 8)


# --------------------------------------------------------------------------------------------------- bad input
def test_folder_without_recipe_is_exit_2_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({"final_acc": 0.5, "steps": 8, "wall_clock_s": 1.0}))
    (folder / "metrics.jsonl").write_text("")
    assert main(["reproduce", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(folder / "recipe.yaml") in err and "not a model card folder" in err
    assert not (tmp_path / "out").exists()


def test_bad_recipe_field_is_exit_2_naming_file_and_field(tmp_path, capsys):
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(optim={"lr": "fast"})))
    (folder / "result.json").write_text(json.dumps({"final_acc": 0.5, "steps": 8, "wall_clock_s": 1.0}))
    (folder / "metrics.jsonl").write_text("")
    assert main(["reproduce", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "recipe.yaml" in err and "optim.lr" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def cards(tmp_path_factory, fmnist):
    """A base card and a card fine-tuned from it, as `zoo export` writes them; the base run folder is then deleted,
    so the fine-tune's recorded ``local-dir:`` path is gone, as on any machine but the training one."""
    root = tmp_path_factory.mktemp("repro")
    data = {"train_subset": 512, "test_subset": 256, "batch_size": 64}  # 8 steps per epoch
    base_run = root / "runs" / "base"
    train(recipe_from_dict(tiny_recipe(data=data, schedule={"steps": 4})), base_run, progress=False)
    export_run(base_run, root / "model_cards" / "zoo_tiny.base", repo_id="acme/zoo_tiny.base", profile_iters=1)
    ft = tiny_recipe(
        model={"pretrained": f"local-dir:{base_run / 'model'}"},
        data=data,
        schedule={"steps": None, "epochs": 2, "warmup": 0.1},
        train={"eval_every": 1.0, "log_every": 4},
    )
    train(recipe_from_dict(ft), root / "runs" / "ft", progress=False)
    kw = {"repo_id": "acme/zoo_tiny.ft", "base_model": "acme/zoo_tiny.base", "profile_iters": 1}
    export_run(root / "runs" / "ft", root / "model_cards" / "zoo_tiny.ft", **kw)
    shutil.rmtree(root / "runs")
    return root / "model_cards"


def reproduce_json(capsys, *argv) -> tuple[int, dict]:
    code = main(["reproduce", *map(str, argv), "--json", "--no-progress"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code in (0, 1) else err


def test_reproduce_a_card_end_to_end(cards, tmp_path, capsys):
    card, out = cards / "zoo_tiny.ft", tmp_path / "repro"
    logged = {r["step"]: r for r in map(json.loads, (card / "metrics.jsonl").read_text().splitlines())}

    # shortened: the first epoch of the unchanged 2-epoch schedule, against the card's own eval at step 8
    code, r = reproduce_json(capsys, card, "--epochs", "1", "--out", out)
    assert code == 0, r
    assert (r["mode"], r["step"], r["total_steps"], r["reused"]) == ("shortened", 8, 16, False)
    assert r["card_acc"] == logged[8]["eval_acc"] and r["delta_pts"] == 0.0 and r["passed"], r
    assert r["recipe_changes"] == [
        {
            "field": "model.pretrained",
            "card": yaml.safe_load((card / "recipe.yaml").read_text())["model"]["pretrained"],
            "reproduced": f"local-dir:{(cards / 'zoo_tiny.base').resolve()}",
        }
    ]
    assert ckpt.latest_valid(out / "checkpoints").name == ckpt.checkpoint_name(8), "stopped right after step 8"
    assert not (out / "model").exists(), "a time-boxed session: no final model"

    # the same request again: reused, not retrained; the table says so
    assert main(["reproduce", str(card), "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "(reused)" in text and "first 8 of 16 steps (1 of 2 epochs)" in text and "PASS" in text

    # full run: resumes the shortened one (bitwise-exact resume) and compares with result.json
    code, r = reproduce_json(capsys, card, "--out", out)
    card_result = json.loads((card / "result.json").read_text())
    assert code == 0 and r["mode"] == "full" and not r["reused"], r
    assert r["card_acc"] == card_result["final_acc"] and r["delta_pts"] == 0.0, r
    assert json.loads((out / "result.json").read_text())["final_acc"] == card_result["final_acc"]

    # a card whose logged accuracy disagrees fails (exit 1) against the same, reused, reproduction
    # (next to the real one: the resolved base path is part of the recipe, so the reproduction is the same run)
    tampered = shutil.copytree(card, cards / "zoo_tiny.ft_tampered")
    records = [json.loads(x) for x in (tampered / "metrics.jsonl").read_text().splitlines()]
    for rec in records:
        if rec["step"] == 8 and "eval_acc" in rec:
            rec["eval_acc"] += 0.02
    (tampered / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
    code, r = reproduce_json(capsys, tampered, "--epochs", "1", "--out", out)
    assert code == 1 and r["reused"] and not r["passed"] and r["delta_pts"] == pytest.approx(-2.0), r

    # an --out holding a run of another recipe is refused before anything is written
    before = (out / "model" / "model.safetensors").read_bytes()
    code = main(["reproduce", str(card), "--epochs", "1", "--out", str(out), "--set", "optim.lr=0.01"])
    assert code == 2 and "another recipe" in capsys.readouterr().err
    assert (out / "model" / "model.safetensors").read_bytes() == before
