"""Generated README sections: tables between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers are
rewritten from measured results, so no number in the README is typed by hand."""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime
from pathlib import Path

from zoo.bench.registry import GOALS


def replace_section(text: str, name: str, body: str) -> str:
    """Replace the content between the markers of section ``name``; the markers must exist exactly once."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"README: section {name!r}: expected one pair of markers {start} ... {end}")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text)


def update_readme(readme: Path, name: str, body: str) -> None:
    readme.write_text(replace_section(readme.read_text(), name, body))


def _goal_cells(value: float, goal: tuple[str, float] | None) -> tuple[str, str]:
    if goal is None:
        return "", ""
    op, target = goal
    met = {">=": value >= target, "<=": value <= target, ">": value > target, "<": value < target}[op]
    return f"{op} {target:g}", "yes" if met else "**no**"


def bench_markdown(summary: dict) -> str:
    """A table of a suite's headline numbers against the goals, plus the command and machine that produced them."""

    goals = GOALS.get(summary["suite"], {})
    quick = " --quick" if summary.get("quick") else ""
    rows = [(k, v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = ["| metric | value | goal | met |", "|---|---|---|---|"]
    for k, v in rows:
        goal, met = _goal_cells(v, goals.get(k))
        lines.append(f"| {k} | {v:.3g} | {goal} | {met} |")
    for key in ("configs", "training_free", "rows", "attention"):  # per-configuration detail of suites that have it
        lines += _detail_table(summary.get(key))
    if summary.get("headline_arm"):
        lines += ["", f"headline numbers are those of arm `{summary['headline_arm']}`"]
    for key, title in JSON_DETAILS:
        if summary.get(key):
            lines += ["", f"{title}: `{json.dumps(_rounded(summary[key]))}`"]
    if summary.get("loss_spikes"):
        lines += ["", "loss spike at each growth (training loss on the step after minus the step before):"]
        lines += _detail_table(spike_rows(summary["loss_spikes"]))
    m = summary.get("manifest", {})
    cpu = m.get("cpu_model") or "unknown CPU"
    if m.get("cpu_capability"):  # AVX-512 vs AVX2: several times the fp32 speed, forty times the bf16 speed
        cpu += f" ({m['cpu_capability']})"
    sets = "".join(f" --set {shlex.quote(o)}" for o in summary.get("overrides") or [])
    seeds = f" --seeds {','.join(map(str, summary['seeds']))}" if summary.get("seeds") and not quick else ""
    lines += ["", f"`zoo bench {summary['suite']}{quick}{seeds}{sets}` on {cpu}, {m.get('cpu_count')} cores, "
                  f"torch {m.get('versions', {}).get('torch')}, {m.get('created_at', '')[:10]}."]  # fmt: skip
    for key in sorted(k for k in summary if k.endswith("_markdown")):  # multi-seed arms tables
        lines += ["", f"{key.removesuffix('_markdown').replace('_', ' ')}:", "", summary[key]]
    return "\n".join(lines)


#: summary keys shown as compact JSON under the table: (key, title)
JSON_DETAILS = (
    ("finetune", "fine-tune"),
    ("matched", "settings matched to the training FLOPs of the routed arm with the same suffix"),
    ("compute_fraction", "training FLOPs relative to the dense arm"),
    ("control_epochs", "compute-matched control epochs"),
    ("acc_vs_control_by_arm", "accuracy vs compute-matched control, points"),
)


def spike_rows(loss_spikes: dict[str, list[dict]]) -> list[dict]:
    """One table row per growth event of each arm, from a growth summary's ``loss_spikes``."""
    return [
        {"arm": arm, "step": e["step"], "stage": e["event"].get("growth_stage"), "mean spike": e["mean_spike"],
         "seeds": e["n"]}
        for arm, events in loss_spikes.items()
        for e in events
    ]  # fmt: skip


def _detail_table(detail: list[dict] | None) -> list[str]:
    if not detail:
        return []
    cols = list(dict.fromkeys(k for r in detail for k in r))  # every row's keys: batch-1 rows lack train columns
    lines = ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in detail:
        cells = (_cell(r.get(c)) for c in cols)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _rounded(value):
    """Floats to 4 significant digits, recursively (for compact JSON in the README)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _newest_first(folder: Path) -> tuple[float, str]:
    """Sort key: the newest training run first (manifest ``created_at``), so the table leads with the models built
    on the current baseline; folders without a manifest last, by name."""
    manifest = folder / "manifest.json"
    created = json.loads(manifest.read_text()).get("created_at") if manifest.is_file() else None
    stamp = datetime.fromisoformat(created).timestamp() if created else float("-inf")
    return -stamp, folder.name


def zoo_table(model_cards: Path) -> str:
    """The published models, from each card folder's result.json and profile.json (written by `zoo export`)."""
    rows = [
        "| model | params | top-1 | train img/s | infer img/s | training time | recipe |",
        "|---|---|---|---|---|---|---|",
    ]
    for folder in sorted((p for p in model_cards.iterdir() if (p / "result.json").is_file()), key=_newest_first):
        r = json.loads((folder / "result.json").read_text())
        prof = json.loads((folder / "profile.json").read_text()) if (folder / "profile.json").is_file() else {}
        params = prof.get("params")
        rows.append(
            f"| [{folder.name}](model_cards/{folder.name}/README.md) | {params / 1e6:.2f} M "
            f"| {r['final_acc'] * 100:.2f}% "
            f"| {prof.get('train_img_per_s', float('nan')):.0f} | {prof.get('infer_img_per_s', float('nan')):.0f} "
            f"| {r['wall_clock_s'] / 60:.1f} min | [recipe](model_cards/{folder.name}/recipe.yaml) |"
            if params
            else f"| {folder.name} | | {r['final_acc'] * 100:.2f}% | | | {r['wall_clock_s'] / 60:.1f} min | |"
        )
    rows += ["", "Newest first. Throughput from each card's `profile.json` (batch 32, measured by `zoo export` on "
             "the training machine); accuracy and time from its `result.json`."]  # fmt: skip
    return "\n".join(rows)
