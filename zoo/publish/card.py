"""Model cards generated from a run's measured data: pure functions from run data to ``ModelCardData`` and markdown.

Nothing here is typed by hand: accuracy comes from ``result.json``, efficiency from the ``zoo profile`` measurement
stored next to the card (``profile.json``), training cost and hardware from ``result.json`` / ``manifest.json``, the
structure history from the stage events in ``metrics.jsonl`` together with the recipe (``zoo.publish.run_history``),
and the recipe is embedded verbatim. ``zoo export`` (``zoo/cli/publish.py``) gathers the inputs and writes the files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from zoo.publish.per_class import per_class_markdown
from zoo.publish.run_history import (
    describe_growth,
    fmt_value,
    ranges,
    routing_summary,
    stage_start,
    structure_events,
    unfreeze_summary,
)
from zoo.training.recipe_schema import DistillConfig
from zoo.utils.units import mib, si

PLACEHOLDER_REPO = "ORG/NAME"
FMNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FMNIST_PER_CLASS = {"train": 6000, "test": 1000}
PLOT_NAME = "training_curve.png"


@dataclass
class CardInputs:
    """Everything a card is rendered from (all of it read from the run and the export folder)."""

    name: str  # model name (the NAME of ORG/NAME)
    recipe_text: str  # recipe.yaml, verbatim
    recipe: dict  # the same recipe, parsed and validated (Recipe.to_dict())
    result: dict  # result.json
    manifest: dict  # manifest.json (training machine and software)
    records: list[dict]  # metrics.jsonl
    config: dict  # the exported config.json
    profile: dict  # profile.json: zoo.measure.profile.profile_model output + "hardware"
    weights_meta: dict  # safetensors metadata of the exported weights
    repo_id: str = PLACEHOLDER_REPO
    base_model: str | None = None  # hub id of the model this one was fine-tuned from
    plot_file: str | None = PLOT_NAME
    class_names: list[str] | None = None
    files: list[str] = field(default_factory=list)
    per_class: dict | None = None  # per_class.json (zoo.publish.per_class), when the data was available at export
    confusion_plot: str | None = None


# ---------------------------------------------------------------------------------------------------------- helpers
def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fenced(text: str, lang: str = "") -> str:
    """A fenced code block holding ``text`` verbatim (the fence is longer than any backtick run inside it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}{'' if text.endswith(chr(10)) else chr(10)}{fence}"


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy ``p`` measured on ``n`` images."""
    if n <= 0:
        return (float("nan"), float("nan"))
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def dataset_info(recipe: dict, result: dict | None = None, class_names: list[str] | None = None) -> dict:
    """Hub dataset id, display name, class description and image counts of the recipe's data."""
    d = recipe["data"]
    classes = d.get("classes")
    n_train = n_test = None
    if d["name"] == "fashion-mnist":
        k = len(classes) if classes else 10
        full_train, full_test = FMNIST_PER_CLASS["train"] * k, FMNIST_PER_CLASS["test"] * k
        n_train = min(d["train_subset"], full_train) if d.get("train_subset") else full_train
        n_test = min(d["test_subset"], full_test) if d.get("test_subset") else full_test
        hub_id, pretty = FMNIST_HUB_ID, "Fashion-MNIST"
    elif d["name"].startswith("hf:") and "/" in d["name"] and not Path(d["name"][3:]).expanduser().exists():
        hub_id = d["name"][3:]  # a hub dataset id (ORG/NAME); a local folder is not one
        pretty = f"Hugging Face dataset `{hub_id}`"
        n_train, n_test = d.get("train_subset"), d.get("test_subset")
    else:
        kind = "dataset" if d["name"].startswith("hf:") else "image folder"
        hub_id, pretty = None, f"{kind} `{PurePosixPath(d['name'].partition(':')[2]).name or d['name']}`"
        n_train, n_test = d.get("train_subset"), d.get("test_subset")
    if d.get("val_split") and n_train is not None:
        n_train -= d["val_split"]  # the held-out validation images were not trained on
    # what the run evaluated on, as it recorded it (older runs recorded no count)
    n_test = (result or {}).get("test_images", (result or {}).get("eval_images", n_test))
    if classes:
        names = f" ({', '.join(class_names)})" if class_names else ""
        cls = f"classes {ranges(classes)}{names}"
    else:
        cls = "all classes"
    return {"hub_id": hub_id, "pretty": pretty, "classes": cls, "n_train": n_train, "n_test": n_test}


# ------------------------------------------------------------------------------------------------------ card parts
def tags(inp: CardInputs) -> list[str]:
    t = ["timm", "image-classification", "vision-transformer", "growzoo", "safetensors"]
    r = inp.recipe
    if r.get("routing") or inp.config.get("model_args", {}).get("routing"):
        t.append("token-routing")
    if r.get("growth"):
        t.append("progressive-growth")
    if r.get("unfreeze"):
        t.append("gradual-unfreezing")
    if r["model"].get("pretrained"):
        t.append("fine-tuned")
    if r.get("distill"):
        t.append("knowledge-distillation")
    return t


def _split_name(result: dict, n_test) -> str:
    """The split the accuracy was measured on: ``test``, or ``validation`` for a run tuned on a held-out split."""
    split = "validation" if result.get("eval_split") == "val" else "test"
    return split if n_test is None else f"{split} ({n_test} images)"


def card_data(inp: CardInputs) -> ModelCardData:
    """YAML metadata: library, tags, dataset, metrics, base model, and the model-index with the measured accuracy."""
    ds = dataset_info(inp.recipe, inp.result, inp.class_names)
    acc = float(inp.result["final_acc"])
    ev = EvalResult(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=ds["hub_id"] or "imagefolder",
        dataset_name=f"{ds['pretty'].strip('`')}, {ds['classes']}",
        dataset_split=_split_name(inp.result, ds["n_test"]),
        metric_type="accuracy",
        metric_name="Top-1 accuracy",
        metric_value=round(acc, 4),
    )
    return ModelCardData(
        library_name="timm",
        license=inp.config.get("pretrained_cfg", {}).get("license", "apache-2.0"),
        pipeline_tag="image-classification",
        tags=tags(inp),
        datasets=[ds["hub_id"]] if ds["hub_id"] else None,
        metrics=["accuracy"],
        base_model=inp.base_model,
        model_name=inp.name,
        eval_results=[ev],
    )


def usage_markdown(inp: CardInputs) -> str:
    labels = 'model.pretrained_cfg["label_names"][pred]' if inp.class_names else "pred"
    return f"""```python
import timm
import torch
import zoo  # registers the zoo_* architectures with timm (pip install growzoo)

model = timm.create_model("hf-hub:{inp.repo_id}", pretrained=True).eval()
cfg = timm.data.resolve_data_config({{}}, model=model)  # input {tuple(cfg_input(inp))}, the training mean/std
transform = timm.data.create_transform(**cfg)
with torch.inference_mode():
    pred = model(transform(image).unsqueeze(0)).argmax(-1).item()  # image: a PIL image
print({labels})

# the same weights without timm's loader: never unpickles, verifies the stored weights hash
model = zoo.hub.load_model("hf-hub:{inp.repo_id}")
```"""


def cfg_input(inp: CardInputs) -> list[int]:
    return list(inp.config.get("pretrained_cfg", {}).get("input_size") or inp.profile.get("input_size") or [])


def hardware_text(hw: dict) -> str:
    cpu = hw.get("cpu_model") or "unknown CPU"
    gpus = ", ".join(hw.get("gpus") or [])
    cores = hw.get("cpu_affinity") or hw.get("cpu_count")
    text = f"{cpu}, {cores} cores" if cores else cpu
    if hw.get("cpu_capability"):  # AVX-512 vs AVX2 changes fp32 speed several times and bf16 forty times
        text += f" ({hw['cpu_capability']})"
    if hw.get("threads") or hw.get("torch_threads"):
        text += f", {hw.get('threads') or hw['torch_threads'].get('num_threads')} torch threads"
    peaks = hw.get("gemm_peak_gflops") or {}
    if peaks:
        text += ", measured GEMM peak " + " / ".join(f"{v:.0f} GFLOP/s {k}" for k, v in sorted(peaks.items()))
    return text + (f", GPUs: {gpus}" if gpus else "")


def efficiency_markdown(inp: CardInputs) -> str:
    p = inp.profile
    hw = dict(p.get("hardware") or {}, threads=p.get("threads"))
    batch = p["batch"]
    method = str(p.get("mem_method", "tensor tracking")).split(":")[0]
    rows = [
        ("Parameters", si(p["params"])),
        ("Forward GFLOPs / image", f"{p['flops_fwd'] / batch / 1e9:.4f}"),
        ("Training throughput", f"{p['train_img_per_s']:.0f} img/s (fwd + bwd + AdamW, batch {batch})"),
        ("Inference throughput", f"{p['infer_img_per_s']:.0f} img/s (batch {batch})"),
        ("Peak training memory", f"{mib(p['peak_mem_train_bytes'])} ({method})"),
        ("MFU", f"{p['mfu'] * 100:.1f}% of the measured GEMM peak ({p['gemm_peak_flops'] / 1e9:.1f} GFLOP/s)"),
        ("Precision", p["precision"]),
        ("Input", "x".join(map(str, p["input_size"]))),
        ("Hardware", hardware_text(hw) + f" ({p['device']})"),
    ]
    load = (p.get("hardware") or {}).get("loadavg_1m")
    if load is not None:
        rows.append(("Machine load while measuring", f"{load:.2f} (1-min load average)"))
    table = "| Metric | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    src = (
        f"Measured by `zoo profile` (`zoo.measure.profile.profile_model`, batch {batch}, median of "
        f"{p.get('iters', '?')} steps) when the folder was exported; raw numbers in `profile.json`."
    )
    return f"{src}\n\n{table}"


def results_markdown(inp: CardInputs) -> str:
    ds = dataset_info(inp.recipe, inp.result, inp.class_names)
    acc = float(inp.result["final_acc"])
    rows = [("Top-1 accuracy", f"{acc * 100:.2f}%")]
    if ds["n_test"]:
        lo, hi = wilson_interval(acc, int(ds["n_test"]))
        rows.append(("95% interval (Wilson, test-set sampling only)", f"{lo * 100:.1f}% - {hi * 100:.1f}%"))
    if inp.result.get("final_loss") is not None:
        rows.append(("Test loss (cross-entropy)", f"{inp.result['final_loss']:.4f}"))
    rows += [("Dataset", f"{ds['pretty']}, {ds['classes']}"), ("Test images", fmt_value(ds["n_test"] or "full split"))]
    ema = inp.recipe["train"].get("ema")
    rows.append(("Evaluated weights", f"EMA (decay {ema:g}), the weights in this repo" if ema else "final weights"))
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    text = f"From the run's final evaluation (`result.json`):\n\n{table}"
    if inp.per_class:
        fresh = inp.per_class["acc"]
        text += (
            f"\n\nEvaluated again at export: {fresh * 100:.2f}% ({(fresh - acc) * 100:+.2f} pt). "
            + per_class_markdown(inp.per_class, inp.confusion_plot)
        )
    return text


def architecture_markdown(inp: CardInputs) -> str:
    a = inp.config.get("model_args", {})
    keys = (
        "img_size",
        "patch_size",
        "in_chans",
        "embed_dim",
        "depth",
        "num_heads",
        "head_dim",
        "mlp_hidden",
        "mlp_ratio",
        "global_pool",
        "stem",
        "attn_type",
        "routing",
    )
    rows = [f"| `{k}` | `{a[k]}` |" for k in keys if k in a and a[k] is not None]
    head = f"`{inp.config.get('architecture')}` with {inp.config.get('num_classes')} classes; final `model_args` "
    head += "(after growth and routing conversion, as stored in `config.json`):"
    return head + "\n\n| Argument | Value |\n|---|---|\n" + "\n".join(rows)


def distill_summary(recipe: dict) -> str:
    """What the run was distilled from (a teacher, or an ensemble whose distributions were averaged) and how."""
    d = DistillConfig.model_validate(recipe["distill"])  # the schema's defaults and reading of `pretrained`
    names = [f"`{src}`" for src in d.sources(recipe["model"].get("pretrained"))]
    who = names[0] if len(names) == 1 else f"an ensemble of {', '.join(names)} (their softened distributions averaged)"
    how = f"{d.kind}, weight {d.weight:g}, temperature {d.temperature:g}"
    return f"distilled from {who}: {how}"


def history_markdown(inp: CardInputs) -> str:
    total = int(inp.result.get("steps") or inp.manifest.get("total_steps") or 0)
    lines = []
    g = inp.recipe.get("growth")
    if g:
        plan = "; ".join(f"{stage_start(s)}: {describe_growth(s)}" for s in g["stages"])
        lines.append(
            f"- growth (recipe): {plan}; optimizer state `{g.get('optimizer_state', 'zero')}`"
            + (", grown from the EMA weights" if g.get("from_ema") else "")
        )
    for text in (unfreeze_summary(inp.recipe), routing_summary(inp.recipe, total)):
        if text:
            lines.append(f"- {text}")
    if inp.recipe["model"].get("pretrained"):
        lines.append(f"- initialised from `{inp.recipe['model']['pretrained']}`")
    if inp.recipe.get("distill"):
        lines.append(f"- {distill_summary(inp.recipe)}")
    events = structure_events(inp.records, inp.recipe, inp.config, total)
    if not lines and not events:
        return "Trained at a fixed architecture: no growth, unfreezing or routing."
    out = "\n".join(lines)
    if events:
        rows = [
            f"| {e['step']} | {e['fraction']:.0%} | {'; '.join(e['changes']) or '-'} | "
            f"{_fmt_loss(e['loss_before'])} | {_fmt_loss(e['loss_after'])} |"
            for e in events
        ]
        out += "\n\nStage boundaries as they happened (`metrics.jsonl`; loss after = the first step after it):\n\n"
        out += "| Step | Progress | Change | Loss before | Loss after |\n|---|---|---|---|---|\n" + "\n".join(rows)
    return out


def _fmt_loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _compute_row(inp: CardInputs) -> list[tuple[str, str]]:
    """Training compute as the zoo's budgets state it (3 x forward FLOPs per image x images seen), from the card's
    profile; for a run whose architecture changed (growth) the final architecture's cost is an upper bound."""
    p, r = inp.profile, inp.result
    if not p.get("flops_fwd") or not p.get("batch"):
        return []
    images = r["steps"] * inp.recipe["data"]["batch_size"]
    tflop = 3 * p["flops_fwd"] / p["batch"] * images / 1e12
    bound = " (upper bound: counted at the final, grown architecture)" if inp.recipe.get("growth") else ""
    return [("Training compute", f"{tflop:.1f} TFLOP: 3 x forward FLOPs x {images:,} images seen{bound}")]


def cost_markdown(inp: CardInputs) -> str:
    r, m = inp.result, inp.manifest
    v = m.get("versions", {})
    cores = m.get("cpu_affinity") or m.get("cpu_count") or 0
    core_hours = f" (~{r['wall_clock_s'] * cores / 3600:.2f} core-hours)" if cores and not m.get("gpus") else ""
    procs = r.get("num_processes", 1)
    rows = [
        ("Wall-clock", _duration(r["wall_clock_s"]) + core_hours),
        ("Optimizer steps", f"{r['steps']} x batch {inp.recipe['data']['batch_size']}"),
        ("Training throughput", f"{r['img_per_s']:.0f} img/s (including evaluation)"),
        *_compute_row(inp),
        ("Precision", f"{r.get('precision', inp.recipe['train']['precision'])}, {procs} process(es)"),
        ("Device", hardware_text(m)),
    ]
    if r.get("peak_rss_bytes"):
        rows.append(("Peak memory (RSS)", mib(r["peak_rss_bytes"])))
    if r.get("peak_cuda_bytes"):
        rows.append(("Peak CUDA memory", mib(r["peak_cuda_bytes"])))
    rows += [
        ("Software", ", ".join(f"{k} {v[k]}" for k in ("growzoo", "torch", "timm", "accelerate") if v.get(k))),
        ("Recipe hash", f"`{inp.weights_meta.get('recipe_hash') or m.get('recipe_hash')}`"),
        ("Weights sha256", f"`{inp.weights_meta.get('weights_sha256', '?')}`"),
        ("Code", f"`{m['git_sha']}`" + (" (dirty)" if m.get("git_dirty") else "") if m.get("git_sha") else "unknown"),
        ("Trained", m.get("created_at", "?")),
    ]
    if r.get("resumed_from"):
        rows.append(("Resumed", f"from step {r['resumed_from']} (wall-clock counts the last session only)"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"From `result.json` and `manifest.json`:\n\n| | |\n|---|---|\n{table}"


def limitations_markdown(inp: CardInputs) -> str:
    ds = dataset_info(inp.recipe, inp.result, inp.class_names)
    size = cfg_input(inp)
    items = [
        f"Trained and evaluated only on {ds['pretty']}, {ds['classes']}; {size[0] if size else '?'}-channel "
        f"{'x'.join(map(str, size[1:]))} images; behaviour on any other data is unmeasured.",
        f"One training run (seed {inp.recipe['train']['seed']}); the accuracy is a single evaluation"
        + (f" on {ds['n_test']} test images" if ds["n_test"] else "")
        + ": its interval covers test-set sampling, not seed-to-seed variance.",
    ]
    if inp.recipe["data"].get("train_subset"):
        items.append(f"Trained on a {ds['n_train']}-image subset of the training split.")
    p = inp.profile
    hw = p.get("hardware") or {}
    shared = hw.get("loadavg_1m") is not None and hw.get("cpu_affinity") and hw["loadavg_1m"] > hw["cpu_affinity"]
    machine = hardware_text(dict(hw, threads=p.get("threads")))
    busy = ", while it was shared with other jobs (load above the core count)" if shared else ""
    items.append(
        f"Throughput, memory and MFU were measured on one machine ({machine}) at batch {p['batch']}{busy}; other "
        "hardware, thread counts and batch sizes give different numbers."
    )
    items.append("`import zoo` is required before `timm.create_model`: the `zoo_*` architectures are not part of timm.")
    items.append(
        "`timm.create_model(..., pretrained=True)` does not check the `weights_sha256` stored in the safetensors "
        "metadata; `zoo.hub.load_model` does."
    )
    if inp.config.get("model_args", {}).get("routing"):
        items.append(
            "Routed blocks process only the top-scoring share of tokens per image; outputs depend on the routing "
            "capacity stored in `config.json`, and changing it changes the model."
        )
    if inp.recipe["model"].get("pretrained") and not inp.base_model:
        items.append(f"Fine-tuned from `{inp.recipe['model']['pretrained']}`, which is not a hub repo.")
    return "\n".join(f"- {t}" for t in items)


def files_markdown(inp: CardInputs) -> str:
    roles = {
        "config.json": "timm config: architecture, final `model_args`, `pretrained_cfg` (input size, mean/std)",
        "model.safetensors": "weights; metadata: architecture, zoo version, recipe hash, weights sha256",
        "README.md": "this card, generated by `zoo export`",
        "recipe.yaml": "the training recipe, verbatim",
        "profile.json": "the efficiency measurement behind the table above",
        "result.json": "final evaluation and training cost of the run",
        "manifest.json": "software versions and hardware of the training run",
        "metrics.jsonl": "training log: losses, evaluations, stage events",
        PLOT_NAME: "training curve",
        "per_class.json": "per-class accuracy and confusion matrix, evaluated at export",
        "confusion_matrix.png": "the confusion matrix, row-normalised",
    }
    return "\n".join(f"- `{f}`: {roles.get(f, '')}".rstrip(": ") for f in sorted(inp.files or roles))


def body_markdown(inp: CardInputs) -> str:
    ds = dataset_info(inp.recipe, inp.result, inp.class_names)
    acc = float(inp.result["final_acc"])
    params = si(inp.profile["params"])
    kind = "fine-tuned" if inp.recipe["model"].get("pretrained") else "trained from scratch"
    intro = (
        f"A growzoo `{inp.config.get('architecture')}` Vision Transformer ({params} "
        f"parameters), {kind} on {ds['pretty']}, {ds['classes']}, with Hugging Face Accelerate: "
        f"**{acc * 100:.2f}% top-1** on {ds['n_test'] or 'the'} test images. Every number on this card is generated "
        "from the run's recorded data by `zoo export`."
    )
    plot = f"\n\n![Training curve]({inp.plot_file})" if inp.plot_file else ""
    sections = [
        f"# {inp.name}\n\n{intro}",
        f"## Usage\n\n{usage_markdown(inp)}",
        f"## Results\n\n{results_markdown(inp)}",
        f"## Efficiency\n\n{efficiency_markdown(inp)}",
        f"## Architecture\n\n{architecture_markdown(inp)}",
        f"## Growth, unfreezing and routing history\n\n{history_markdown(inp)}",
        f"## Training cost\n\n{cost_markdown(inp)}{plot}",
        f"## Recipe\n\nThe run's `recipe.yaml`, verbatim (also in this repo):\n\n{fenced(inp.recipe_text, 'yaml')}\n\n"
        f"Re-run it and compare with this card: `zoo reproduce model_cards/{inp.name}` (add `--epochs 1` to stop after "
        "one epoch of the unchanged schedule and compare with this run's logged accuracy at that step).",
        f"## Limitations\n\n{limitations_markdown(inp)}",
        f"## Files\n\n{files_markdown(inp)}",
    ]
    return "\n\n".join(sections) + "\n"


def render_card(inp: CardInputs) -> str:
    """The full ``README.md``: YAML metadata block (``ModelCardData``) and the markdown body."""
    content = f"---\n{card_data(inp).to_yaml()}\n---\n\n{body_markdown(inp)}"
    ModelCard(content)  # parses the metadata back (local, no network): a malformed block fails here
    return content
