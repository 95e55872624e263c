"""``zoo reproduce FOLDER``: re-run a published card's recipe and compare the result with the card.

A card folder (``zoo export`` output, e.g. ``model_cards/NAME``) holds the run's resolved ``recipe.yaml``, its
``result.json`` and its training log ``metrics.jsonl``. A full reproduction trains that recipe again and compares the
final accuracy with ``result.json``. ``--epochs K`` trains the *same* recipe (same length, same LR schedule) but stops
after K epochs' worth of optimizer steps, and compares with the evaluation the card's own log holds at that step:
with the same seed and schedule, deterministic training should agree there as closely as at the end, at a fraction of
the cost. (Shortening ``schedule.epochs`` instead would change the LR schedule and compare different runs.)

The pure functions (reading the card, choosing the comparison point, resolving the base model, the verdict) are
separate from ``reproduce``, which does the training. Input problems raise ``ReproduceError`` (a ValueError naming
file and field), which ``zoo`` turns into exit code 2.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from zoo.hub import WEIGHTS_NAME, ModelLoadError, read_metadata
from zoo.models.pretrained import MODEL_CARDS
from zoo.training.recipe import flatten_dotted, load_recipe
from zoo.training.run_folder import read_json_object, read_records
from zoo.training.trainer import train
from zoo.utils.manifest import package_version, recipe_hash

DEFAULT_TOLERANCE_PTS = 0.5  # same for shortened runs: they compare one deterministic run with itself, too
REQUIRED_FILES = ("recipe.yaml", "result.json", "metrics.jsonl")
LOCAL_DIR = "local-dir:"


class ReproduceError(ValueError):
    """A card folder or option that cannot be reproduced; names the file and the field."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: {field}: {message}")


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation: the step it was taken after, its accuracy, and the wall-clock from the run's start."""

    step: int
    acc: float
    time_s: float | None


@dataclass
class Card:
    folder: Path
    name: str
    result: dict
    records: list[dict]
    manifest: dict
    base_model: str | None  # hub id from the card's metadata (ORG/NAME), when the run fine-tuned a published model

    @property
    def recipe_path(self) -> Path:
        return self.folder / "recipe.yaml"


# ------------------------------------------------------------------------------------------------ reading the card
def read_card(folder: str | Path) -> Card:
    """The card folder's result, log, manifest and base model; a folder that is not a card names the missing file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReproduceError(str(folder), "<folder>", "not found (expected a model card folder, e.g. model_cards/NAME)")
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise ReproduceError(str(folder / name), "<file>", "missing: not a model card folder (zoo export output)")
    result = read_json_object(folder / "result.json")
    manifest = read_json_object(folder / "manifest.json") if (folder / "manifest.json").is_file() else {}
    readme = folder / "README.md"
    base = card_base_model(readme.read_text(), str(readme)) if readme.is_file() else None
    return Card(folder, folder.resolve().name, result, read_records(folder / "metrics.jsonl"), manifest, base)


def card_base_model(readme: str, source: str = "README.md") -> str | None:
    """``base_model`` from the card's YAML metadata block (``zoo export`` writes it there), or None."""
    import yaml

    if not readme.startswith("---"):
        return None
    end = readme.find("\n---", 3)
    try:
        meta = yaml.safe_load(readme[3:end] if end > 0 else "") or {}
    except yaml.YAMLError as e:
        raise ReproduceError(source, "<metadata>", f"not valid YAML: {e}") from None
    base = meta.get("base_model") if isinstance(meta, dict) else None
    if isinstance(base, list):  # the hub allows a list (merges); one fine-tuning source is all a recipe can name
        base = base[0] if len(base) == 1 else None
    return base if isinstance(base, str) and base else None


def eval_points(records: list[dict]) -> dict[int, EvalPoint]:
    """Evaluations by step; a later record for the same step wins (a resumed log repeats nothing, but be safe)."""
    points = {}
    for r in records:
        if isinstance(r.get("eval_acc"), (int, float)):
            points[r["step"]] = EvalPoint(r["step"], float(r["eval_acc"]), r.get("time_s"))
    return points


def steps_per_epoch(records: list[dict], source: str) -> int:
    """Optimizer steps per epoch, from the log's ``epoch`` field (train writes ``epoch = step / steps_per_epoch``)."""
    for r in records:
        epoch = r.get("epoch")
        if isinstance(epoch, (int, float)) and epoch > 0 and r["step"] > 0:
            return round(r["step"] / epoch)
    raise ReproduceError(source, "epoch", "no record has an epoch, so --epochs cannot be mapped to a step")


# ------------------------------------------------------------------------------------------- the comparison point
def choose_comparison_point(records: list[dict], epochs: float, total_steps: int, source: str) -> EvalPoint:
    """The card's evaluation after exactly ``epochs`` epochs; refuses (naming the nearest evaluations) otherwise."""
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ReproduceError("--epochs", str(epochs), "must be a positive number")
    spe = steps_per_epoch(records, source)
    step = round(epochs * spe)
    if abs(epochs * spe - step) > 1e-6:
        raise ReproduceError(
            "--epochs", f"{epochs:g}", f"is {epochs * spe:g} steps ({spe} per epoch), not a whole step"
        )
    if step > total_steps:
        raise ReproduceError(
            "--epochs", f"{epochs:g}", f"the card's run is {total_steps / spe:g} epochs ({total_steps} steps) long"
        )
    points = eval_points(records)
    if step in points:
        return points[step]
    if not points:
        raise ReproduceError(source, "eval_acc", "the card's log holds no evaluation to compare with")
    below, above = [s for s in points if s < step], [s for s in points if s > step]
    near = ([max(below)] if below else []) + ([min(above)] if above else [])
    listed = " or ".join(f"step {s} (--epochs {s / spe:g})" for s in near)
    raise ReproduceError(
        source, "eval_acc", f"the card has no evaluation at step {step} ({epochs:g} epochs); nearest: {listed}"
    )


def final_point(result: dict, source: str) -> EvalPoint:
    """The card's final evaluation and its whole training wall-clock (``result.json``)."""
    for key in ("final_acc", "steps", "wall_clock_s"):
        v = result.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ReproduceError(source, key, f"missing or not a finite number: {v!r}")
    return EvalPoint(int(result["steps"]), float(result["final_acc"]), float(result["wall_clock_s"]))


def compare(card_acc: float, reproduced_acc: float, tolerance_pts: float) -> dict:
    """Delta in percentage points (reproduced - card) and the verdict; NaN never passes."""
    delta = (reproduced_acc - card_acc) * 100
    passed = math.isfinite(delta) and abs(delta) <= tolerance_pts + 1e-9  # 1e-9: float noise of the x100
    return {"delta_pts": round(delta, 6) if math.isfinite(delta) else delta, "passed": bool(passed)}


# -------------------------------------------------------------------------------------------------- the recipe
# a hub repo name (the part after ORG/): what a card folder may be called
_CARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def base_model_candidates(card_folder: Path, base_model: str) -> list[Path]:
    """Where a base model's card folder may be: next to this card (model_cards/), then the bundled zoo."""

    name = base_model.rstrip("/").rsplit("/", 1)[-1]
    if not _CARD_NAME.fullmatch(name) or set(name) == {"."}:  # a card's own text must not lead outside the folders
        return []
    roots = (card_folder.parent.resolve(), MODEL_CARDS.resolve())
    found = (root / name for root in roots)
    return list(dict.fromkeys(p.resolve() for p in found if p.resolve().parent in roots))


def resolve_pretrained(pretrained: str | None, card_folder: Path, base_model: str | None, source: str) -> str | None:
    """The recipe's ``model.pretrained``; a ``local-dir:`` path that does not exist here (cards record the training
    machine's path) becomes the card folder of the card's base model, which holds the same weights."""
    if not pretrained or not pretrained.startswith(LOCAL_DIR) or Path(pretrained[len(LOCAL_DIR) :]).exists():
        return pretrained
    fix = "pass --set model.pretrained=local-dir:FOLDER"
    if not base_model:
        raise ReproduceError(
            source, "model.pretrained", f"{pretrained} not found and the card names no base_model; {fix}"
        )
    candidates = base_model_candidates(card_folder, base_model)
    for folder in candidates:
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return f"{LOCAL_DIR}{folder}"
    searched = ", ".join(str(c) for c in candidates)
    raise ReproduceError(
        source, "model.pretrained", f"{pretrained} not found, nor base model {base_model} in {searched}; {fix}"
    )


def recipe_changes(card: dict, reproduced: dict) -> list[dict]:
    """Fields where the reproduced recipe differs from the card's (base model path, pinned precision, --set)."""
    a, b = flatten_dotted(card), flatten_dotted(reproduced)
    return [
        {"field": k, "card": a.get(k), "reproduced": b.get(k)}
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


# ---------------------------------------------------------------------------------------------- the run folder
def run_state(out: Path, want_hash: str, step: int | None) -> str:
    """``fresh`` (nothing there), ``resume`` (a partial run of this recipe) or ``reuse`` (it already reached the
    comparison point); a run of another recipe is refused, never overwritten."""
    if not (out / "recipe.yaml").exists():
        return "fresh"
    manifest = out / "manifest.json"
    have = read_json_object(manifest).get("recipe_hash") if manifest.is_file() else None
    if have != want_hash:
        raise ReproduceError(
            str(out),
            "--out",
            f"holds a run of another recipe (hash {have}, this reproduction {want_hash}); "
            "choose another --out or delete that folder",
        )
    if step is None:
        return "reuse" if (out / "result.json").is_file() else "resume"
    log = out / "metrics.jsonl"
    if log.is_file() and step in eval_points(read_records(log)):
        return "reuse"
    if (out / "result.json").is_file():  # finished without that evaluation: resuming it would only re-save it
        raise ReproduceError(str(log), "eval_acc", f"the finished run in {out} has no evaluation at step {step}")
    return "resume"


def reproduced_point(out: Path, step: int | None) -> EvalPoint:
    """The reproduction's evaluation at ``step`` (from its log), or its final result when ``step`` is None."""
    if step is None:
        return final_point(read_json_object(out / "result.json"), str(out / "result.json"))
    records = read_records(out / "metrics.jsonl")
    point = eval_points(records).get(step)
    if point is None:  # the same recipe on other data (e.g. --set data.train_subset) has another epoch length
        spe = steps_per_epoch(records, str(out / "metrics.jsonl"))
        raise ReproduceError(
            str(out / "metrics.jsonl"), "eval_acc", f"no evaluation at step {step} ({spe} steps per epoch here)"
        )
    return point


# ------------------------------------------------------------------------------------------------------ wiring
def prepare_recipe(card: Card, sets: list[str]):
    """The card's recipe with ``--set`` applied, its base model found here, and an ``auto`` precision pinned to the
    card's measured choice (re-measuring could pick the other one, which changes every number). Returns the recipe,
    the card's own recipe, and notes."""

    source = str(card.recipe_path)
    card_recipe = load_recipe(card.recipe_path)
    recipe = load_recipe(card.recipe_path, sets)
    notes = []
    have, recorded = recipe_hash(card_recipe.identity()), card.manifest.get("recipe_hash")
    if recorded not in (None, have):  # a warning, not an error: a newer zoo adding a recipe field changes the hash
        notes.append(
            f"warning: recipe.yaml hashes to {have} but the card's manifest records {recorded}: edited after "
            "training, or a newer zoo added recipe fields"
        )
    pretrained = resolve_pretrained(recipe.model.pretrained, card.folder, card.base_model, source)
    if pretrained != recipe.model.pretrained:
        notes.append(f"the recorded base model path is not on this machine: using {card.base_model}'s card folder")
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"pretrained": pretrained})})
    elif card.base_model and pretrained and pretrained.startswith(LOCAL_DIR):
        notes.extend(_base_weights_warning(pretrained, card))
    chosen = card.result.get("precision")
    if recipe.train.precision == "auto" and chosen in ("fp32", "bf16", "fp16"):
        recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"precision": chosen})})
        notes.append(f"train.precision auto pinned to {chosen}, the card's measured choice")
    return recipe, card_recipe, notes


def _base_weights_warning(pretrained: str, card: Card) -> list[str]:
    """An existing local path is used as recorded; say so when it holds other weights than the card's base model
    (e.g. that run folder was retrained since), since the reproduction then fine-tunes something else."""

    def sha(folder: Path) -> str | None:
        try:
            return read_metadata(folder / WEIGHTS_NAME).get("weights_sha256")
        except ModelLoadError:
            return None

    mine = sha(Path(pretrained[len(LOCAL_DIR) :]))
    theirs = next((f for f in base_model_candidates(card.folder, card.base_model) if sha(f)), None)
    if mine is None or theirs is None or sha(theirs) == mine:
        return []
    return [
        f"warning: {pretrained} holds other weights than the card's base model {card.base_model} ({theirs}); "
        f"pass --set model.pretrained=local-dir:{theirs} to fine-tune that one"
    ]


def environment_notes(card: Card) -> list[str]:
    """Differences from the card's training that make bit-exact agreement unlikely (not wrong, just expected)."""
    import torch

    notes = []
    theirs, mine = (card.manifest.get("versions") or {}).get("torch"), package_version("torch")
    if theirs and mine and theirs != mine:
        notes.append(f"torch {mine} here, {theirs} for the card: expect small differences, not bitwise agreement")
    # CPU kernels split reductions by thread count, so another count changes the last bits of every step
    threads = (card.manifest.get("torch_threads") or {}).get("num_threads")
    if threads and threads != torch.get_num_threads():
        notes.append(f"{torch.get_num_threads()} torch threads here, {threads} for the card: expect small differences")
    if (card.manifest.get("num_processes") or 1) != 1:
        notes.append(f"the card trained on {card.manifest['num_processes']} processes; this reproduction on one")
    return notes


def reproduce(
    folder: str | Path,
    epochs: float | None = None,
    out: str | Path | None = None,
    tolerance_pts: float = DEFAULT_TOLERANCE_PTS,
    sets: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Re-run the card's recipe into ``out`` (default ``runs/reproduce/NAME``), or reuse a run there that already
    reached the comparison point, and return the comparison (see ``format_report``)."""

    if not (tolerance_pts >= 0 and math.isfinite(tolerance_pts)):
        raise ReproduceError("--tolerance", str(tolerance_pts), "must be a finite number >= 0 (points)")
    card = read_card(folder)
    recipe, card_recipe, notes = prepare_recipe(card, list(sets or []))
    log = str(card.folder / "metrics.jsonl")
    full = final_point(card.result, str(card.folder / "result.json"))
    point = full if epochs is None else choose_comparison_point(card.records, epochs, full.step, log)
    out = Path(out) if out is not None else Path("runs") / "reproduce" / card.name
    if out.resolve() == card.folder.resolve() or card.folder.resolve() in out.resolve().parents:
        raise ReproduceError(str(out), "--out", "must not be the card folder or inside it")
    stop = None if epochs is None else point.step
    state = run_state(out, recipe_hash(recipe.identity()), stop)
    if state != "reuse":
        train(recipe, out, resume=state == "resume", progress=progress, stop_after=stop)
    mine = reproduced_point(out, stop)
    return {
        "card": str(card.folder),
        "name": card.name,
        "out": str(out),
        "mode": "full" if epochs is None else "shortened",
        "step": point.step,
        "total_steps": full.step,
        "epochs": epochs if epochs is not None else _epochs(full.step, card.records, log),
        "total_epochs": _epochs(full.step, card.records, log),
        "card_acc": point.acc,
        "reproduced_acc": mine.acc,
        **compare(point.acc, mine.acc, tolerance_pts),
        "tolerance_pts": tolerance_pts,
        "card_time_s": point.time_s,
        "reproduced_time_s": mine.time_s,
        "card_full_time_s": full.time_s,
        "reused": state == "reuse",
        "recipe_changes": recipe_changes(card_recipe.to_dict(), recipe.to_dict()),
        "notes": notes + environment_notes(card),
    }


def _epochs(step: int, records: list[dict], source: str) -> float | None:
    try:
        return step / steps_per_epoch(records, source)
    except ReproduceError:  # a log without epochs: the report just leaves the length in epochs out
        return None


def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v * 100:.2f}%"


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def format_report(r: dict) -> str:
    """The comparison as a small table, the recipe changes, notes, and the verdict line."""
    if r["mode"] == "full":
        what = f"full run, {r['total_steps']} steps" + (f" ({r['total_epochs']:g} epochs)" if r["total_epochs"] else "")
    else:
        what = f"first {r['step']} of {r['total_steps']} steps ({r['epochs']:g} of {r['total_epochs']:g} epochs)"
    ratio = f"x{r['reproduced_time_s'] / r['card_time_s']:.2f}" if r["card_time_s"] and r["reproduced_time_s"] else ""
    rows = [
        ("", "card", "reproduced", "delta"),
        ("top-1", _pct(r["card_acc"]), _pct(r["reproduced_acc"]), f"{r['delta_pts']:+.2f} pt"),
        ("wall-clock", _secs(r["card_time_s"]), _secs(r["reproduced_time_s"]), ratio),
    ]
    lines = [f"reproduce {r['card']}: {what} -> {r['out']}" + (" (reused)" if r["reused"] else "")]
    lines += [f"  {a:<11}{b:>12}{c:>14}{d:>12}".rstrip() for a, b, c, d in rows]
    if r["mode"] == "shortened" and r["card_full_time_s"] and r["card_time_s"]:
        est = r["reproduced_time_s"] * r["card_full_time_s"] / r["card_time_s"] if r["reproduced_time_s"] else None
        lines.append(
            f"note: wall-clock up to step {r['step']} only; the card's full run took {_secs(r['card_full_time_s'])}"
            + (f" (at this pace a full reproduction would take ~{_secs(est)})" if est else "")
        )
    for c in r["recipe_changes"]:
        lines.append(f"recipe: {c['field']}: {c['card']} -> {c['reproduced']}")
    lines += [f"note: {n}" for n in r["notes"]]
    verdict = "PASS" if r["passed"] else "FAIL"
    lines.append(f"{verdict}: |delta| {abs(r['delta_pts']):.2f} pt, tolerance {r['tolerance_pts']:g} pt")
    return "\n".join(lines)
