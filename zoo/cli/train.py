"""Training subcommands: ``zoo list``, ``zoo train``, ``zoo eval`` and ``zoo demo``.

Each command imports the library it runs when it runs, so ``zoo --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from zoo.training.recipe_lookup import resolve_recipe_path, schedules_dir


def cmd_list(args: argparse.Namespace) -> int:
    import timm

    import zoo  # noqa: F401  (registers the models)

    print("models:")
    for name in timm.list_models("zoo_*", pretrained=args.pretrained):
        print(f"  {name}")
    print("recipes:")
    for p in sorted(schedules_dir().glob("*.yaml")):
        print(f"  {p.stem}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from zoo.training.recipe import load_recipe
    from zoo.training.trainer import train

    path = resolve_recipe_path(args.recipe)
    recipe = load_recipe(path, args.set)
    out = Path(args.out) if args.out else Path("runs") / path.stem
    result = train(
        recipe, out, resume=args.resume, force=args.force, progress=not args.no_progress, stop_after=args.stop_after
    )
    acc = result.final_acc if math.isfinite(result.final_acc) else None  # a session stopped before any evaluation
    summary = {
        "out_dir": str(result.out_dir),
        "final_acc": acc,
        "steps": result.steps,
        "finished": result.steps >= result.total_steps,
        "wall_clock_s": round(result.wall_clock_s, 1),
        "img_per_s": round(result.img_per_s, 1),
    }
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not one per process
        print(json.dumps(summary, allow_nan=False))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.training.evaluation import evaluate_source

    res = evaluate_source(
        args.model, args.data, path=args.data_path, batch_size=args.batch_size, classes=args.classes, progress=True
    )
    print(json.dumps(res) if args.json else f"{args.model}: top-1 {res['acc'] * 100:.2f}% on {res['n']} images")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's main job (``zoo.demo``): from the published base, a better and a faster model, compared and
    exported."""
    import contextlib
    import shutil
    import sys

    from zoo.demo import demo_json, format_demo, run_demo

    # with --json, stdout carries the one JSON object: the demo's and the trainer's lines go to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        summary = run_demo(
            Path(args.out),
            args.set,
            resume=args.resume,
            force=args.force,
            profile_batch=args.profile_batch,
            profile_rounds=args.profile_rounds,
            progress=not args.no_progress and not args.json,
        )
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.resolve() != Path(args.out).resolve():  # the copy `zoo readme` renders
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("demo.json", "demo.md", "demo.png"):
            (keep / name).unlink(missing_ok=True)
            if (Path(args.out) / name).is_file():
                shutil.copy2(Path(args.out) / name, keep / name)
    print(json.dumps(demo_json(summary)) if args.json else "\n" + format_demo(summary))
    return 0


def register(sub) -> None:
    s = sub.add_parser("list", help="list zoo models and bundled recipes")
    s.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("train", help="train a recipe (single process, or under torchrun / accelerate launch)")
    s.add_argument("recipe", help="recipe file or name in schedules/ (e.g. fmnist_micro_dense)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    s.add_argument("--out", help="run directory (default runs/RECIPE)")
    s.add_argument("--resume", action="store_true", help="continue from the latest valid checkpoint in --out")
    s.add_argument("--force", action="store_true", help="replace a different run already in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="checkpoint and stop after this many steps (continue later with --resume)",
    )
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="evaluate a model (name, folder, local-dir:, hf-hub:) on a dataset's test split")
    s.add_argument("model")
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist or imagefolder:PATH")
    s.add_argument("--data-path", default=None, help="folder with the dataset files")
    s.add_argument("--classes", type=lambda t: [int(c) for c in t.split(",")], default=None, help="e.g. 5,6,7,8,9")
    s.add_argument("--batch-size", type=int, default=512)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser(
        "demo",
        help="the main job: from the published baseline, a better model (grown while fine-tuning) and a faster one "
        "(routed blocks, distilled), compared side by side and exported as hub-ready folders with cards",
    )
    s.add_argument("--out", default="runs/demo", help="demo folder: runs/, one hub-ready folder per model, demo.json")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of each recipe")
    s.add_argument("--resume", action="store_true", help="reuse finished runs in --out and continue interrupted ones")
    s.add_argument("--force", action="store_true", help="replace different runs already in --out")
    s.add_argument("--profile-batch", type=int, default=256, help="batch of the side-by-side inference timing")
    s.add_argument("--profile-rounds", type=int, default=10, help="interleaved timing rounds (median)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--json", action="store_true", help="print one JSON object (base, models, withheld) instead of the table"
    )
    s.add_argument("--keep", metavar="DIR", help="also copy demo.json, demo.md and demo.png to DIR (results/demo: "
                   "the copy `zoo readme` renders into README.md)")  # fmt: skip
    s.set_defaults(fn=cmd_demo)
