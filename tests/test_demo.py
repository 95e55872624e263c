"""The README's main job, `zoo demo`: from the published base (its bundled hub folder), a better model (grown while
fine-tuning) and a faster one (routed blocks, distilled from the base), evaluated on the same split, timed side by
side, exported as hub-ready folders whose cards name the base; shortened here by --set."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import timm
import torch

from zoo.cli.main import main
from zoo.demo import BASE, DEMO_MODELS
from zoo.models.pretrained import CHECKOUT, LOCAL_DIR, resolve_local_dir

SOURCE = "local-dir:model_cards/zoo_vit_micro_p7.fmnist"
# 512 images / batch 128 = 4 steps an epoch, 2 epochs each
SETS = ["data.train_subset=512", "data.test_subset=200", "schedule.epochs=2", "train.log_every=2"]
JSON_KEYS = {"name", "top1", "infer_img_per_s", "params", "gflops", "train_s"}


def test_local_dir_resolves_from_cwd_then_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_local_dir(SOURCE) == LOCAL_DIR + str(CHECKOUT / "model_cards" / "zoo_vit_micro_p7.fmnist")
    assert resolve_local_dir("local-dir:runs/nowhere") == "local-dir:runs/nowhere", "unknown paths stay as written"
    assert resolve_local_dir("hf-hub:org/name") == "hf-hub:org/name"
    (tmp_path / "model_cards" / "zoo_vit_micro_p7.fmnist").mkdir(parents=True)
    assert resolve_local_dir(SOURCE) == SOURCE, "a folder in the working directory wins (runs/ outputs live there)"


def _demo(tmp, *extra: str) -> tuple[int, str]:
    argv = ["demo", "--out", str(tmp / "demo"), "--profile-batch", "32", "--profile-rounds", "2", "--no-progress"]
    argv += [*extra, *(x for s in SETS for x in ("--set", s))]
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # not the checkout: the base's model_cards/ folder must still resolve
        rc = main(argv)
    return rc, text.getvalue()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, fmnist):
    tmp = tmp_path_factory.mktemp("demo")
    rc, text = _demo(tmp, "--json")
    assert rc == 0
    return tmp / "demo", json.loads(text)  # stdout is the one JSON object (progress lines go to stderr)


def test_demo_json_has_the_base_and_one_object_per_model(demo_run):
    out, printed = demo_run
    assert printed["base"] == "zoo_vit_micro_conv16_p4.fmnist"
    assert printed["models"][0]["name"] == printed["base"]
    every = {m["name"]: m for m in printed["models"] + printed["withheld"]}
    assert len(every) == 1 + len(DEMO_MODELS) and set(every) == {printed["base"], *(m.name for m in DEMO_MODELS)}
    for m in every.values():
        assert set(m) == JSON_KEYS
        assert 0 < m["top1"] <= 1 and m["infer_img_per_s"] > 0 and m["params"] > 0 and m["gflops"] > 0
        assert m["train_s"] > 0, "the base's from its published record, the others from their runs"
    # what is offered and what is withheld follows the summary's per-axis verdicts
    summary = json.loads((out / "demo.json").read_text())
    for e in summary["models"][1:]:
        assert (e["name"] in {m["name"] for m in printed["withheld"]}) == (e["better_on"] == []), e["name"]
    base, better, faster = (every[n] for n in [printed["base"], *(m.name for m in DEMO_MODELS)])
    assert better["params"] > base["params"], "grown: more parameters"
    assert faster["gflops"] < base["gflops"] and faster["params"] == base["params"], "cls-attention routing: no weights"
    for name in ("demo.json", "demo.md", "demo.png"):
        assert (out / name).is_file(), name


def test_demo_evaluates_every_model_for_real(demo_run):
    from zoo.training.evaluation import evaluate_source

    out, printed = demo_run
    base = printed["models"][0]
    again = evaluate_source(resolve_local_dir(BASE), "fashion-mnist", test_subset=200)
    assert base["top1"] == again["acc"] and base["top1"] > 0.8, "the published weights, not a fresh model"
    summary = json.loads((out / "demo.json").read_text())
    for entry, m in zip(summary["models"][1:], DEMO_MODELS):
        exported = evaluate_source(f"local-dir:{out / m.name}", "fashion-mnist", test_subset=200)
        assert entry["top1"] == exported["acc"] == pytest.approx(entry["run_final_acc"], abs=1e-9)
        d = entry["top1_diff"]  # paired on the same 200 images: the counts give the accuracy difference exactly
        assert (d["n_ab"] - d["n_ba"]) / 200 == pytest.approx(entry["top1"] - base["top1"], abs=1e-12)
        assert d["ci_low"] <= d["diff"] <= d["ci_high"] and 0 <= d["p_value"] <= 1
        assert entry["top1"] > 0.6, "fine-tuned from the published weights (a fresh model cannot in 8 steps)"
        assert entry["steps"] == 8 and entry["reused"] is False


def test_demo_exports_loadable_folders_whose_cards_name_the_base(demo_run):
    from zoo.hub import load_model

    out, _ = demo_run
    for m in DEMO_MODELS:
        folder = out / m.name
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        ours = load_model(f"local-dir:{folder}").eval()
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():  # timm's own loader reads the trained weights (not just the architecture)
            torch.testing.assert_close(model(x), ours(x), atol=0, rtol=0)
        card = (folder / "README.md").read_text()
        assert "base_model: growzoo/zoo_vit_micro_conv16_p4.fmnist" in card, m.name
    better = json.loads((out / DEMO_MODELS[0].name / "config.json").read_text())["model_args"]
    faster = json.loads((out / DEMO_MODELS[1].name / "config.json").read_text())["model_args"]
    assert better["depth"] == 8 and faster["routing"]["capacity"] == 0.2 and faster["routing"]["router"] == "cls_attn"


def test_demo_resume_reuses_the_finished_runs_and_its_kept_copy_renders_in_readme(demo_run):
    out, printed = demo_run
    kept = out.parent / "results" / "demo"
    rc, text = _demo(out.parent, "--resume", "--keep", str(kept))
    assert rc == 0
    readme = out.parent / "README.md"
    readme.write_text(
        "# x\n<!-- demo:start -->\nSTALE-DEMO-SECTION\n<!-- demo:end -->\n<!-- zoo:start -->\n<!-- zoo:end -->\n"
    )
    assert main(["readme", "--bench-dir", str(kept.parent), "--readme", str(readme)]) == 0
    section = readme.read_text().split("<!-- demo:start -->")[1].split("<!-- demo:end -->")[0]
    assert "STALE-DEMO-SECTION" not in section and all(m.name in section for m in DEMO_MODELS) and "demo.png" in section
    summary = json.loads((out / "demo.json").read_text())
    assert [e["reused"] for e in summary["models"][1:]] == [True, True]
    first = {m["name"]: m["top1"] for m in printed["models"] + printed["withheld"]}
    assert {e["name"]: e["top1"] for e in summary["models"]} == first
    for words in ("better: zoo_vit_micro_conv16_p4_d8.fmnist_grown_distilled", "(reused)", "demo total", "demo.png"):
        assert words in text


def test_demo_refuses_a_different_run_without_force(demo_run, capsys):
    out, _ = demo_run
    before = (out / "demo.json").read_text()
    rc, _ = _demo(out.parent, "--set", "optim.lr=0.001")
    assert rc == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "demo.json").read_text() == before, "nothing overwritten"


def test_scratch_cost_is_quoted_only_for_the_same_architecture(tmp_path):
    from zoo.demo.scratch_cost import scratch_quote
    from zoo.training.recipe import load_recipe
    from zoo.training.recipe_lookup import resolve_recipe_path

    recipe = load_recipe(resolve_recipe_path("fmnist_conv16_grown"), [f"model.pretrained={BASE}"])
    suite = tmp_path / "grow-pretrained-conv16"
    for arm, kept_recipe in (("grown", "fmnist_conv16_grown"), ("scratch", "fmnist_conv16_d8")):
        kept = suite / arm / "seed1"
        kept.mkdir(parents=True)
        (kept / "recipe.yaml").write_text(resolve_recipe_path(kept_recipe).read_text())
    stat = {"mean": 0.9, "ci_low": 0.89, "ci_high": 0.91}
    arms = [{"arm": "scratch", "n": 3, "acc": stat, "wall_clock_s": {"mean": 1000.0}},
            {"arm": "grown", "n": 3, "acc": {**stat, "mean": 0.905}, "wall_clock_s": {"mean": 400.0}}]  # fmt: skip
    manifest = {"cpu_model": "X", "cpu_capability": "AVX512", "cpu_count": 2, "created_at": "2026-12-03T00:00"}
    (suite / "summary.json").write_text(json.dumps({"quick": False, "arms": arms, "manifest": manifest}))
    eight = timm.create_model("zoo_vit_micro_conv16_p4", depth=8, num_classes=10, in_chans=1, img_size=28)
    config = {"architecture": "zoo_vit_micro_conv16_p4", "num_classes": 10, "model_args": eight.model_args}
    q = scratch_quote(tmp_path, "grow-pretrained-conv16", recipe, config)
    assert q["scratch_train_s"] == 1000.0 and q["grown_train_s"] == 400.0 and q["seeds"] == 3
    other = load_recipe(resolve_recipe_path("fmnist_conv16_grown"), ["optim.lr=0.001"])
    q = scratch_quote(tmp_path, "grow-pretrained-conv16", other, config)
    assert q["scratch_acc"] == 0.9 and q["grown_acc"] is None, "another recipe, same architecture: scratch only"
    wider = {**config, "model_args": {**eight.model_args, "embed_dim": 96}}
    assert scratch_quote(tmp_path, "grow-pretrained-conv16", recipe, wider) is None, "another architecture"
    assert scratch_quote(tmp_path, "missing-suite", recipe, config) is None


def test_goal_checks_judge_each_role_from_the_measured_numbers():
    from zoo.demo.report import demo_markdown, goal_checks

    def model(role, top1, img_s):
        return {"name": role, "role": role, "how": "-", "top1": top1, "infer_img_per_s": img_s, "params": 1,
                "gflops": 0.01, "train_s": 1.0, "n_test": 10000}  # fmt: skip

    s = {
        "base": "base",
        "models": [
            model("base", 0.9086, 2000.0),
            model("better", 0.9136, 1000.0),
            model("faster", 0.9030, 2900.0),
        ],  # fmt: skip
        "profile": {"batch": 256, "rounds": 10},
        "machine": {},
        "seconds": 1.0,
        "out": "x",
    }
    checks = {c["role"]: c for c in goal_checks(s)}
    assert checks["better"]["met"] and checks["better"]["measured"] == "+0.50 pt"  # exactly the goal: met
    assert not checks["faster"]["met"] and checks["faster"]["measured"] == "x1.45 at -0.56 pt"  # too inaccurate
    s["models"][2]["top1"] = 0.9040
    assert goal_checks(s)[1]["met"]
    s["models"][1]["top1"] = 0.9135
    assert not goal_checks(s)[0]["met"]
    assert "goal (better): top-1 >= base + 0.5 pt: measured +0.49 pt: NOT met" in demo_markdown(s)
    # a demo that kept the paired speed-up judges by it (not the img/s ratio) and shows its interval
    s["models"][2].update(infer_speedup=1.38, infer_speedup_ci=[1.31, 1.47])
    assert not goal_checks(s)[1]["met"] and goal_checks(s)[1]["measured"] == "x1.38 [1.31, 1.47] at -0.46 pt"
    assert "2900 (x1.38 [1.31, 1.47])" in demo_markdown(s)


def _summary(*models) -> dict:
    return {"base": "base", "models": list(models), "profile": {"batch": 256, "rounds": 10}, "machine": {},
            "seconds": 1.0, "out": "runs/demo"}  # fmt: skip


def _entry(role, top1, speedup, params=100, gflops=0.02, diff=None):
    e = {"name": f"m_{role}", "role": role, "how": "-", "top1": top1, "infer_img_per_s": 1000.0 * speedup,
         "params": params, "gflops": gflops, "train_s": 1.0, "n_test": 10000, "infer_speedup": speedup,
         "infer_speedup_ci": [speedup * 0.9, speedup * 1.1]}  # fmt: skip
    if diff is not None:
        e["top1_diff"] = {"diff": diff[0], "ci_low": diff[1], "ci_high": diff[2], "p_value": 0.5}
    return e


def test_better_on_counts_an_axis_only_beyond_its_noise():
    from zoo.demo.report import better_on

    base = _entry("base", 0.9086, 1.0)
    assert better_on(_entry("x", 0.9116, 0.5, diff=(0.003, -0.001, 0.007)), base) == [], "gain inside its interval"
    assert better_on(_entry("x", 0.9136, 0.5, diff=(0.005, 0.001, 0.009)), base) == ["top-1"]
    assert better_on(_entry("x", 0.9087, 0.5), base) == ["top-1"], "no interval kept (old summary): the point decides"
    assert better_on(_entry("x", 0.90, 1.05), base) == [], "x1.05 [0.95, 1.16]: not faster beyond noise"
    assert better_on(_entry("x", 0.90, 1.4, gflops=0.01), base) == ["speed", "FLOPs"]
    assert better_on(_entry("x", 0.90, 0.9, params=50), base) == ["size"]


def test_a_model_better_on_no_axis_is_named_but_never_shown_as_a_result(tmp_path):
    from zoo.demo import demo_json, demo_markdown, format_demo, plot_demo

    base = _entry("base", 0.9086, 1.0)
    grown = _entry("better", 0.9086, 0.53, params=180, gflops=0.036, diff=(0.0, -0.002, 0.002))
    routed = _entry("faster", 0.9044, 1.36, gflops=0.012, diff=(-0.0042, -0.007, -0.0015))
    grown["scratch"] = {"suite": "grow-pretrained-conv16", "seeds": 3, "cpu": "X", "date": "2026-12-04",
                        "scratch_acc": 0.9064, "scratch_acc_ci": [0.9004, 0.9124], "scratch_train_s": 1000.0,
                        "grown_acc": None, "grown_train_s": None}  # fmt: skip
    s = _summary(base, grown, routed)
    assert "in 1000 s; this demo's fine-tune took 1 s (about 0.00 of that, from two sessions)" in demo_markdown(s)
    printed = demo_json(s)
    assert [m["name"] for m in printed["models"]] == ["m_base", "m_faster"]
    assert [m["name"] for m in printed["withheld"]] == ["m_better"] and set(printed["withheld"][0]) == JSON_KEYS
    md = demo_markdown(s)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert not any("m_better" in r for r in rows), "no table row for it"
    assert "| 1360 (x1.36 [1.22, 1.50]) | 1 | speed, FLOPs |" in md
    note = next(line for line in md.splitlines() if line.startswith("- not shown: better: m_better"))
    assert "top-1 +0.00 pt [-0.20, +0.20]" in note and "params x1.80" in note and "--out folder" in note
    assert "-0.42 pt [-0.70, -0.15]" in md, "the offered model's difference carries its paired interval"
    terminal = format_demo(s)
    assert "m_better" not in "".join(line for line in terminal.splitlines() if "hub-ready folder" in line)
    assert "folder stay in runs/demo for inspection" in terminal, "the terminal names the user's folder"
    pytest.importorskip("matplotlib")
    assert plot_demo(s, tmp_path / "demo.png")
