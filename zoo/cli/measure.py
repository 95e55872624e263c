"""Measurement subcommands: ``zoo profile`` (and, as they land, ``zoo bench`` and ``zoo plan``)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _profile_target(name: str, img_size: int | None):
    """A model name / folder, or a recipe (its model, built for its data)."""
    from zoo.training.recipe_lookup import resolve_recipe_path

    if name.endswith((".yaml", ".yml")):
        from zoo.data.datasets import build_datasets
        from zoo.training.recipe import load_recipe
        from zoo.training.stage_plan import build_model

        recipe = load_recipe(resolve_recipe_path(name))
        d = recipe.data
        bundle = build_datasets(d.name, path=d.path, classes=d.classes, train_subset=64, test_subset=64,
                                streaming=d.streaming)  # fmt: skip
        return build_model(recipe, bundle)
    from zoo.hub import load_model

    kwargs = {"img_size": img_size} if img_size else {}
    return load_model(name, **kwargs)


def cmd_profile(args: argparse.Namespace) -> int:
    from zoo.measure.profile import format_profile, profile_model

    model = _profile_target(args.target, args.img_size)
    precision = args.precision
    if precision == "auto":  # what a recipe's `train.precision: auto` would choose here, then profiled
        from zoo.training.precision import choose_precision

        precision, ratio = choose_precision(model, args.batch)
        print(f"auto: {precision} (bf16 step {ratio:.2f}x the fp32 speed on this machine)", file=sys.stderr)
    res = profile_model(model, batch=args.batch, img_size=args.img_size, precision=precision, iters=args.iters)
    print(json.dumps(res, default=str) if args.json else format_profile(res))
    return 0


def register(sub) -> None:
    register_profile(sub)
    register_bench(sub)
    register_plan(sub)
    s = sub.add_parser("readme", help="rewrite README result sections from saved bench summaries")
    s.add_argument("--bench-dir", default="results", help="folder of suite summaries (SUITE/summary.json)")
    s.add_argument("--readme", default="README.md")
    s.set_defaults(fn=cmd_readme)


def cmd_readme(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zoo.bench.readme import bench_markdown, update_readme

    done = []
    summaries = [(f, json.loads(f.read_text())) for f in sorted(Path(args.bench_dir).glob("*/summary.json"))]

    # a suite's full run, when there is one, is what its section shows: quick summaries are written first; among
    # full runs, the one kept in results/SUITE itself is written last (results/SUITE-variant is a record kept aside,
    # e.g. a rerun of one arm in another session, which README notes rather than tabulates)
    def order(fs: tuple[Path, dict]) -> tuple[bool, bool]:
        return not fs[1].get("quick"), fs[0].parent.name == fs[1]["suite"]

    for summary_file, summary in sorted(summaries, key=order):
        update_readme(Path(args.readme), f"bench-{summary['suite']}", bench_markdown(summary))
        done.append(f"{summary['suite']} ({summary_file})")
    demo = Path(args.bench_dir) / "demo" / "demo.json"
    if demo.is_file():  # kept by `zoo demo --keep results/demo`
        from zoo.demo import demo_markdown

        body = demo_markdown(json.loads(demo.read_text()))
        png = demo.with_suffix(".png")
        if png.is_file():  # linked relative to the README, wherever it and the results are
            link = Path(os.path.relpath(png.resolve(), Path(args.readme).resolve().parent)).as_posix()
            body += f"\n\n![zoo demo: accuracy against inference throughput]({link})"
        update_readme(Path(args.readme), "demo", body)
        done.append(f"demo ({demo})")
    from zoo.bench.readme import zoo_table
    from zoo.models.pretrained import MODEL_CARDS

    if MODEL_CARDS.is_dir():
        update_readme(Path(args.readme), "zoo", zoo_table(MODEL_CARDS))
        done.append("zoo table (model_cards/)")
    print("updated: " + (", ".join(done) if done else f"nothing (no summaries under {args.bench_dir})"))
    return 0


def register_profile(sub) -> None:
    s = sub.add_parser("profile", help="FLOPs, peak memory, throughput and MFU of a model or recipe")
    s.add_argument("target", help="model name, folder, local-dir:/hf-hub: id, or recipe .yaml")
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--img-size", type=int, default=None)
    s.add_argument(
        "--precision", choices=["fp32", "bf16", "auto"], default="fp32", help="auto: measure both, profile the faster"
    )
    s.add_argument("--iters", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_profile)


def cmd_bench(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from zoo.bench.runner import keep_results
    from zoo.bench.suites import SUITES
    from zoo.utils.manifest import collect_manifest, write_json_atomic

    if args.suite not in SUITES:
        raise ValueError(f"zoo bench: suite: unknown suite {args.suite!r} (available: {', '.join(sorted(SUITES))})")
    name = f"{args.suite}{'-quick' if args.quick else ''}"
    out = Path(args.out or f"runs/bench/{name}")
    out.mkdir(parents=True, exist_ok=True)
    kept = Path(args.results) / name if args.results else None
    seeds = [int(s) for s in args.seeds.split(",")]
    with keep_results(kept):
        summary = SUITES[args.suite](
            quick=args.quick, out=out, seeds=seeds, allow_mismatch=args.allow_mismatch, overrides=args.set
        )
    summary = {
        "suite": args.suite,
        "quick": args.quick,
        "seeds": seeds,
        "overrides": args.set,
        **summary,
        "manifest": collect_manifest(extra={"arm": None}),
    }
    write_json_atomic(out / "summary.json", summary)
    if kept is not None:  # the summary and its tables and plots beside the kept runs, for `zoo readme` anywhere
        kept.mkdir(parents=True, exist_ok=True)
        write_json_atomic(kept / "summary.json", summary)
        for f in [*out.glob("*.md"), *out.glob("*.png")]:
            shutil.copy2(f, kept / f.name)
    if args.update_readme:
        from zoo.bench.readme import bench_markdown, update_readme

        update_readme(Path(args.update_readme), f"bench-{args.suite}", bench_markdown(summary))
    headline = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) and k != "quick"}
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "manifest"}, default=str))
    else:
        for k, v in headline.items():
            print(f"{k:>24}: {v:.3f}" if isinstance(v, float) else f"{k:>24}: {v}")
        print(f"full results: {out / 'summary.json'}")
    return 0


def register_bench(sub) -> None:
    s = sub.add_parser("bench", help="run a benchmark suite (precision, overhead, routing, ...) and report ratios")
    s.add_argument("suite")
    s.add_argument("--quick", action="store_true", help="reduced version (~2 minutes) that still measures real ratios")
    s.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    s.add_argument("--seeds", default="0,1,2", help="seeds for multi-seed training arms (full suites)")
    s.add_argument("--out", default=None, help="folder of the runs (default runs/bench/SUITE)")
    s.add_argument(
        "--results",
        default="results",
        help="tracked folder where each finished run's records and the summary are kept and reused (results/SUITE); "
        "'' keeps nothing",
    )
    s.add_argument("--allow-mismatch", action="store_true", help="compare runs whose manifests differ")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for every training arm (e.g. schedule.epochs=9); an arm's own defining overrides win",
    )
    s.add_argument(
        "--update-readme",
        metavar="README",
        default=None,
        help="rewrite the <!-- bench-SUITE --> section of this README with the results",
    )
    s.set_defaults(fn=cmd_bench)


def cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from zoo.data.datasets import build_datasets
    from zoo.measure.memory_plan import format_plan, parse_bytes, plan
    from zoo.training.recipe import load_recipe
    from zoo.training.recipe_lookup import resolve_recipe_path
    from zoo.training.stage_plan import build_model

    cap = parse_bytes(args.memory)
    recipe = load_recipe(resolve_recipe_path(args.recipe), args.set)
    d = recipe.data
    bundle = build_datasets(d.name, path=d.path, classes=d.classes, train_subset=64, test_subset=64,
                            img_size=d.img_size, in_chans=d.in_chans, streaming=d.streaming)  # fmt: skip
    model = build_model(recipe, bundle)
    best, cands = plan(model, d.batch_size, cap, margin=args.margin, rounds=args.rounds)
    print(format_plan(best, cands, cap, args.margin))
    if best is None:
        return 1
    if args.out:
        overrides = {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in best.overrides()}
        Path(args.out).write_text(yaml.safe_dump({"overrides": overrides, "measured": {
            "peak_bytes": best.peak_bytes, "img_per_s": best.img_per_s, "cap_bytes": cap}}))  # fmt: skip
        print(f"wrote {args.out}")
    return 0


def register_plan(sub) -> None:
    s = sub.add_parser("plan", help="find the fastest micro-batch / checkpointing / precision under a memory cap")
    s.add_argument("recipe")
    s.add_argument("--memory", required=True, help="peak training memory cap, e.g. 4GB or 512MiB")
    s.add_argument("--margin", type=float, default=0.9, help="share of the cap tensors may use (default 0.9)")
    s.add_argument("--rounds", type=int, default=3, help="timed rounds per candidate")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--out", default=None, help="write the chosen overrides (YAML) here")
    s.set_defaults(fn=cmd_plan)
