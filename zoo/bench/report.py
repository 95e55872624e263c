"""Benchmark reports: per-arm summaries with confidence intervals, markdown tables and plots.

All numbers shown for an arm come from its seeds only; comparisons against the baseline are between-run (Welch's
t-test, ratio-of-means CIs), never a baseline compared with itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo.bench import stats

__all__ = ["DEFAULT_METRICS", "RATIO_DIRECTION", "arms_markdown", "markdown_table", "plot_arms", "summarize_arms"]

DEFAULT_METRICS: tuple[str, ...] = ("acc", "wall_clock_s", "img_per_s", "peak_mem_bytes")
# orientation of each ratio so that the number reads naturally: speedup > 1 is faster, throughput/memory ratios are
# "arm relative to baseline"; accuracy has no ratio (it gets a difference in points instead)
RATIO_DIRECTION: dict[str, str] = {
    "wall_clock_s": "baseline/arm",
    "img_per_s": "arm/baseline",
    "peak_mem_bytes": "arm/baseline",
}
_MISSING = "–"
_MIB = 2**20

Fmt = str | Callable[[Any], str] | None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _format_cell(value: Any, fmt: Fmt) -> str:
    """Format one cell; ``None`` renders as a dash and NaN as ``n/a``, pipes are escaped."""
    if value is None:
        return _MISSING
    if _is_nan(value):
        return "n/a"
    if fmt is None:
        text = str(value)
    elif callable(fmt):
        text = fmt(value)
    elif "{" in fmt:
        text = fmt.format(value)
    else:
        text = format(value, fmt)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, Fmt]]) -> str:
    """Render rows as a GitHub-flavoured markdown table.

    Args:
        rows: One mapping per row.
        columns: ``(key, header, fmt)`` per column. ``fmt`` is a format spec (``".2f"``), a ``str.format`` template
            (``"{:.1%}"``), a callable ``value -> str``, or ``None`` for ``str``. Missing keys and ``None`` render
            as ``–``, NaN as ``n/a``.

    Returns:
        The table, one line per row, without a trailing newline.
    """
    header = "| " + " | ".join(h.replace("|", "\\|") for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, sep]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def _group_by_arm(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Group runs by arm, in order of first appearance; a repeated (arm, seed) pair is an error.

    Counting a seed twice would shrink the CI with no new information, so duplicates are rejected rather than
    silently averaged.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[tuple[str, Any]] = set()
    for run in runs:
        arm = run["arm"]
        key = (arm, run.get("seed"))
        if run.get("seed") is not None and key in seen:
            raise ValueError(f"duplicate run for arm {arm!r}, seed {run.get('seed')!r}")
        seen.add(key)
        groups.setdefault(arm, []).append(run)
    return groups


def _sorted_seeds(seeds: Iterable[Any]) -> list[Any]:
    """Seeds in numeric order (so 10 follows 2), falling back to ``repr`` order for mixed types."""
    seeds = list(seeds)
    try:
        return sorted(seeds)
    except TypeError:
        return sorted(seeds, key=repr)


def _values(runs: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    """Per-seed values of a metric, skipping runs that did not record it (``n`` in the summary shows how many)."""
    return [float(r[metric]) for r in runs if r.get(metric) is not None]


def _ratio(base: list[float], arm: list[float], direction: str) -> dict | None:
    if not base or not arm:
        return None
    num, den = (base, arm) if direction == "baseline/arm" else (arm, base)
    return {**stats.ratio_ci(num, den), "direction": direction}


def summarize_arms(
    runs: Sequence[Mapping[str, Any]],
    baseline: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    confidence: float = 0.95,
    target_acc: float | None = None,
) -> list[dict[str, Any]]:
    """Aggregate per-seed runs into one summary per arm, compared against ``baseline``.

    Args:
        runs: ``{"arm", "seed", "acc", "wall_clock_s", "img_per_s", "peak_mem_bytes", "curve": [[t, acc], ...]}``
            per run. ``acc`` is a fraction in [0, 1]. A metric missing from a run is skipped for that run only.
        baseline: Name of the reference arm.
        metrics: Metrics to summarize.
        confidence: Level of every CI.
        target_acc: If given, also summarize the time each seed's curve takes to first reach this accuracy.

    Returns:
        One dict per arm, baseline first then in order of appearance::

            {"arm", "is_baseline", "n" (runs), "seeds" (sorted),
             "<metric>": stats.mean_ci(...) or None,                 # for each metric
             "ratios": {"wall_clock_s": ratio_ci + "direction", ...}, # None entries for the baseline itself
             "acc_test": stats.welch_ttest(arm, baseline) + "delta_pt", "delta_pt_ci" or None,
             "time_to_target": {"target", "reached", "n", "ci": mean_ci of reached times or None} or None}

        ``acc_test["delta_pt"]`` is ``(mean_arm - mean_baseline) * 100``. p-values are two-sided and not corrected
        for multiple arms. ``time_to_target`` averages only the seeds that reached the target, so read it together
        with ``reached``.

    Raises:
        ValueError: If the baseline arm has no runs or an (arm, seed) pair repeats.
    """
    groups = _group_by_arm(runs)
    if baseline not in groups:
        raise ValueError(f"baseline arm {baseline!r} not among arms {sorted(groups)}")
    order = [baseline] + [a for a in groups if a != baseline]
    base_runs = groups[baseline]
    summaries = []
    for arm in order:
        arm_runs = groups[arm]
        is_base = arm == baseline
        seeds = _sorted_seeds(r["seed"] for r in arm_runs if r.get("seed") is not None)
        summary: dict[str, Any] = {"arm": arm, "is_baseline": is_base, "n": len(arm_runs), "seeds": seeds}
        for metric in metrics:
            vals = _values(arm_runs, metric)
            summary[metric] = stats.mean_ci(vals, confidence) if vals else None
        # the baseline is the reference: a ratio or test of it against itself would be a fake "independent" comparison
        summary["ratios"] = {
            m: None if is_base else _ratio(_values(base_runs, m), _values(arm_runs, m), d)
            for m, d in RATIO_DIRECTION.items()
            if m in metrics
        }
        summary["acc_test"] = None
        arm_acc, base_acc = _values(arm_runs, "acc"), _values(base_runs, "acc")
        if not is_base and "acc" in metrics and arm_acc and base_acc:
            test = stats.welch_ttest(arm_acc, base_acc, confidence)
            test["delta_pt"] = test["diff"] * 100.0
            test["delta_pt_ci"] = (test["ci_low"] * 100.0, test["ci_high"] * 100.0)
            summary["acc_test"] = test
        summary["time_to_target"] = None if target_acc is None else _time_to_target(arm_runs, target_acc, confidence)
        summaries.append(summary)
    return summaries


def _time_to_target(runs: Sequence[Mapping[str, Any]], target: float, confidence: float) -> dict[str, Any]:
    times = [stats.time_to_reach(r.get("curve") or [], target) for r in runs]
    reached = [t for t in times if t is not None]
    return {
        "target": target,
        "reached": len(reached),
        "n": len(runs),
        "ci": stats.mean_ci(reached, confidence) if reached else None,
    }


def _fmt_num(x: float, digits: int) -> str:
    return "n/a" if x is None or _is_nan(x) else f"{x:.{digits}f}"


def _fmt_mean_interval(ci: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str | None:
    """``mean [lo, hi]`` (scaled); for n=1 just the mean and ``(n=1)`` since no interval exists."""
    if ci is None:
        return None
    mean = _fmt_num(ci["mean"] * scale, digits)
    if _is_nan(ci["half_width"]):
        return f"{mean} (n={ci['n']})"
    return f"{mean} [{_fmt_num(ci['ci_low'] * scale, digits)}, {_fmt_num(ci['ci_high'] * scale, digits)}]"


def _fmt_pm(ci: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str | None:
    if ci is None:
        return None
    if _is_nan(ci["half_width"]):
        return f"{_fmt_num(ci['mean'] * scale, digits)} (n={ci['n']})"
    return f"{_fmt_num(ci['mean'] * scale, digits)} ± {_fmt_num(ci['half_width'] * scale, digits)}"


def _fmt_ratio(r: Mapping[str, Any] | None, is_base: bool) -> str | None:
    if is_base:
        return "1.00× (ref)"
    if r is None:
        return None
    text = f"{_fmt_num(r['ratio'], 2)}×"
    if not _is_nan(r["ci_low"]):
        text += f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
    return text


def _fmt_p(p: float) -> str:
    if _is_nan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_delta(test: Mapping[str, Any] | None, is_base: bool) -> str | None:
    if is_base:
        return "ref"
    if test is None:
        return None
    text = f"{test['delta_pt']:+.2f}"
    lo, hi = test["delta_pt_ci"]
    if not _is_nan(lo):
        text += f" [{lo:+.2f}, {hi:+.2f}]"
    return text


def arms_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`summarize_arms` output.

    Columns: arm, n, ``acc % (95% CI)`` as ``mean [lo, hi]``, ``Δacc pt`` (arm − baseline with its Welch CI),
    ``p`` (Welch, two-sided, uncorrected), ``wall-clock s`` (mean ± CI half width), ``speedup`` (baseline/arm with
    CI), ``img/s`` (mean, with the arm/baseline ratio), ``peak mem MiB`` (mean, with the arm/baseline ratio), and
    ``t→target s`` when the summary has time-to-target data. The CI level in the header follows the data.
    """
    rows = []
    conf = next((s["acc"]["confidence"] for s in summary if s.get("acc")), 0.95)
    has_ttt = any(s.get("time_to_target") for s in summary)
    for s in summary:
        is_base = bool(s.get("is_baseline"))
        ratios = s.get("ratios") or {}
        test = s.get("acc_test")
        row = {
            "arm": s["arm"],
            "n": s["n"],
            "acc": _fmt_mean_interval(s.get("acc"), scale=100.0, digits=2),
            "delta": _fmt_delta(test, is_base),
            "p": "ref" if is_base else (None if test is None else _fmt_p(test["p"])),
            "wall": _fmt_pm(s.get("wall_clock_s"), digits=1),
            "speedup": _fmt_ratio(ratios.get("wall_clock_s"), is_base) if s.get("wall_clock_s") else None,
            "ips": _with_ratio(s.get("img_per_s"), ratios.get("img_per_s"), 1.0, is_base),
            "mem": _with_ratio(s.get("peak_mem_bytes"), ratios.get("peak_mem_bytes"), 1.0 / _MIB, is_base),
        }
        if has_ttt:
            row["ttt"] = _fmt_ttt(s.get("time_to_target"))
        rows.append(row)
    columns: list[tuple[str, str, Fmt]] = [
        ("arm", "arm", None),
        ("n", "n", None),
        ("acc", f"acc % ({conf:.0%} CI)", None),
        ("delta", "Δacc pt", None),
        ("p", "p", None),
        ("wall", "wall-clock s", None),
        ("speedup", "speedup", None),
        ("ips", "img/s", None),
        ("mem", "peak mem MiB", None),
    ]
    if has_ttt:
        columns.append(("ttt", "t→target s", None))
    return markdown_table(rows, columns)


def _with_ratio(
    ci: Mapping[str, Any] | None, ratio: Mapping[str, Any] | None, scale: float, is_base: bool
) -> str | None:
    if ci is None:
        return None
    text = _fmt_num(ci["mean"] * scale, 1)
    if not is_base and ratio is not None and not _is_nan(ratio["ratio"]):
        text += f" ({ratio['ratio']:.2f}×)"
    return text


def _fmt_ttt(ttt: Mapping[str, Any] | None) -> str | None:
    if ttt is None:
        return None
    reached = f"{ttt['reached']}/{ttt['n']} reached"
    if ttt["ci"] is None:
        return reached
    return f"{_fmt_pm(ttt['ci'], digits=1)} ({reached})"


def plot_arms(
    runs: Sequence[Mapping[str, Any]],
    path: str | Path,
    confidence: float = 0.95,
    title: str | None = None,
) -> Path:
    """Plot accuracy-vs-wall-clock curves and a final-accuracy-vs-wall-clock scatter, one colour per arm.

    Left panel: one thin line per seed. Right panel: each seed as a faint dot and the arm mean with CI error bars
    on both axes (bars are omitted for arms with a single seed, where no CI exists). Uses an Agg canvas directly,
    so it never changes the global matplotlib backend of the calling process.

    Args:
        runs: Runs as for :func:`summarize_arms` (``arm``, ``acc``, ``wall_clock_s`` and optionally ``curve``).
        path: Output PNG path; parent directories are created.
        confidence: CI level for the error bars.
        title: Optional figure title.

    Returns:
        The written path.

    Raises:
        ImportError: If matplotlib is not installed (``pip install growzoo[plots]``).
    """
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot_arms needs matplotlib: pip install growzoo[plots]") from e

    groups = _group_by_arm(runs)
    cmap = colormaps["tab10"]
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_curve, ax_final = fig.subplots(1, 2)
    for i, (arm, arm_runs) in enumerate(groups.items()):
        color = cmap(i % cmap.N)
        labelled = False
        for r in arm_runs:
            curve = sorted((float(t), float(a)) for t, a in (r.get("curve") or []))
            if curve:
                ts, accs = zip(*curve)
                ax_curve.plot(
                    ts, [a * 100 for a in accs], color=color, lw=0.9, alpha=0.7, label=None if labelled else arm
                )
                labelled = True
        pts = [
            (float(r["wall_clock_s"]), float(r["acc"]))
            for r in arm_runs
            if r.get("acc") is not None and r.get("wall_clock_s") is not None
        ]
        if not pts:
            continue
        ws, accs = zip(*pts)
        ax_final.scatter(ws, [a * 100 for a in accs], color=color, alpha=0.35, s=18)
        w_ci, a_ci = stats.mean_ci(ws, confidence), stats.mean_ci(accs, confidence)
        xerr = None if _is_nan(w_ci["half_width"]) else w_ci["half_width"]
        yerr = None if _is_nan(a_ci["half_width"]) else a_ci["half_width"] * 100
        ax_final.errorbar(
            w_ci["mean"],
            a_ci["mean"] * 100,
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            color=color,
            capsize=4,
            ms=7,
            label=f"{arm} (n={a_ci['n']})",
        )
    ax_curve.set(xlabel="wall-clock (s)", ylabel="accuracy (%)", title="accuracy vs wall-clock (one line per seed)")
    ax_final.set(
        xlabel="wall-clock (s)", ylabel="final accuracy (%)", title=f"final accuracy, mean ± {confidence:.0%} CI"
    )
    for ax in (ax_curve, ax_final):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def arms_report(
    records: list[dict], baseline: str, out: Path, target_acc: float | None = None, name: str = "arms"
) -> dict:
    """Statistics, markdown and plot for multi-seed arms (written to ``out/NAME.md`` and ``out/NAME.png``)."""

    summary = summarize_arms(records, baseline=baseline, target_acc=target_acc)
    md = arms_markdown(summary)
    (out / f"{name}.md").write_text(md + "\n")
    try:
        plot_arms(records, out / f"{name}.png")
    except ImportError as e:  # plots are an extra; the numbers stand without them
        print(f"note: {e}")
    return {name: summary, f"{name}_markdown": md}
