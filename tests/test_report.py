"""zoo.bench.report: per-arm summaries, markdown output and plots on a synthetic 2-arm benchmark."""

import math
import re
import sys

import pytest

from zoo.bench.report import arms_markdown, markdown_table, plot_arms, summarize_arms

MIB = 2**20
T_975_DF2 = 4.302652730  # Student-t table, 0.975 quantile, 2 df
T_975_DF4 = 2.776445105  # Student-t table, 0.975 quantile, 4 df


def _run(arm, seed, acc, wall, ips, mem_mib):
    curve = [[wall * f, acc * f] for f in (0.25, 0.5, 0.75, 1.0)]
    return {"arm": arm, "seed": seed, "acc": acc, "wall_clock_s": wall, "img_per_s": ips,
            "peak_mem_bytes": mem_mib * MIB, "curve": curve}  # fmt: skip


@pytest.fixture
def runs():
    # baseline: acc 0.71 ± sd 0.01, wall 102 ± sd 2; grow: acc 0.70 ± sd 0.01, wall 82 ± sd 2
    return [
        _run("grow", 0, 0.69, 80.0, 125.0, 80),
        _run("baseline", 0, 0.70, 100.0, 100.0, 100),
        _run("baseline", 1, 0.72, 104.0, 98.0, 100),
        _run("grow", 1, 0.70, 82.0, 123.0, 80),
        _run("baseline", 2, 0.71, 102.0, 102.0, 100),
        _run("grow", 2, 0.71, 84.0, 127.0, 80),
    ]


def t_cdf_df4(t):
    x = t * t / 4
    return 0.5 + 3 / 8 * (t / math.sqrt(1 + x)) * (1 - t * t / (12 * (1 + x)))


def test_markdown_table_formats():
    rows = [{"a": 1.23456, "b": "x|y", "c": None}, {"a": float("nan"), "b": "z", "c": 0.5}]
    cols = [("a", "A", ".2f"), ("b", "B", None), ("c", "C", "{:.0%}"), ("d", "D", lambda v: f"<{v}>")]
    assert markdown_table(rows, cols) == (
        "| A | B | C | D |\n|---|---|---|---|\n| 1.23 | x\\|y | – | – |\n| n/a | z | 50% | – |"
    )


def test_summarize_two_arms_hand_values(runs):
    base, grow = summarize_arms(runs, baseline="baseline")
    assert base["arm"] == "baseline" and base["is_baseline"] and grow["arm"] == "grow"
    assert base["n"] == grow["n"] == 3 and grow["seeds"] == [0, 1, 2]
    # acc: mean 0.71, sd 0.01 -> half width t(0.975,2) * 0.01 / sqrt(3)
    assert base["acc"]["mean"] == pytest.approx(0.71)
    assert base["acc"]["half_width"] == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3), rel=1e-6)
    assert base["wall_clock_s"]["mean"] == pytest.approx(102.0)
    assert base["ratios"]["wall_clock_s"] is None and base["acc_test"] is None
    # Welch on acc: equal n=3, equal sd 0.01 -> df 4, t = -0.01 / sqrt(2 * 0.0001 / 3)
    test = grow["acc_test"]
    t = -0.01 / math.sqrt(2 * 0.0001 / 3)
    assert test["t"] == pytest.approx(t, rel=1e-6) and test["df"] == pytest.approx(4.0)
    assert test["p"] == pytest.approx(2 * (1 - t_cdf_df4(abs(t))), rel=1e-6)  # 0.287864
    assert test["delta_pt"] == pytest.approx(-1.0)
    half_pt = T_975_DF4 * math.sqrt(2 * 0.0001 / 3) * 100
    assert test["delta_pt_ci"] == pytest.approx((-1.0 - half_pt, -1.0 + half_pt), rel=1e-6)
    # ratio directions: speedup = baseline/arm, throughput and memory = arm/baseline
    assert grow["ratios"]["wall_clock_s"]["ratio"] == pytest.approx(102 / 82)
    assert grow["ratios"]["wall_clock_s"]["direction"] == "baseline/arm"
    assert grow["ratios"]["img_per_s"]["ratio"] == pytest.approx(1.25)
    assert grow["ratios"]["peak_mem_bytes"]["ratio"] == pytest.approx(0.8)


def test_arms_markdown_two_arms(runs):
    md = arms_markdown(summarize_arms(runs, baseline="baseline"))
    lines = md.splitlines()
    assert lines[0] == "| arm | n | acc % (95% CI) | Δacc pt | p | wall-clock s | speedup | img/s | peak mem MiB |"
    # acc CI: 71 ± 2.4841 pt; wall: 102 ± t(0.975,2) * 2 / sqrt(3) = 4.968
    assert lines[2] == "| baseline | 3 | 71.00 [68.52, 73.48] | ref | ref | 102.0 ± 5.0 | 1.00× (ref) | 100.0 | 100.0 |"
    # Δ CI: -1 ± t(0.975,4) * 0.8165 = -1 ± 2.2669 pt; p = 0.288; memory ratio has zero variance -> no CI
    assert re.fullmatch(
        r"\| grow \| 3 \| 70\.00 \[67\.52, 72\.48\] \| -1\.00 \[-3\.27, \+1\.27\] \| 0\.288 \| 82\.0 ± 5\.0 \| "
        r"1\.24× \[1\.\d\d, 1\.\d\d\] \| 125\.0 \(1\.25×\) \| 80\.0 \(0\.80×\) \|",
        lines[3],
    ), lines[3]
    assert len(lines) == 4


def test_single_seed_arm_is_reported_without_fake_ci(runs):
    runs = [r for r in runs if not (r["arm"] == "grow" and r["seed"] > 0)]
    summary = summarize_arms(runs, baseline="baseline")
    assert "n=1" in summary[1]["acc"]["reason"] and math.isnan(summary[1]["acc_test"]["p"])
    row = arms_markdown(summary).splitlines()[3]
    assert row.startswith("| grow | 1 | 69.00 (n=1) | -2.00 | n/a | 80.0 (n=1) | 1.27× |")


def test_time_to_target_column(runs):
    summary = summarize_arms(runs, baseline="baseline", target_acc=0.70)
    # only the seeds whose final acc >= 0.70 reach it, at their last evaluation
    assert summary[0]["time_to_target"]["reached"] == 3
    assert summary[1]["time_to_target"]["reached"] == 2
    assert summary[1]["time_to_target"]["ci"]["mean"] == pytest.approx(83.0)
    md = arms_markdown(summary)
    assert md.splitlines()[0].endswith("| t→target s |") and "(2/3 reached)" in md


def test_seeds_sorted_numerically(runs):
    runs = [*runs, _run("grow", 10, 0.7, 81.0, 124.0, 80)]
    assert summarize_arms(runs, baseline="baseline")[1]["seeds"] == [0, 1, 2, 10]


def test_summarize_rejects_bad_input(runs):
    with pytest.raises(ValueError, match="baseline"):
        summarize_arms(runs, baseline="nope")
    with pytest.raises(ValueError, match="duplicate"):
        summarize_arms([*runs, dict(runs[0])], baseline="baseline")


def test_plot_arms_writes_png(runs, tmp_path):
    path = plot_arms(runs, tmp_path / "plots" / "arms.png", title="synthetic")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_arms_without_matplotlib(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape("pip install growzoo[plots]")):
        plot_arms(runs, tmp_path / "x.png")
