"""Generated README sections: bench tables from summaries (full runs win over quick ones), markers checked."""

import json

import pytest

from zoo.bench.readme import bench_markdown, replace_section
from zoo.cli.main import main

README = "# x\n<!-- bench-routing:start -->\nold\n<!-- bench-routing:end -->\n<!-- zoo:start -->\n<!-- zoo:end -->\n"


def summary(quick: bool, value: float) -> dict:
    return {
        "suite": "routing",
        "quick": quick,
        "seeds": [0, 1, 2],
        "overrides": [] if quick else ["schedule.epochs=2", 'model.args={"a": 1}'],
        "train_speedup": value,
        "configs": [
            {"capacity": 0.25, "batch": 1, "infer_speedup": 1.2},  # batch-1 rows have no train columns
            {"capacity": 0.25, "batch": 128, "infer_speedup": 1.6, "train_speedup": value},
        ],
        "finetune": {"acc_before": 0.79376, "acc_after": 0.795},
        "arms_markdown": "| arm |\n|---|\n| dense |",
        "manifest": {"cpu_model": "CPU", "cpu_count": 2, "versions": {"torch": "2"}, "created_at": "2026-11-24T00"},
    }


def test_replace_section_needs_exactly_one_marker_pair():
    assert "new" in replace_section(README, "bench-routing", "new")
    with pytest.raises(ValueError, match="bench-growth"):
        replace_section(README, "bench-growth", "x")


def test_bench_markdown_keeps_every_column_and_quotes_the_command():
    md = bench_markdown(summary(False, 1.99))
    header = next(line for line in md.splitlines() if line.startswith("| capacity"))
    assert "train_speedup" in header
    assert "| 0.25 | 1 | 1.2 | – |" in md  # the missing train cell is marked, not shifted
    assert "--seeds 0,1,2 --set schedule.epochs=2 --set 'model.args={\"a\": 1}'" in md
    assert '"acc_before": 0.7938' in md and "| dense |" in md
    assert "| train_speedup | 1.99 | >= 1.55 | yes |" in md


def test_zoo_readme_prefers_the_full_run_over_the_quick_one(tmp_path, capsys):
    bench = tmp_path / "bench"
    for name, s in (("routing", summary(False, 1.99)), ("routing-quick", summary(True, 2.09))):
        (bench / name).mkdir(parents=True)
        (bench / name / "summary.json").write_text(json.dumps(s))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main(["readme", "--bench-dir", str(bench), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| train_speedup | 1.99 |" in text and "2.09" not in text
    # a full run kept aside under another folder name does not replace the suite's own folder's
    (bench / "routing-rerun").mkdir()
    (bench / "routing-rerun" / "summary.json").write_text(json.dumps(summary(False, 1.51)))
    (bench / "a-routing-rerun").mkdir()  # sorts before routing/ by name: the order must not come from names
    (bench / "a-routing-rerun" / "summary.json").write_text(json.dumps(summary(False, 1.52)))
    assert main(["readme", "--bench-dir", str(bench), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| train_speedup | 1.99 |" in text and "1.51" not in text and "1.52" not in text


def test_growth_summary_names_its_headline_arm_and_tabulates_loss_spikes():
    s = {
        "suite": "growth",
        "seeds": [0, 1, 2],
        "headline_arm": "grow_depth_late",
        "speedup": 1.9,
        "acc_delta": -0.1,
        "acc_vs_control_by_arm": {"grow_depth_late": 2.5, "grow_both": -0.01},
        "loss_spikes": {"grow_depth_late": [{"step": 702, "event": {"growth_stage": 1}, "mean_spike": 0.25, "n": 3}]},
    }
    md = bench_markdown(s)
    assert "arm `grow_depth_late`" in md
    assert "| speedup | 1.9 | >= 1.6 | yes |" in md and "| acc_delta | -0.1 | >= -0.3 | yes |" in md
    assert '"grow_both": -0.01' in md
    assert "| arm | step | stage | mean spike | seeds |" in md and "| grow_depth_late | 702 | 1 | 0.25 | 3 |" in md


def test_every_suite_has_its_section_in_the_readme():
    from pathlib import Path

    from zoo.bench.suites import SUITES

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in SUITES:  # `zoo readme` would fail on a suite whose results have nowhere to go
        assert text.count(f"<!-- bench-{name}:start -->") == 1 and text.count(f"<!-- bench-{name}:end -->") == 1


def test_zoo_table_leads_with_the_newest_model(tmp_path):
    from zoo.bench.readme import zoo_table

    for name, created in (("a_old.fmnist", "2026-11-24T04:21:23+00:00"), ("z_new.fmnist", "2026-12-03T01:00:00+00:00")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "result.json").write_text(json.dumps({"final_acc": 0.9, "wall_clock_s": 60.0}))
        (folder / "manifest.json").write_text(json.dumps({"created_at": created}))
    rows = [line for line in zoo_table(tmp_path).splitlines() if line.startswith("| ") and "fmnist" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| z_new.fmnist", "| a_old.fmnist"]
