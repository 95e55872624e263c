"""Publishing subcommands: ``zoo export RUN_DIR OUT_DIR`` (a hub-ready folder with a generated model card),
``zoo push FOLDER ORG/NAME`` (upload with ``huggingface_hub.HfApi``) and ``zoo reproduce FOLDER`` (re-run a card's
recipe and compare with the card; the logic is in ``zoo.reproduce``).

An export holds the run's evaluated weights (EMA when the run used EMA: the run's ``model/`` folder already holds
exactly those) re-saved with their hashes, the timm ``config.json``, ``README.md`` (rendered by ``zoo.card`` from
the run's data), ``recipe.yaml`` verbatim, ``profile.json`` (the efficiency measurement the card quotes), the run's
``result.json`` / ``manifest.json`` / ``metrics.jsonl`` and ``training_curve.png``. Input problems raise
``ExportError`` (a ValueError naming file and field), which ``zoo`` turns into exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

PLOT_NAME = "training_curve.png"  # zoo.card.PLOT_NAME (imported lazily: `zoo --help` should not load the hub)
COPIED_FILES = ("recipe.yaml", "result.json", "manifest.json", "metrics.jsonl")


class ExportError(ValueError):
    """A run folder that cannot be exported; names the file and the field."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: {field}: {message}")


@dataclass
class Run:
    path: Path
    recipe_text: str
    recipe: object  # zoo.recipe.Recipe
    result: dict
    manifest: dict
    records: list[dict]
    model: nn.Module  # noqa: F821
    weights_meta: dict


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(str(path), "<file>", "missing (is the run finished?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(str(path), "<file>", f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ExportError(str(path), "<root>", "expected a JSON object")
    return data


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise ExportError(str(path), "<file>", "missing")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ExportError(str(path), f"line {i}", f"not valid JSON: {e}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ExportError(str(path), f"line {i}", "expected an object with an integer 'step'")
        records.append(rec)
    return records


def read_run(run_dir: str | Path) -> Run:
    """Read and cross-check a finished run: recipe, manifest and weights must carry the same recipe hash."""
    import yaml

    from zoo.hub import WEIGHTS_NAME, load_folder, read_metadata
    from zoo.manifest import recipe_hash
    from zoo.recipe import recipe_from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(str(run_dir), "<folder>", "run folder not found")
    result = _read_json(run_dir / "result.json")
    for key in ("final_acc", "wall_clock_s", "img_per_s", "steps"):
        v = result.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ExportError(str(run_dir / "result.json"), key, f"missing or not a finite number: {v!r}")
    manifest = _read_json(run_dir / "manifest.json")
    rpath = run_dir / "recipe.yaml"
    if not rpath.is_file():
        raise ExportError(str(rpath), "<file>", "missing")
    text = rpath.read_text()
    try:
        recipe = recipe_from_dict(yaml.safe_load(text) or {}, str(rpath))
    except yaml.YAMLError as e:
        raise ExportError(str(rpath), "<file>", f"not valid YAML: {e}") from None
    records = _read_records(run_dir / "metrics.jsonl")
    model = load_folder(run_dir / "model")  # verifies the weights against their stored hash
    meta = read_metadata(run_dir / "model" / WEIGHTS_NAME)
    rh = recipe_hash(recipe.to_dict())
    if manifest.get("recipe_hash") != rh:
        raise ExportError(
            str(run_dir / "manifest.json"),
            "recipe_hash",
            f"{manifest.get('recipe_hash')!r} but recipe.yaml hashes to {rh!r}: the files are from "
            "different runs, or recipe.yaml was edited after training",
        )
    if meta.get("recipe_hash") not in (None, rh):
        raise ExportError(
            str(run_dir / "model" / WEIGHTS_NAME),
            "recipe_hash",
            f"{meta['recipe_hash']!r} but the run's recipe hashes to {rh!r}",
        )
    return Run(run_dir, text, recipe, result, manifest, records, model, meta)


def data_meta(recipe) -> dict:
    """Class names and normalisation the run trained with (``label_names`` / ``pretrained_cfg`` mean, std)."""
    from zoo.data import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, build_datasets

    d = recipe.data
    if d.name == "fashion-mnist":
        names, mean, std = list(FASHION_MNIST_CLASSES), FASHION_MNIST_MEAN, FASHION_MNIST_STD
        names = [names[c] for c in d.classes] if d.classes else names
    else:  # image folder: statistics of its train split, exactly as training computed them
        try:
            b = build_datasets(
                d.name,
                path=d.path,
                classes=d.classes,
                train_subset=1,
                test_subset=1,
                img_size=d.img_size,
                in_chans=d.in_chans,
            )
        except (ValueError, OSError):
            return {}
        names, mean, std = b.class_names, b.mean, b.std
    return {"label_names": list(names), "pretrained_cfg": {"mean": list(mean), "std": list(std)}}


def hardware() -> dict:
    """The machine the profile is measured on (the manifest's fields, without its git calls)."""
    import platform

    from zoo import manifest as mf

    t = mf._torch_info()
    return {
        "cpu_model": mf._cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": mf._cpu_affinity(),
        "gpus": t["gpus"],
        "torch_threads": {"num_threads": t["num_threads"], "num_interop_threads": t["num_interop_threads"]},
        "platform": platform.platform(),
        "versions": {d: mf._package_version(d) for d in mf.PACKAGES},
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def measure_profile(model: nn.Module, batch: int | None, iters: int) -> dict:
    from zoo.profile import profile_model

    if batch is None:
        batch = 32 if model.model_args["img_size"] <= 64 else 8
    hw = hardware()  # load average before the measurement loads the machine itself
    res = profile_model(model, batch=batch, iters=iters, warmup=2, breakdown=False)
    return {**res, "iters": iters, "warmup": 2, "hardware": hw}


def load_profile(path: Path, model: nn.Module) -> dict:
    prof = _read_json(path)
    for key in (
        "params",
        "batch",
        "flops_fwd",
        "train_img_per_s",
        "infer_img_per_s",
        "peak_mem_train_bytes",
        "mfu",
        "gemm_peak_flops",
        "precision",
        "input_size",
        "device",
    ):
        if key not in prof:
            raise ExportError(str(path), key, "missing (expected the output of `zoo profile --json`)")
    n = sum(p.numel() for p in model.parameters())
    if prof["params"] != n:
        raise ExportError(str(path), "params", f"{prof['params']} but the exported model has {n}: another model")
    return prof


def plot_training_curve(records: list[dict], events: list[dict], path: Path, title: str) -> bool:
    """Train loss and eval accuracy against step, stage boundaries marked; False when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    from zoo.card import training_series

    s = training_series(records)
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(s["step"], s["loss"], color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    if s["eval_step"]:
        ax2 = ax.twinx()
        ax2.plot(s["eval_step"], [a * 100 for a in s["eval_acc"]], "o-", color="tab:orange", label="test accuracy")
        ax2.set_ylabel("test top-1 (%)", color="tab:orange")
    for e in events:
        ax.axvline(e["step"], color="grey", linestyle="--", linewidth=0.8)
        label = "; ".join(c.split(":")[0] for c in e["changes"]) or "stage"
        ax.annotate(
            label,
            (e["step"], 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="grey",
        )
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110)
    return True


def _check_out_dir(out: Path, run: Path, force: bool) -> None:
    o, r = out.resolve(), run.resolve()
    if o == r or o in r.parents or r in o.parents and o.relative_to(r).parts[:1] in (("model",), ("checkpoints",)):
        raise ExportError(str(out), "OUT_DIR", f"must not be the run folder, inside its model/, or contain {run}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(str(out), "OUT_DIR", "exists and is not empty; pass --force to replace it")


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    repo_id: str | None = None,
    base_model: str | None = None,
    force: bool = False,
    profile_batch: int | None = None,
    profile_iters: int = 5,
    profile_file: str | Path | None = None,
) -> Path:
    """Write the hub-ready folder for a finished run (built in a temporary sibling folder, then renamed)."""
    from huggingface_hub.utils import validate_repo_id

    from zoo.card import PLACEHOLDER_REPO, CardInputs, render_card, structure_events
    from zoo.hub import WEIGHTS_NAME, load_folder, read_metadata, save_model_folder, weights_hash

    run_dir, out = Path(run_dir), Path(out_dir)
    for rid, flag in ((repo_id, "--repo-id"), (base_model, "--base-model")):
        try:
            if rid is not None and (validate_repo_id(rid) or "/" not in rid):
                raise ValueError("expected ORG/NAME")
        except ValueError as e:
            raise ExportError(str(rid), flag, f"not a hub repo id: {e}") from None
    run = read_run(run_dir)
    _check_out_dir(out, run_dir, force)
    pretrained = run.recipe.model.pretrained
    if base_model is None and pretrained and pretrained.startswith("hf-hub:"):
        base_model = pretrained[len("hf-hub:") :].partition("@")[0]
    name = repo_id.split("/", 1)[1] if repo_id else run_dir.resolve().name
    src_hash = run.weights_meta.get("weights_sha256") or weights_hash(run.model)
    if weights_hash(run.model) != src_hash:
        raise ExportError(str(run_dir / "model" / WEIGHTS_NAME), "weights_sha256", "loaded weights differ from it")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extra = data_meta(run.recipe)
        meta = {"recipe_hash": run.weights_meta.get("recipe_hash") or run.manifest["recipe_hash"]}
        save_model_folder(run.model, tmp, metadata=meta, config_extra=extra)
        exported = load_folder(tmp)  # round trip: the folder loads, and holds exactly the evaluated weights
        if read_metadata(tmp / WEIGHTS_NAME)["weights_sha256"] != src_hash or weights_hash(exported) != src_hash:
            raise ExportError(str(tmp / WEIGHTS_NAME), "weights_sha256", "exported weights differ from the run's")
        for f in COPIED_FILES:
            shutil.copyfile(run_dir / f, tmp / f)
        if profile_file is not None:
            prof = load_profile(Path(profile_file), run.model)
        else:
            prof = measure_profile(run.model, profile_batch, profile_iters)
        (tmp / "profile.json").write_text(json.dumps(prof, indent=2, default=str) + "\n")
        config = json.loads((tmp / "config.json").read_text())
        recipe = run.recipe.to_dict()
        events = structure_events(run.records, recipe, config, int(run.result["steps"]))
        plotted = plot_training_curve(run.records, events, tmp / PLOT_NAME, f"{name}: {config['architecture']}")
        inputs = CardInputs(
            name=name,
            recipe_text=run.recipe_text,
            recipe=recipe,
            result=run.result,
            manifest=run.manifest,
            records=run.records,
            config=config,
            profile=prof,
            weights_meta=read_metadata(tmp / WEIGHTS_NAME),
            repo_id=repo_id or PLACEHOLDER_REPO,
            base_model=base_model,
            plot_file=PLOT_NAME if plotted else None,
            class_names=extra.get("label_names") if run.recipe.data.classes else None,
            files=sorted([*(p.name for p in tmp.iterdir()), "README.md"]),
        )
        (tmp / "README.md").write_text(render_card(inputs))
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    out = export_run(
        args.run_dir,
        args.out_dir,
        repo_id=args.repo_id,
        base_model=args.base_model,
        force=args.force,
        profile_batch=args.profile_batch,
        profile_iters=args.profile_iters,
        profile_file=args.profile_json,
    )
    acc = json.loads((out / "result.json").read_text())["final_acc"]
    print(f"exported {args.run_dir} -> {out} (top-1 {acc * 100:.2f}%; card: {out / 'README.md'})")
    print(f"load it: import zoo, timm; timm.create_model('local-dir:{out}', pretrained=True)")
    if not args.repo_id:
        print("the card's usage names hf-hub:ORG/NAME; re-export with --repo-id ORG/NAME before `zoo push`")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from zoo.hub import PublishError, push_folder

    readme = Path(args.folder) / "README.md"
    if readme.is_file() and f'hf-hub:{args.repo_id}"' not in readme.read_text():
        raise PublishError(
            str(readme),
            "usage",
            f"the card was not exported for {args.repo_id}; re-run "
            f"`zoo export RUN_DIR {args.folder} --force --repo-id {args.repo_id}`",
        )
    try:
        url = push_folder(args.folder, args.repo_id, private=args.private, message=args.message)
    except ValueError:
        raise  # input errors (folder, card, repo id, offline, token): exit 2 with the file and field
    except Exception as e:  # the network boundary: HTTP errors, connection errors (httpx's are not OSErrors)
        print(
            f"error: upload of {args.folder} to hf-hub:{args.repo_id} failed: {type(e).__name__}: {e}", file=sys.stderr
        )
        return 1
    print(f"pushed {args.folder} -> {url}\nload it: timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Exit 0 when the reproduction is within tolerance of the card, 1 when not (2 on bad input, from ``zoo``)."""
    from zoo.reproduce import format_report, reproduce

    # with --json the one JSON object must be all of stdout, whatever training prints on the way
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        report = reproduce(
            args.folder,
            epochs=args.epochs,
            out=args.out,
            tolerance_pts=args.tolerance,
            sets=args.set,
            progress=not args.no_progress,
        )
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["passed"] else 1


def register(sub) -> None:
    s = sub.add_parser("export", help="write a hub-ready folder (weights, config, generated model card) for a run")
    s.add_argument("run_dir", help="a finished run folder (zoo train --out)")
    s.add_argument("out_dir", help="folder to write (must be empty or absent unless --force)")
    s.add_argument("--repo-id", default=None, metavar="ORG/NAME", help="hub repo the card's usage names")
    s.add_argument(
        "--base-model",
        default=None,
        metavar="ORG/NAME",
        help="hub id of the model this run fine-tuned (default: from recipe model.pretrained if hf-hub:)",
    )
    s.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    s.add_argument("--profile-batch", type=int, default=None, help="profiling batch (default 32 up to 64 px, else 8)")
    s.add_argument("--profile-iters", type=int, default=5, help="timed profiling iterations (median)")
    s.add_argument(
        "--profile-json",
        default=None,
        metavar="FILE",
        help="use this `zoo profile --json` measurement instead of measuring now",
    )
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("push", help="upload an exported folder to the Hugging Face hub (token from HF_TOKEN)")
    s.add_argument("folder")
    s.add_argument("repo_id", metavar="ORG/NAME")
    s.add_argument("--private", action="store_true", help="create the repo as private")
    s.add_argument("--message", default=None, help="commit message")
    s.set_defaults(fn=cmd_push)

    s = sub.add_parser("reproduce", help="re-run a model card's recipe (optionally its first K epochs) and compare")
    s.add_argument("folder", help="a model card folder (zoo export output), e.g. model_cards/NAME")
    s.add_argument(
        "--epochs",
        type=float,
        default=None,
        metavar="K",
        help="stop after K epochs of the unchanged schedule and compare with the card's logged evaluation there",
    )
    s.add_argument("--out", default=None, metavar="RUN_DIR", help="run folder (default runs/reproduce/NAME)")
    s.add_argument(
        "--tolerance",
        type=float,
        default=0.5,  # zoo.reproduce.DEFAULT_TOLERANCE_PTS (not imported: `zoo --help` stays light)
        metavar="PTS",
        help="largest |accuracy delta| in percentage points that passes (default 0.5)",
    )
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_reproduce)
