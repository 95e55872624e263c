"""Measurement subcommands: ``zoo profile`` (and, as they land, ``zoo bench`` and ``zoo plan``)."""

from __future__ import annotations

import argparse
import json


def _profile_target(name: str, img_size: int | None):
    """A model name / folder, or a recipe (its model, built for its data)."""
    from zoo.cli import resolve_recipe_path

    if name.endswith((".yaml", ".yml")):
        from zoo.data import build_datasets
        from zoo.recipe import load_recipe
        from zoo.stages import build_model

        recipe = load_recipe(resolve_recipe_path(name))
        d = recipe.data
        bundle = build_datasets(d.name, path=d.path, classes=d.classes, train_subset=64, test_subset=64)
        return build_model(recipe, bundle)
    from zoo.hub import load_model

    kwargs = {"img_size": img_size} if img_size else {}
    return load_model(name, **kwargs)


def cmd_profile(args: argparse.Namespace) -> int:
    from zoo.profile import format_profile, profile_model

    model = _profile_target(args.target, args.img_size)
    res = profile_model(model, batch=args.batch, img_size=args.img_size, precision=args.precision, iters=args.iters)
    print(json.dumps(res, default=str) if args.json else format_profile(res))
    return 0


def register(sub) -> None:
    s = sub.add_parser("profile", help="FLOPs, peak memory, throughput and MFU of a model or recipe")
    s.add_argument("target", help="model name, folder, local-dir:/hf-hub: id, or recipe .yaml")
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--img-size", type=int, default=None)
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    s.add_argument("--iters", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_profile)
