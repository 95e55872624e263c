"""Bench harness: interleaved timing, multi-seed arms in subprocesses, refusal to compare unlike runs."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import tiny_recipe

from zoo.bench.runner import KEPT_FILES, Arm, check_comparable, keep_results, run_arms
from zoo.cli.main import main
from zoo.measure.stopwatch import interleaved_times, paired_speedup, speedup
from zoo.utils.manifest import collect_manifest


def test_interleaved_times_round_robin_order():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved_times(fns, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4 and len(times["a"]) == len(times["b"]) == 3
    assert speedup({"base": [2.0, 2.0, 4.0], "arm": [1.0, 1.0, 9.0]}, "base", "arm") == pytest.approx(2.0)


def test_paired_speedup_pairs_rounds_and_bounds_the_median():
    # a slow spell (rounds 3 and 7 twice as slow for both) moves neither side of the ratio taken within a round
    base = [2.0, 2.0, 4.0, 2.0, 2.0, 2.0, 4.0, 2.0, 2.0, 2.0]
    arm = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0]
    assert paired_speedup({"b": base, "a": arm}, "b", "a") == pytest.approx((2.0, 2.0, 2.0))
    # 10 rounds: the binomial interval of the median runs from the 2nd to the 9th smallest ratio (coverage 97.9%)
    ratios = [1.0 + i / 10 for i in range(10)]  # 1.0 ... 1.9, shuffled into the rounds
    order = [3, 9, 0, 7, 1, 5, 8, 2, 6, 4]
    times = {"b": [ratios[i] for i in order], "a": [1.0] * 10}
    mid, lo, hi = paired_speedup(times, "b", "a")
    assert (mid, lo, hi) == pytest.approx((1.45, 1.1, 1.8))
    assert paired_speedup({"b": [3.0, 2.0], "a": [1.0, 1.0]}, "b", "a")[1:] == (2.0, 3.0), "few rounds: the range"
    with pytest.raises(ValueError, match="same number"):
        paired_speedup({"b": [1.0, 2.0], "a": [1.0]}, "b", "a")
    with pytest.raises(ValueError, match="confidence"):
        paired_speedup(times, "b", "a", confidence=1.0)


def test_refuses_to_compare_runs_from_different_setups():
    a = collect_manifest({"x": 1}, seed=0, extra={"arm": "a"})
    b = json.loads(json.dumps(collect_manifest({"x": 2}, seed=1, extra={"arm": "b"})))
    check_comparable([{"arm": "a", "seed": 0, "manifest": a}, {"arm": "b", "seed": 1, "manifest": b}])
    b["versions"]["torch"] = "0.0.1"
    recs = [{"arm": "a", "seed": 0, "manifest": a}, {"arm": "b", "seed": 1, "manifest": b}]
    with pytest.raises(RuntimeError, match="versions.torch"):
        check_comparable(recs)
    check_comparable(recs, allow_mismatch=True)


def test_run_arms_end_to_end(tmp_path, fmnist):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("# zoo train tiny.yaml\n" + yaml.safe_dump(tiny_recipe(schedule={"steps": 3})))
    arms = [Arm("base", str(recipe)), Arm("lr_high", str(recipe), ["optim.lr=0.01"])]
    records = run_arms(arms, [0, 1], tmp_path / "out")
    assert [(r["arm"], r["seed"]) for r in records] == [("base", 0), ("lr_high", 0), ("base", 1), ("lr_high", 1)]
    for r in records:
        assert 0 <= r["acc"] <= 1 and r["wall_clock_s"] > 0 and r["peak_mem_bytes"] > 10e6 and r["curve"]
    # a second call reuses finished runs instead of training again
    again = run_arms(arms, [0, 1], tmp_path / "out")
    assert [r["acc"] for r in again] == [r["acc"] for r in records]


def test_runs_from_machines_of_different_capability_are_refused():
    a = collect_manifest({"x": 1}, seed=0, extra={"arm": "a"})
    b = json.loads(json.dumps(a))
    b["cpu_model"], b["git_sha"] = "another CPU of the same kind", "0" * 40  # a later session: still comparable
    check_comparable([{"arm": "a", "seed": 0, "manifest": a}, {"arm": "b", "seed": 1, "manifest": b}])
    b["cpu_capability"] = "AVX2" if a["cpu_capability"] != "AVX2" else "AVX512"
    with pytest.raises(RuntimeError, match="cpu_capability"):
        check_comparable([{"arm": "a", "seed": 0, "manifest": a}, {"arm": "b", "seed": 1, "manifest": b}])


def test_kept_results_survive_the_runs_folder_and_are_reused(tmp_path, fmnist):
    """Inside keep_results, finished runs' small records go to the kept folder; a suite rerun on a clean checkout
    (no runs/ folder) reuses them without training, and refuses kept runs of other settings."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(schedule={"steps": 3})))
    arms = [Arm("base", str(recipe))]
    kept = tmp_path / "results" / "suite"
    with keep_results(kept):
        records = run_arms(arms, [0], tmp_path / "runs")
    assert sorted(p.name for p in (kept / "base" / "seed0").iterdir()) == sorted(KEPT_FILES)
    shutil.rmtree(tmp_path / "runs")
    with keep_results(kept):
        again = run_arms(arms, [0], tmp_path / "runs")
    assert not (tmp_path / "runs" / "base" / "seed0").exists()  # nothing was trained
    assert again[0]["acc"] == records[0]["acc"] and again[0]["curve"] == records[0]["curve"]
    with keep_results(kept), pytest.raises(RuntimeError, match="other settings"):
        run_arms([Arm("base", str(recipe), ["optim.lr=0.5"])], [0], tmp_path / "runs")


def test_bench_cli_unknown_suite(capsys):
    assert main(["bench", "nope"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_compare_models_reports_the_paired_speedup_over_a_reference():
    import timm

    from zoo.measure.compare import compare_models

    dense = timm.create_model("zoo_vit_micro_p7", depth=1)
    routed = timm.create_model("zoo_vit_micro_p7", depth=1, routing={"capacity": 0.25, "layers": "all"})
    out = compare_models({"dense": dense, "routed": routed}, batch=4, rounds=3, warmup=1, reference="dense")
    assert out["dense"]["infer_speedup"] == 1.0 and out["dense"]["infer_speedup_ci"] == [1.0, 1.0]
    lo, hi = out["routed"]["infer_speedup_ci"]
    assert lo <= out["routed"]["infer_speedup"] <= hi and out["routed"]["flops_per_img"] < out["dense"]["flops_per_img"]
    with pytest.raises(ValueError, match="reference 'base' is not one of"):
        compare_models({"dense": dense}, batch=2, rounds=1, reference="base")
