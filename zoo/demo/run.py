"""``zoo demo``: the README's main job. From the published base (its hub folder), make a better model and a faster one
(``zoo.demo.models``), then compare the three side by side and export the two as hub-ready folders.

Every step is what the separate commands run, so the demo shows their real behaviour: ``zoo eval``'s
``evaluate_source`` (each model on the same test split, the two new ones from their exported folders: what a user
downloads), ``zoo train``'s ``train`` (resumable), ``zoo export``'s ``export_run`` (card with ``base_model``,
profile, weights round trip) and the benchmark harness's interleaved inference timing.

Layout of ``--out``: ``runs/NAME`` (each training run), ``NAME`` (its hub-ready folder), ``demo.json`` (the
summary), ``demo.md`` (the table) and ``demo.png`` (accuracy against inference throughput).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from zoo.bench.stats import paired_accuracy_diff
from zoo.demo.models import BASE, DEMO_MODELS, DemoModel
from zoo.demo.report import better_on, demo_markdown, goal_checks, offered, plot_demo
from zoo.demo.scratch_cost import scratch_quote
from zoo.hub import load_model
from zoo.measure.compare import compare_models
from zoo.models.pretrained import CHECKOUT, HUB_ORG, published_name, resolve_local_dir
from zoo.publish.export import export_run
from zoo.training.evaluation import evaluate_source
from zoo.training.recipe import Recipe, RecipeError, load_recipe
from zoo.training.recipe_lookup import resolve_recipe_path
from zoo.training.run_folder import MANIFEST_FILE, RESULT_FILE
from zoo.training.trainer import train
from zoo.utils.manifest import collect_manifest, recipe_hash, write_json_atomic

SUMMARY_NAME, TABLE_NAME, PLOT_NAME = "demo.json", "demo.md", "demo.png"


def finished_run(out: Path, recipe: Recipe) -> bool:
    """``out`` holds a completed run of exactly this recipe (``result.json`` is written only at the end)."""

    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    done = (out / RESULT_FILE).is_file() and (out / "model").is_dir()
    return done and manifest.get("recipe_hash") == recipe_hash(recipe.identity())


def demo_recipes(models: tuple[DemoModel, ...], base: str, overrides: list[str]) -> dict[str, Recipe]:
    """Each model's recipe, starting from ``base`` (the user's overrides after, so ``--set`` shortens the demo)."""
    recipes = {}
    for m in models:
        path = resolve_recipe_path(m.recipe)
        recipe = load_recipe(path, [f"model.pretrained={base}", *overrides])
        if recipe.model.pretrained != base:
            raise RecipeError(str(path), "model.pretrained", f"the demo makes every model from its base {base}")
        recipes[m.name] = recipe
    data = {name: r.data.model_dump() for name, r in recipes.items()}
    if len({json.dumps(d, sort_keys=True) for d in data.values()}) > 1:  # one test split for the comparison
        raise RecipeError(str(resolve_recipe_path(models[1].recipe)), "data", "differs from the other demo recipes")
    return recipes


def run_demo(
    out: str | Path,
    overrides: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    profile_batch: int = 256,
    profile_rounds: int = 10,
    progress: bool = True,
    models: tuple[DemoModel, ...] = DEMO_MODELS,
    base: str = BASE,
    results: Path = CHECKOUT / "results",
) -> dict:
    """Make ``models`` from ``base`` into ``out``; returns the summary it also writes to ``out/demo.json`` (with
    the table ``demo.md`` and the plot ``demo.png``). With ``resume``, a finished training run is reused and an
    interrupted one continues from its last checkpoint; evaluation, export and timing always run again (a minute)."""

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the recipes name the base as written (their identity must not depend on the working directory); loading
    # resolves it from the working directory, else the checkout
    recipes = demo_recipes(models, base, list(overrides or []))
    base = resolve_local_dir(base)
    d = next(iter(recipes.values())).data

    def evaluate(src: str) -> dict:  # the recipes' own test split (and subset), exactly what `zoo eval` computes
        return evaluate_source(src, d.name, path=d.path, batch_size=d.eval_batch_size, classes=d.classes,
                               test_subset=d.test_subset, per_sample=True)  # fmt: skip

    base_eval = evaluate(base)  # first: a data or source problem stops the demo before any training
    base_correct = base_eval.pop("correct")

    def evaluate_against_base(src: str) -> dict:  # each image's right/wrong beside the base's: a paired difference
        res = evaluate(src)
        diff = paired_accuracy_diff(res.pop("correct").tolist(), base_correct.tolist())
        return {**res, "top1_diff": {k: diff[k] for k in ("diff", "ci_low", "ci_high", "p_value", "n_ab", "n_ba")}}

    base_name = published_name(base) or base
    print(f"base: {base_name}: top-1 {base_eval['acc'] * 100:.2f}% on {base_eval['n']} test images")
    entries = [_base_entry(base_name, base, base_eval)]
    for m in models:
        entries.append(_make(m, recipes[m.name], out, base_name, resume, force, progress, evaluate_against_base))
        config = json.loads((out / m.name / "config.json").read_text())  # the exported model's architecture
        entries[-1]["scratch"] = m.scratch_suite and scratch_quote(results, m.scratch_suite, recipes[m.name], config)

    t0 = time.perf_counter()
    loaded = {e["name"]: load_model(e["source"]) for e in entries}
    prof = compare_models(loaded, batch=profile_batch, rounds=profile_rounds, reference=base_name)
    for e in entries:
        p = prof[e["name"]]
        e.update(params=p["params"], gflops=p["flops_per_img"] / 1e9, infer_img_per_s=p["infer_img_per_s"])
        e.update(infer_speedup=p["infer_speedup"], infer_speedup_ci=p["infer_speedup_ci"])
    for e in entries[1:]:  # a model better on no axis is measured and kept on disk, but not offered as a result
        e["better_on"] = better_on(e, entries[0])
    summary = {
        "base": base_name,
        "models": entries,
        "overrides": list(overrides or []),
        "profile": {"batch": profile_batch, "rounds": profile_rounds, "seconds": time.perf_counter() - t0},
        "machine": _machine(),
        "out": str(out),
    }
    summary["goals"] = goal_checks(summary)
    summary["seconds"] = time.perf_counter() - t_start
    (out / TABLE_NAME).write_text(demo_markdown(summary) + "\n")
    (out / PLOT_NAME).unlink(missing_ok=True)  # never leave an earlier demo's plot beside this table
    summary["plot"] = PLOT_NAME if plot_demo(summary, out / PLOT_NAME) else None
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary


def _base_entry(name: str, source: str, evaluation: dict) -> dict:
    folder = Path(source.removeprefix("local-dir:"))
    record = _read_result(folder)  # a published folder carries its training record
    return {"name": name, "role": "base", "how": "published", "source": source, "top1": evaluation["acc"],
            "n_test": evaluation["n"], "train_s": record.get("wall_clock_s"), "reused": None}  # fmt: skip


def _make(m: DemoModel, recipe: Recipe, out: Path, base_name: str, resume, force, progress, evaluate) -> dict:
    """Train (or reuse) one model, export its hub folder, evaluate the folder."""
    run_dir, export_dir = out / "runs" / m.name, out / m.name
    reused = resume and not force and finished_run(run_dir, recipe)
    print(f"{m.role}: {m.name} ({m.how}; recipe {m.recipe})" + (": reusing the finished run" if reused else ""))
    if not reused:
        train(recipe, run_dir, resume=resume, force=force, progress=progress)
    base_model = f"{HUB_ORG}/{base_name}" if "/" not in base_name and ":" not in base_name else None
    export_run(run_dir, export_dir, base_model=base_model, force=True)
    result = _read_result(run_dir)
    evaluation = evaluate(f"local-dir:{export_dir}")  # the exported folder itself: what a user downloads
    return {"name": m.name, "role": m.role, "how": m.how, "recipe": m.recipe, "source": f"local-dir:{export_dir}",
            "top1": evaluation["acc"], "top1_diff": evaluation["top1_diff"], "n_test": evaluation["n"],
            "train_s": result["wall_clock_s"], "steps": result["steps"], "run_final_acc": result["final_acc"],
            "reused": reused}  # fmt: skip


def _read_result(folder: Path) -> dict:
    try:
        return json.loads((folder / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _machine() -> dict:
    m = collect_manifest()
    return {k: m.get(k) for k in ("cpu_model", "cpu_capability", "cpu_count", "torch_threads", "gpus")}


def demo_json(summary: dict) -> dict:
    """``zoo demo --json``: the base's name and one object per model it offers (the base first); ``withheld``: the
    same for each model it made that is better than the base on no axis (``report.better_on``)."""
    keys = ("name", "top1", "infer_img_per_s", "params", "gflops", "train_s")
    shown, withheld = offered(summary)
    return {"base": summary["base"], "models": [{k: e[k] for k in keys} for e in shown],
            "withheld": [{k: e[k] for k in keys} for e in withheld]}  # fmt: skip
