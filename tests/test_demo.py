"""The README's main job, `zoo demo`: its recipe composes growth, unfreezing and routing on the published model,
and the command (shortened by --set) evaluates before/after for real and exports a loadable, grown, routed folder."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from zoo.cli.main import main
from zoo.cli.train import DEMO_RECIPE
from zoo.models.pretrained import CHECKOUT, LOCAL_DIR, resolve_local_dir
from zoo.nn.routing import RoutedBlock
from zoo.training.recipe import load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path

SOURCE = "local-dir:model_cards/zoo_vit_micro_p7.fmnist"
# 512 images / batch 128 = 4 steps an epoch, 4 epochs: growth at step 2, an unfreeze boundary almost every step
SETS = ["data.train_subset=512", "data.test_subset=200", "schedule.epochs=4", "train.log_every=2"]


def test_local_dir_resolves_from_cwd_then_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_local_dir(SOURCE) == LOCAL_DIR + str(CHECKOUT / "model_cards" / "zoo_vit_micro_p7.fmnist")
    assert resolve_local_dir("local-dir:runs/nowhere") == "local-dir:runs/nowhere", "unknown paths stay as written"
    assert resolve_local_dir("hf-hub:org/name") == "hf-hub:org/name"
    (tmp_path / "model_cards" / "zoo_vit_micro_p7.fmnist").mkdir(parents=True)
    assert resolve_local_dir(SOURCE) == SOURCE, "a folder in the working directory wins (runs/ outputs live there)"


def test_demo_recipe_composes_growth_unfreezing_and_routing(tmp_path, monkeypatch, fmnist):
    from zoo.data.datasets import build_datasets
    from zoo.training.stage_plan import StagePlan, apply_structure, build_model, set_step_values

    monkeypatch.chdir(tmp_path)  # the bundled model must resolve from any working directory
    recipe = load_recipe(resolve_recipe_path(DEMO_RECIPE))
    assert recipe.model.pretrained == SOURCE
    bundle = build_datasets("fashion-mnist", train_subset=64, test_subset=64)
    published = timm.create_model("zoo_vit_micro_p7.fmnist", pretrained=True).eval()
    model = build_model(recipe, bundle).eval()
    assert len(model.blocks) == 6 and [isinstance(b, RoutedBlock) for b in model.blocks] == [False, True] * 3

    total = 936  # 2 epochs of 468 steps
    plan = StagePlan.from_recipe(recipe, total)
    plan.validate(model)
    assert plan.growth_steps == [94], "one growth event, at 10%"
    apply_structure(model, plan, 0)
    set_step_values(model, plan, 0)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():  # converted to routed blocks at capacity 1.0: still the published function
        torch.testing.assert_close(model(x), published(x), atol=1e-5, rtol=0)

    firsts, depth = [], {}
    for step in range(total):
        if step == 94:  # the growth boundary: the `zero` operator keeps the (annealing, routed) model's function
            set_step_values(model, plan, step)
            with torch.no_grad():
                y_before = model.eval()(x)
        if plan.changes_at(step):
            apply_structure(model, plan, step)
        set_step_values(model, plan, step)
        if step == 94:
            with torch.no_grad():
                torch.testing.assert_close(model.eval()(x), y_before, atol=1e-5, rtol=0)
        firsts.append(plan.describe(step)["trainable_from"])
        depth[step] = len(model.blocks)
    assert depth[93] == 6 and depth[94] == 8
    assert firsts[0] == 7 and firsts[-1] == 0, "head only at the start, everything by the end (top-down)"
    assert all(a >= b for a, b in zip(firsts, firsts[1:])) and len(set(firsts)) == 8
    caps = [b.capacity for b in model.blocks if isinstance(b, RoutedBlock)]
    assert [isinstance(b, RoutedBlock) for b in model.blocks] == [False, True] * 4 and caps == [0.5] * 4


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, fmnist):
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo"
    argv = ["demo", "--out", str(out), "--profile-batch", "32", "--profile-rounds", "2", "--no-progress"]
    argv += [x for s in SETS for x in ("--set", s)]
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # not the checkout: the recipe's model_cards/ path must still resolve
        assert main(argv) == 0
    return out, text.getvalue()


def test_demo_evaluates_before_and_after_for_real(demo_run):
    from zoo.training.evaluation import evaluate_source

    out, text = demo_run
    s = json.loads((out / "demo.json").read_text())
    before, after = s["before"], s["after"]
    assert before["n"] == after["n"] == 200, "both on the recipe's test subset"
    again = evaluate_source(resolve_local_dir(SOURCE), "fashion-mnist", test_subset=200)
    assert before["acc"] == again["acc"] and before["acc"] > 0.8, "the published weights, not a fresh model"
    exported = evaluate_source(f"local-dir:{out / 'export'}", "fashion-mnist", test_subset=200)
    assert after["acc"] == exported["acc"] == pytest.approx(s["run_final_acc"], abs=1e-9)
    assert after["acc"] > 0.5, "fine-tuned from the published weights (a fresh model cannot reach this in 16 steps)"
    assert s["train"]["steps"] == 16 and not s["train"]["reused"]
    assert after["params"] > before["params"] and after["infer_img_per_s"] > 0 and before["flops_per_img"] > 0
    for words in ("before (published)", "after (fine-tuned)", f"{before['acc'] * 100:.2f}%", str(out / "export")):
        assert words in text


def test_demo_exports_a_grown_routed_hub_folder_with_card(demo_run):
    from zoo.hub import load_model

    out, _ = demo_run
    folder = out / "export"
    cfg = json.loads((folder / "config.json").read_text())
    args = cfg["model_args"]
    assert args["depth"] == 8
    assert args["routing"]["capacity"] == 0.5 and args["routing"]["layers"] == "every_other"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert len(model.blocks) == 8 and sum(isinstance(b, RoutedBlock) for b in model.blocks) == 4
    ours = load_model(f"local-dir:{folder}").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():  # timm's own loader reads the trained weights (not just the architecture)
        torch.testing.assert_close(model(x), ours(x), atol=0, rtol=0)
    card = (folder / "README.md").read_text()
    assert "base_model: growzoo/zoo_vit_micro_p7.fmnist" in card
    assert all(t in card for t in ("token-routing", "progressive-growth", "gradual-unfreezing"))


def test_finished_demo_run_is_recognised_for_reuse(demo_run):
    from zoo.demo import finished_run

    out, _ = demo_run
    path = resolve_recipe_path(DEMO_RECIPE)
    assert finished_run(out, load_recipe(path, SETS))
    assert not finished_run(out, load_recipe(path, [*SETS, "optim.lr=0.001"])), "another recipe is not reused"
