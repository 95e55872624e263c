"""The demo's outputs for people: the comparison table (terminal and README markdown) and the accuracy-against-
throughput plot. Pure functions of the summary ``zoo.demo.run`` writes."""

from __future__ import annotations

from pathlib import Path

from zoo.demo.models import ROLE_GOALS
from zoo.measure.stopwatch import interval_text
from zoo.utils.units import si


def speed_over_base(e: dict, base: dict) -> tuple[float, list[float] | None]:
    """The model's inference speed-up over the base and its 95% interval: the paired per-round median
    (``compare_models(reference=...)``); a summary written before the demo kept it has only the img/s ratio."""
    if "infer_speedup" in e:
        return e["infer_speedup"], e.get("infer_speedup_ci")
    return e["infer_img_per_s"] / base["infer_img_per_s"], None


def top1_gain(e: dict, base: dict) -> tuple[float, list[float] | None]:
    """The model's top-1 minus the base's in points and its 95% interval: paired on the same test images
    (``top1_diff``, McNemar; ``zoo.bench.stats.paired_accuracy_diff``); a summary written before the demo kept it
    has only the difference."""
    d = e.get("top1_diff")
    if d:
        return d["diff"] * 100, [d["ci_low"] * 100, d["ci_high"] * 100]
    return (e["top1"] - base["top1"]) * 100, None


def better_on(e: dict, base: dict) -> list[str]:
    """The axes on which a model beats the base beyond measurement noise: ``top-1`` (its paired 95% interval above
    zero), ``speed`` (the paired speed-up's interval above 1), ``size`` and ``FLOPs`` (exact counts: fewer). Without
    an interval (an older summary) the point estimate decides. Empty: the model is no better than the base in any
    way, and the demo does not offer it."""
    gain, gain_ci = top1_gain(e, base)
    speed, speed_ci = speed_over_base(e, base)
    axes = []
    if (gain_ci[0] if gain_ci else gain) > 0:
        axes.append("top-1")
    if (speed_ci[0] if speed_ci else speed) > 1:
        axes.append("speed")
    if e["params"] < base["params"]:
        axes.append("size")
    if e["gflops"] < base["gflops"]:
        axes.append("FLOPs")
    return axes


def offered(s: dict) -> tuple[list[dict], list[dict]]:
    """The base and the models better than it on some axis (the table, plot and ``--json`` show these), and the
    ones better on none (each named in a note, its numbers given, never shown as a result)."""
    base = s["models"][0]
    shown, withheld = [base], []
    for e in s["models"][1:]:
        (shown if better_on(e, base) else withheld).append(e)
    return shown, withheld


def _gain_text(e: dict, base: dict) -> str:
    gain, ci = top1_gain(e, base)
    return f"{gain:+.2f} pt" + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")


def _paired(s: dict) -> bool:
    return all("infer_speedup" in e for e in s["models"])


def _speed_text(e: dict, base: dict) -> str:
    ratio, ci = speed_over_base(e, base)
    return f"x{ratio:.2f}" + ("" if ci is None else f" {interval_text(*ci)}")


def _rows(s: dict) -> list[list[str]]:
    base = s["models"][0]
    rows = []
    for e in offered(s)[0]:
        is_base = e is base
        delta = "" if is_base else f" ({_gain_text(e, base)})"
        speed = "" if is_base else f" ({_speed_text(e, base)})"
        train = "-" if e.get("train_s") is None else f"{e['train_s']:.0f}"
        if not is_base and e.get("reused"):
            train += " (reused)"
        rows.append([
            f"{e['role']}: {e['name']}", e["how"], f"{e['top1'] * 100:.2f}%{delta}", si(e["params"]),
            f"{e['gflops']:.4f}", f"{e['infer_img_per_s']:.0f}{speed}", train,
            "-" if is_base else ", ".join(better_on(e, base)),
        ])  # fmt: skip
    return rows


def goal_checks(s: dict, goals: dict = ROLE_GOALS) -> list[dict]:
    """Each new model against its role's goal, from the measured numbers: ``name``, ``role``, ``goal`` and
    ``measured`` (text) and ``met``. A role without a goal is left out."""
    base = s["models"][0]
    checks = []
    for e in s["models"][1:]:
        g = goals.get(e["role"])
        if not g:
            continue
        gain = round((e["top1"] - base["top1"]) * 100, 4)  # top-1 on 10k images moves in 0.01 pt: no float dust
        speed, _ = speed_over_base(e, base)
        if e["role"] == "better":
            goal, met = f"top-1 >= base + {g['acc_gain_pt']:g} pt", gain >= g["acc_gain_pt"]
            measured = _gain_text(e, base)
        else:
            goal = f">= {g['speedup']:g}x the base's img/s within {g['acc_loss_pt']:g} pt"
            met = speed >= g["speedup"] and gain >= -g["acc_loss_pt"]
            measured = f"{_speed_text(e, base)} at {_gain_text(e, base)}"
        checks.append({"name": e["name"], "role": e["role"], "goal": goal, "measured": measured, "met": bool(met)})
    return checks


def _header(s: dict) -> list[str]:
    n, batch = s["models"][0]["n_test"], s["profile"]["batch"]
    return ["model", "how", f"top-1 ({n} test images)", "params", "GFLOPs / image", f"inference img/s (batch {batch})",
            "training s", "better than the base on"]  # fmt: skip


def _withheld_note(e: dict, base: dict, where: str) -> str:
    return (
        f"not shown: {e['role']}: {e['name']} ({e['how']}): better than the base on no axis: top-1 "
        f"{_gain_text(e, base)}, inference img/s {_speed_text(e, base)}, "
        f"params x{e['params'] / base['params']:.2f}, FLOPs x{e['gflops'] / base['gflops']:.2f}, against the base "
        f"(its run and folder stay in {where} for inspection)"
    )


def _scratch_note(e: dict, q: dict) -> str:
    """The quoted cost of the model's architecture from scratch, beside what growing cost: the suite's own grown arm
    when it ran the demo's recipe (one session), else this demo's fine-tune (another session: approximate)."""
    quoted = (
        f"what growing buys: {e['name']}'s architecture trained from scratch with the tuned recipe (not re-run: "
        f"`zoo bench {q['suite']}`, {q['seeds']} seeds, {q['cpu']}, {q['date']}): {q['scratch_acc'] * 100:.2f}% "
        f"[{q['scratch_acc_ci'][0] * 100:.2f}, {q['scratch_acc_ci'][1] * 100:.2f}] in {q['scratch_train_s']:.0f} s; "
    )
    if q.get("grown_acc") is not None:
        share = q["grown_train_s"] / q["scratch_train_s"]
        grown = f"{q['grown_acc'] * 100:.2f}% in {q['grown_train_s']:.0f} s ({share:.2f} of the time)"
        return f"{quoted}grown from the base there: {grown}"
    share = e["train_s"] / q["scratch_train_s"]
    return f"{quoted}this demo's fine-tune took {e['train_s']:.0f} s (about {share:.2f} of that, from two sessions)"


def _notes(s: dict, where: str) -> list[str]:
    """The table's notes; ``where``: how to name the demo's folder (the terminal gives its path, the README, which
    must not carry a machine's paths, says what it is)."""
    base = s["models"][0]
    lines = [_withheld_note(e, base, where) for e in offered(s)[1]]
    for e in s["models"]:
        q = e.get("scratch")
        if q:
            lines.append(_scratch_note(e, q))
        elif e["role"] == "better":
            lines.append(f"{e['name']}: no measured from-scratch run of this recipe's architecture to quote")
    for c in goal_checks(s):
        lines.append(f"goal ({c['role']}): {c['goal']}: measured {c['measured']}: {'met' if c['met'] else 'NOT met'}")
    m = s["machine"]
    p = s["profile"]
    threads = (m.get("torch_threads") or {}).get("num_threads")
    paired = " (speed-ups: the median per-round ratio to the base [95% interval])" if _paired(s) else ""
    if all("top1_diff" in e for e in s["models"][1:]):
        paired = f"{paired}; top-1 differences: paired on the same images [95% interval, McNemar exact]"
    lines.append(
        f"accuracy: each model on the same test split (the new ones from their exported folders); inference: median "
        f"of {p['rounds']} interleaved rounds of batch {p['batch']} per model{paired}; machine: {m.get('cpu_model')} "
        f"({m.get('cpu_capability')}), {m.get('cpu_count')} cores, {threads} threads; demo total "
        f"{s['seconds']:.0f} s"
    )
    return lines


def format_demo(s: dict) -> str:
    """The terminal table, then the notes and how to load the exported folders."""
    rows = [_header(s), *_rows(s)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", *_notes(s, s["out"]), ""]
    out = Path(s["out"])
    for e in offered(s)[0][1:]:
        lines.append(f"{e['role']} model: hub-ready folder {out / e['name']} (card: README.md inside); load it with "
                     f"timm.create_model('local-dir:{out / e['name']}', pretrained=True)")  # fmt: skip
    lines.append(f"plot: {out / s['plot']}" if s.get("plot") else "plot: not written (pip install growzoo[plots])")
    return "\n".join(lines)


def demo_markdown(s: dict) -> str:
    """The README section: the same table and notes in markdown."""
    rows = [_header(s), *_rows(s)]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join([*lines, "", *(f"- {n}" for n in _notes(s, "the demo's --out folder"))])


def plot_demo(s: dict, path: Path) -> bool:
    """Accuracy against inference throughput, one point per model, each labelled with its training time; False
    (nothing written) without matplotlib, which is an optional extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for e in offered(s)[0]:
        x, y = e["infer_img_per_s"], e["top1"] * 100
        ax.scatter([x], [y], s=40)
        train = "published" if e["role"] == "base" else f"trained {e['train_s']:.0f} s"
        ax.annotate(f"{e['role']}: {e['name']}\n{train}", (x, y), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)  # fmt: skip
    ax.set_xlabel(f"inference img/s (batch {s['profile']['batch']})")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"zoo demo: from {s['base']}")
    ax.margins(0.25)
    fig.savefig(path, dpi=120)
    return True
