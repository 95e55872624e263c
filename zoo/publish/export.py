"""Export a finished run to a hub-ready folder with a generated model card (``zoo export RUN_DIR OUT_DIR``).

An export holds the run's evaluated weights (EMA when the run used EMA: the run's ``model/`` folder already holds
exactly those) re-saved with their hashes, the timm ``config.json``, ``README.md`` (rendered by ``zoo.publish.card``
from
the run's data), ``recipe.yaml`` verbatim, ``profile.json`` (the efficiency measurement the card quotes), the run's
``result.json`` / ``manifest.json`` / ``metrics.jsonl`` and ``training_curve.png``. Input problems raise
``ExportError`` (a ValueError naming file and field), which ``zoo`` turns into exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.data.datasets import build_datasets
from zoo.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
from zoo.hub import WEIGHTS_NAME, load_folder, read_metadata, save_model_folder, weights_hash
from zoo.measure.profile import profile_model
from zoo.models.pretrained import published_repo_of
from zoo.publish.card import PLACEHOLDER_REPO, PLOT_NAME, CardInputs, render_card
from zoo.publish.onnx_export import export_onnx
from zoo.publish.per_class import CONFUSION_PLOT, PER_CLASS_FILE, evaluate_per_class, plot_confusion
from zoo.publish.run_history import structure_events, training_series
from zoo.training.recipe import recipe_from_dict
from zoo.training.run_folder import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_DIR,
    RECIPE_FILE,
    RESULT_FILE,
    RunFileError,
    read_json_object,
    read_records,
)
from zoo.utils import manifest as mf
from zoo.utils.atomic_dir import recover_replaced, replace_dir
from zoo.utils.faults import fault_point
from zoo.utils.manifest import recipe_hash

if TYPE_CHECKING:
    from torch import nn

COPIED_FILES = (RECIPE_FILE, RESULT_FILE, MANIFEST_FILE, METRICS_FILE)
ONNX_NAME = "model.onnx"


# the export's input errors are run-folder file errors: one error type, naming the file and the field
ExportError = RunFileError


@dataclass
class Run:
    path: Path
    recipe_text: str
    recipe: object  # zoo.training.recipe.Recipe
    result: dict
    manifest: dict
    records: list[dict]
    model: nn.Module  # noqa: F821
    weights_meta: dict


def read_run(run_dir: str | Path) -> Run:
    """Read and cross-check a finished run: recipe, manifest and weights must carry the same recipe hash."""
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(str(run_dir), "<folder>", "run folder not found")
    result = read_json_object(run_dir / RESULT_FILE)
    for key in ("final_acc", "wall_clock_s", "img_per_s", "steps"):
        v = result.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ExportError(str(run_dir / RESULT_FILE), key, f"missing or not a finite number: {v!r}")
    manifest = read_json_object(run_dir / MANIFEST_FILE)
    rpath = run_dir / RECIPE_FILE
    if not rpath.is_file():
        raise ExportError(str(rpath), "<file>", "missing")
    text = rpath.read_text()
    try:
        recipe = recipe_from_dict(yaml.safe_load(text) or {}, str(rpath))
    except yaml.YAMLError as e:
        raise ExportError(str(rpath), "<file>", f"not valid YAML: {e}") from None
    records = read_records(run_dir / METRICS_FILE)
    model = load_folder(run_dir / MODEL_DIR)  # verifies the weights against their stored hash
    meta = read_metadata(run_dir / MODEL_DIR / WEIGHTS_NAME)
    rh = recipe_hash(recipe.identity())
    if manifest.get("recipe_hash") != rh:
        raise ExportError(
            str(run_dir / MANIFEST_FILE),
            "recipe_hash",
            f"{manifest.get('recipe_hash')!r} but recipe.yaml hashes to {rh!r}: the files are from "
            "different runs, or recipe.yaml was edited after training",
        )
    if meta.get("recipe_hash") not in (None, rh):
        raise ExportError(
            str(run_dir / MODEL_DIR / WEIGHTS_NAME),
            "recipe_hash",
            f"{meta['recipe_hash']!r} but the run's recipe hashes to {rh!r}",
        )
    return Run(run_dir, text, recipe, result, manifest, records, model, meta)


def data_meta(recipe, model=None) -> dict:
    """Class names and normalisation the run trained with (``label_names`` / ``pretrained_cfg`` mean, std): as the
    trainer stored them in the run's model folder, else (runs from before it did) derived from the recipe's data."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("label_names") and cfg.get("mean") and cfg.get("std"):
        return {"label_names": list(cfg["label_names"]),
                "pretrained_cfg": {"mean": list(cfg["mean"]), "std": list(cfg["std"])}}  # fmt: skip
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
                img_size=d.img_size or getattr(model, "model_args", {}).get("img_size"),
                in_chans=d.in_chans or getattr(model, "model_args", {}).get("in_chans"),
                streaming=d.streaming,
                progress=False,
            )
        except (ValueError, OSError):
            return {}
        names, mean, std = b.class_names, b.mean, b.std
    return {"label_names": list(names), "pretrained_cfg": {"mean": list(mean), "std": list(std)}}


def hardware() -> dict:
    """The machine the profile is measured on (the manifest's machine fields, without its git calls)."""
    return {
        **mf.machine_info(),
        "versions": {d: mf.package_version(d) for d in mf.PACKAGES},
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def measure_profile(model: nn.Module, batch: int | None, iters: int) -> dict:

    if batch is None:
        batch = 32 if model.model_args["img_size"] <= 64 else 8
    hw = hardware()  # load average before the measurement loads the machine itself
    res = profile_model(model, batch=batch, iters=iters, warmup=2, breakdown=False)
    return {**res, "iters": iters, "warmup": 2, "hardware": hw}


def load_profile(path: Path, model: nn.Module) -> dict:
    prof = read_json_object(path)
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


def write_per_class(run: Run, folder: Path, name: str) -> tuple[dict | None, str | None]:
    """``per_class.json`` and the confusion plot of the run's model on its evaluation split (None, None when that
    data is not on this machine); returns the summary and the plot's file name (None without matplotlib)."""
    per_class = evaluate_per_class(run.model, run.recipe)
    if per_class is None:
        return None, None
    (folder / PER_CLASS_FILE).write_text(json.dumps(per_class, indent=2) + "\n")
    plotted = plot_confusion(per_class, folder / CONFUSION_PLOT, f"{name}: confusion on {per_class['acc']:.2%}")
    return per_class, CONFUSION_PLOT if plotted else None


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
    onnx: bool = False,
) -> Path:
    """Write the hub-ready folder for a finished run (built in a temporary sibling folder, then renamed); with
    ``onnx`` also ``model.onnx``, checked against the exported weights in ONNX Runtime (``zoo.publish.onnx_export``).
    """
    from huggingface_hub.utils import validate_repo_id

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
    if base_model is None:  # a hub id, or a published zoo model (its tag or bundled folder): its repo
        base_model = published_repo_of(pretrained)
    name = repo_id.split("/", 1)[1] if repo_id else run_dir.resolve().name
    src_hash = run.weights_meta.get("weights_sha256") or weights_hash(run.model)
    if weights_hash(run.model) != src_hash:
        raise ExportError(str(run_dir / MODEL_DIR / WEIGHTS_NAME), "weights_sha256", "loaded weights differ from it")

    recover_replaced(out)  # a killed earlier export's leftovers: set-aside old folder restored, stale builds removed
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extra = data_meta(run.recipe, run.model)
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
            # the profile is the slow part (tens of seconds on a small CPU): say so rather than sit silent
            print(f"export: profiling {run.model.__class__.__name__} (FLOPs, memory, img/s) ...", file=sys.stderr)
            prof = measure_profile(run.model, profile_batch, profile_iters)
        (tmp / "profile.json").write_text(json.dumps(prof, indent=2, default=str) + "\n")
        if onnx:  # from the round-tripped folder's model: the file holds what the folder's weights compute
            print(f"export: writing {ONNX_NAME} and checking it in ONNX Runtime ...", file=sys.stderr)
            onnx_record = export_onnx(exported, tmp / ONNX_NAME)
            (tmp / "onnx.json").write_text(json.dumps(onnx_record | {"path": ONNX_NAME}, indent=2) + "\n")
        per_class, confusion_plot = write_per_class(run, tmp, name)
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
            per_class=per_class,
            confusion_plot=confusion_plot,
            files=sorted([*(p.name for p in tmp.iterdir()), "README.md"]),
        )
        (tmp / "README.md").write_text(render_card(inputs))
        fault_point("export_before_replace", 0)
        replace_dir(tmp, out)  # `out` is the old or the new complete folder at every moment
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
