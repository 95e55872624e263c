"""``zoo demo``: the README's user story on the bundled default, end to end.

Load a published zoo model from its hub folder (the bundled copy under ``model_cards/`` stands in for the hub),
evaluate it, fine-tune it with growth + gradual unfreezing + routing (``schedules/demo_finetune.yaml``), export a
hub-ready folder with its generated card, evaluate that folder, and profile the two models side by side.

Every step reuses what the separate commands run, so the demo shows their real behaviour: ``zoo eval``'s
``evaluate_source`` for both accuracies, ``zoo train``'s ``train`` (resumable in ``--out``), ``zoo export``'s
``export_run`` (card, profile, weights round trip), and the benchmark harness's interleaved timing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from zoo.hub import load_model
from zoo.measure.compare import compare_models
from zoo.models.pretrained import HUB_ORG, published_name, resolve_local_dir
from zoo.nn.routing import resolve_route_plan
from zoo.publish.export import export_run
from zoo.training.evaluation import evaluate_source
from zoo.training.recipe import Recipe, RecipeError, load_recipe
from zoo.training.trainer import train
from zoo.utils.manifest import recipe_hash, write_json_atomic
from zoo.utils.units import si

SUMMARY_NAME = "demo.json"
EXPORT_NAME = "export"


def finished_run(out: Path, recipe: Recipe) -> bool:
    """``out`` holds a completed run of exactly this recipe (``result.json`` is written only at the end)."""

    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    done = (out / "result.json").is_file() and (out / "model").is_dir()
    return done and manifest.get("recipe_hash") == recipe_hash(recipe.identity())


def describe_model(model) -> str:
    """Architecture in a few words: name, depth, routed blocks and their capacity."""

    args = model.model_args
    text = f"{model.pretrained_cfg.get('architecture', type(model).__name__)}, {len(model.blocks)} blocks"
    plan = resolve_route_plan(len(model.blocks), args.get("routing"))
    routed = [i for i, c in enumerate(plan) if c is not None]
    if routed:
        caps = sorted({plan[i] for i in routed})
        text += f", routed at {'/'.join(f'{c:g}' for c in caps)} on blocks {','.join(map(str, routed))}"
    return text


def run_demo(
    recipe_path: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    profile_batch: int = 256,
    profile_rounds: int = 10,
    progress: bool = True,
) -> dict:
    """Run the story into ``out`` (the run) and ``out/export`` (the hub folder); returns the summary it also writes
    to ``out/demo.json``. A finished run is reused with ``resume`` (``zoo train --resume`` on a finished run has no
    evaluation left to run), so a second ``zoo demo --resume`` only re-evaluates, re-exports and re-profiles."""

    t_start = time.perf_counter()
    out = Path(out)
    recipe = load_recipe(recipe_path, overrides)
    if recipe.model.pretrained is None:
        raise RecipeError(str(recipe_path), "model.pretrained", "the demo fine-tunes a published model: set one")
    source = resolve_local_dir(recipe.model.pretrained)
    d = recipe.data

    def evaluate(src: str) -> dict:  # the recipe's own test split (and subset), exactly what `zoo eval` computes
        t0 = time.perf_counter()
        res = evaluate_source(src, d.name, path=d.path, batch_size=d.eval_batch_size, classes=d.classes,
                              test_subset=d.test_subset)  # fmt: skip
        return {**res, "seconds": time.perf_counter() - t0}

    before = evaluate(source)  # first: a data or source problem stops the demo before any training
    print(f"before: {recipe.model.pretrained}: top-1 {before['acc'] * 100:.2f}% on {before['n']} test images")

    reused = resume and not force and finished_run(out, recipe)
    if reused:
        print(f"{out} already holds the finished fine-tune: reusing it")
    else:
        train(recipe, out, resume=resume, force=force, progress=progress)
    result = json.loads((out / "result.json").read_text())

    t0 = time.perf_counter()
    name = published_name(source)
    export = export_run(out, out / EXPORT_NAME, base_model=f"{HUB_ORG}/{name}" if name else None, force=True)
    export_s = time.perf_counter() - t0
    after = evaluate(f"local-dir:{export}")  # the exported folder itself: what a user downloads

    t0 = time.perf_counter()
    models = {"before": load_model(source), "after": load_model(f"local-dir:{export}")}
    prof = compare_models(models, batch=profile_batch, rounds=profile_rounds)
    profile_s = time.perf_counter() - t0

    summary = {
        "recipe": str(recipe_path),
        "overrides": list(overrides or []),
        "source": recipe.model.pretrained,
        "run_dir": str(out),
        "export_dir": str(export),
        "before": {**before, "model": describe_model(models["before"]), **prof["before"]},
        "after": {**after, "model": describe_model(models["after"]), **prof["after"]},
        "run_final_acc": result["final_acc"],
        "train": {k: result[k] for k in ("steps", "wall_clock_s", "img_per_s")} | {"reused": reused},
        "seconds": {
            "eval_before": before["seconds"],
            "export": export_s,
            "eval_after": after["seconds"],
            "profile": profile_s,
            "total": time.perf_counter() - t_start,
        },
    }
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary


def format_demo(s: dict) -> str:
    """The before/after table, then where the folder is and how to load it."""

    b, a = s["before"], s["after"]
    rows = [
        ("model", b["model"], a["model"], ""),
        (f"test top-1 ({a['n']} images)", f"{b['acc'] * 100:.2f}%", f"{a['acc'] * 100:.2f}%",
         f"{(a['acc'] - b['acc']) * 100:+.2f} pt"),
        ("params", si(b["params"]), si(a["params"]), f"x{a['params'] / b['params']:.2f}"),
        ("GFLOPs / image (forward)", f"{b['flops_per_img'] / 1e9:.4f}", f"{a['flops_per_img'] / 1e9:.4f}",
         f"x{a['flops_per_img'] / b['flops_per_img']:.2f}"),
        (f"inference img/s (batch {a['batch']})", f"{b['infer_img_per_s']:.0f}", f"{a['infer_img_per_s']:.0f}",
         f"x{a['infer_img_per_s'] / b['infer_img_per_s']:.2f}"),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "before (published)", "", "")])
    w2 = max(len(r[2]) for r in rows + [("", "", "after (fine-tuned)", "")])
    lines = [f"{'':<{w0}}  {'before (published)':<{w1}}  {'after (fine-tuned)':<{w2}}  after/before"]
    lines += [f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:<{w2}}  {r[3]}" for r in rows]
    t = s["train"]
    how = "reused the finished run" if t["reused"] else "trained now"
    export = s["export_dir"]
    lines += [
        "",
        f"fine-tune ({s['recipe']}): {t['steps']} steps, {t['wall_clock_s']:.0f} s of training, "
        f"{t['img_per_s']:.0f} img/s ({how}); the training loop's own last evaluation: "
        f"{s['run_final_acc'] * 100:.2f}%",
        f"accuracy: `zoo eval` of {s['source']} and of the exported folder; throughput: median of "
        f"{a['rounds']} interleaved rounds of batch {a['batch']} per model",
        f"hub-ready folder: {export} (model card: {Path(export) / 'README.md'}; run folder: {s['run_dir']})",
        f"load it: import zoo, timm; model = timm.create_model('local-dir:{export}', pretrained=True)",
        f"publish it: zoo export {s['run_dir']} {export} --force --repo-id ORG/NAME && zoo push {export} ORG/NAME",
        f"demo total: {s['seconds']['total']:.0f} s (summary: {Path(s['run_dir']) / SUMMARY_NAME})",
    ]
    return "\n".join(lines)
