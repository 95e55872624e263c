"""The full suites' training experiments: their pure parts, and the routing experiment end to end on a tiny subset
(the real one trains for an hour; this guards its wiring: arms, equal-time epochs, fine-tune row, speed)."""

import json
from pathlib import Path

import pytest
import timm
import yaml

from zoo.bench.arms import epochs_from, growth_events, mean_by_arm, mean_spikes, without_key
from zoo.bench.suites.memory import ATTENTION_ARMS
from zoo.bench.suites.routing import routing_accuracy


def test_epochs_from_takes_the_last_override_else_default():
    assert epochs_from([], 3.0) == 3.0
    assert epochs_from(["schedule.epochs=5", "optim.lr=1", "schedule.epochs=2.5"], 3.0) == 2.5
    with pytest.raises(ValueError, match="schedule.epochs"):
        epochs_from(["schedule.epochs=many"], 3.0)
    with pytest.raises(ValueError, match="schedule.steps"):
        epochs_from(["schedule.steps=100"], 3.0)


def test_freezing_headline_is_the_headline_arm_against_the_full_fine_tune():
    from zoo.bench.suites.unfreeze import FINE_TUNES, HEADLINE_ARM, freezing_headline

    assert HEADLINE_ARM in FINE_TUNES and "full_ft" in FINE_TUNES
    records = [{"arm": "full_ft", "acc": a, "wall_clock_s": w} for a, w in ((0.96, 110.0), (0.97, 112.0))]
    records += [{"arm": HEADLINE_ARM, "acc": a, "wall_clock_s": w} for a, w in ((0.955, 80.0), (0.96, 82.0))]
    records += [{"arm": "linear_probe", "acc": 0.7, "wall_clock_s": 30.0}]
    h = freezing_headline(records)
    assert h["headline_arm"] == HEADLINE_ARM
    assert h["speedup"] == pytest.approx(111.0 / 81.0) and h["acc_delta"] == pytest.approx(-0.75)


def test_without_key():
    assert without_key(["schedule.epochs=2", "data.train_subset=5", " schedule.epochs =3"], "schedule.epochs") == [
        "data.train_subset=5"
    ]


def test_mean_by_arm():
    recs = [{"arm": "a", "acc": 0.5}, {"arm": "a", "acc": 0.7}, {"arm": "b", "acc": 0.1}]
    assert mean_by_arm(recs, "acc") == pytest.approx({"a": 0.6, "b": 0.1})


def _metrics(*recs):
    return [json.dumps(r) for r in recs]


def test_growth_events_pair_each_event_with_the_loss_after_it():
    lines = _metrics(
        {"step": 10, "loss": 1.0},
        {"step": 20, "event": {"growth_stage": 1}, "loss_before": 0.9},
        {"step": 21, "loss_after_event": 1.4},
        {"step": 40, "event": {"growth_stage": 2}, "loss_before": 0.7},
        {"step": 41, "loss_after_event": 0.6},
    )
    ev = growth_events(lines)
    assert [e["step"] for e in ev] == [20, 40]
    assert ev[0]["spike"] == pytest.approx(0.5) and ev[1]["spike"] == pytest.approx(-0.1)


def test_growth_events_event_without_after_has_no_spike():
    ev = growth_events(_metrics({"step": 20, "event": {"growth_stage": 1}, "loss_before": 0.9}))
    assert "spike" not in ev[0]
    assert mean_spikes([ev]) == [{"step": 20, "event": {"growth_stage": 1}, "mean_spike": None, "n": 0}]


def test_mean_spikes_average_over_seeds():
    a = [{"step": 5, "event": "g1", "spike": 0.2}, {"step": 9, "event": "g2", "spike": 0.0}]
    b = [{"step": 5, "event": "g1", "spike": 0.4}, {"step": 9, "event": "g2", "spike": 0.2}]
    out = mean_spikes([a, b])
    assert [o["mean_spike"] for o in out] == pytest.approx([0.3, 0.1])
    assert all(o["n"] == 2 for o in out)


def test_attention_arms_build_on_the_fashion_mnist_model():
    import timm

    import zoo  # noqa: F401

    for name, args in ATTENTION_ARMS.items():
        m = timm.create_model("zoo_vit_micro_p7", **args)
        assert m.model_args.get("attn_type", "dense") == (args.get("attn_type") or "dense"), name


@pytest.mark.slow  # 0.5-2 minutes alone: every arm of the suite trained end to end on a subset
def test_routing_experiment_end_to_end_on_a_subset(tmp_path, fmnist):
    tiny = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "schedule.epochs=1"]
    records, extra = routing_accuracy([0.25], [0], tmp_path, tiny, allow_mismatch=False)
    arms = {r["arm"] for r in records}
    assert arms == {"dense", "routed_c0.25", "routed_c0.25_equal_time"}
    # the equal-time arm's epochs follow from the measured wall-clocks of the equal-epoch arms
    walls = mean_by_arm(records, "wall_clock_s")
    assert extra["equal_time_epochs"] == pytest.approx(round(walls["dense"] / walls["routed_c0.25"], 2))
    recipe = (tmp_path / "runs" / "routed_c0.25_equal_time" / "seed0" / "recipe.yaml").read_text()
    assert f"epochs: {extra['equal_time_epochs']}" in recipe
    ft = extra["finetune"]
    assert ft["per_seed"][0]["before"] == next(r["acc"] for r in records if r["arm"] == "dense")
    assert 0.0 < ft["acc_after"] <= 1.0 and ft["infer_speedup_b256"] > 0
    # the fine-tune kept its recipe's own 2 epochs (the suite's epoch override is not applied to it)
    ft_recipe = (tmp_path / "runs" / "dense_to_routed" / "seed0" / "recipe.yaml").read_text()
    assert "epochs: 2" in ft_recipe and "train_subset: 256" in ft_recipe
    control = yaml.safe_load((tmp_path / "runs" / "dense_finetune_control" / "seed0" / "recipe.yaml").read_text())
    assert control.get("routing") is None and control["schedule"]["epochs"] == 2
    assert ft["acc_vs_control_pt"] == pytest.approx(100 * (ft["acc_after"] - ft["acc_control"]))
    # a rerun reuses the finished runs; asking for other settings in the same folder is refused, not mislabeled
    again, _ = routing_accuracy([0.25], [0], tmp_path, tiny, allow_mismatch=False)
    assert [r["acc"] for r in again] == [r["acc"] for r in records]
    with pytest.raises(RuntimeError, match="trained with other settings"):
        routing_accuracy([0.25], [0], tmp_path, [*tiny[:-1], "schedule.epochs=2"], allow_mismatch=False)


def test_every_growth_arm_has_a_bundled_recipe_and_a_distinct_control_name():
    from zoo.bench.suites.growth import (
        GROWTH_ARMS,
        GROWTH_CONTROLLED,
        GROWTH_HEADLINE,
        GROWTH_LONG_ARMS,
        GROWTH_LONG_HEADLINE,
        control_arm,
    )

    schedules = Path(__file__).resolve().parent.parent / "schedules"
    every = {**GROWTH_ARMS, **GROWTH_LONG_ARMS}
    assert all((schedules / f"{recipe}.yaml").is_file() for recipe in every.values())
    assert GROWTH_HEADLINE in GROWTH_CONTROLLED and set(GROWTH_CONTROLLED) <= set(GROWTH_ARMS)
    assert GROWTH_LONG_HEADLINE in GROWTH_LONG_ARMS
    assert all(every[name] == recipe for name, recipe in GROWTH_ARMS.items())  # one name, one recipe in both suites
    names = [control_arm(a) for a in every]
    assert len(set(names)) == len(names) and control_arm("grow_both") == "dense_matched_both"
    assert not set(names) & {"dense", *every}


@pytest.mark.slow  # 0.5-2 minutes alone: every arm of the suite trained end to end on a subset
def test_growth_long_suite_end_to_end_on_a_subset(tmp_path, fmnist):
    from zoo.bench.suites import SUITES
    from zoo.hub import load_folder

    # the 9-epoch headline (depth, then MLP width) and the 3-epoch one (depth and MLP width grow in one stage: the
    # growth operators' maps compose) through real training runs
    tiny = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "schedule.epochs=2"]
    res = SUITES["growth-long"](quick=False, out=tmp_path, seeds=[0], overrides=tiny)
    head, control = "grow_depth_mlp_long", "dense_matched_depth_mlp_long"
    assert res["headline_arm"] == head and res["epochs"] == 2.0
    assert {a["arm"] for a in res["arms"]} == {"dense", head, "grow_depth_mlp", control}
    fraction = res["compute_fraction"][head]
    assert 0.4 < fraction < 0.8 and res["control_epochs"] == {head: round(2 * fraction, 2)}
    recipe = yaml.safe_load((tmp_path / "runs" / control / "seed0" / "recipe.yaml").read_text())
    assert recipe["schedule"]["epochs"] == round(2 * fraction, 2) and recipe["schedule"]["warmup"] == 0.055
    acc = {a["arm"]: a["acc"]["mean"] for a in res["arms"]}
    assert res["acc_vs_control"] == pytest.approx(100 * (acc[head] - acc[control]))
    assert res["speedup"] > 0 and res["acc_delta"] == pytest.approx(100 * (acc[head] - acc["dense"]))
    assert [e["step"] for e in res["loss_spikes"][head]] == [3, 6, 7]  # 35% / 65% / 85% of 8 steps, rounded up
    # 8 steps: the growths at 50% and 75% are logged with the loss either side
    spikes = res["loss_spikes"]["grow_depth_mlp"]
    assert [e["step"] for e in spikes] == [4, 6] and all(e["n"] == 1 for e in spikes)
    # the exported models are the final architecture: 6 blocks, MLP hidden 256 (ratio 2), as the dense arm
    for arm in (head, "grow_depth_mlp"):
        grown = load_folder(tmp_path / "runs" / arm / "seed0" / "model")
        assert len(grown.blocks) == 6 and grown.blocks[0].mlp.fc1.out_features == 256


@pytest.mark.slow  # 0.5-2 minutes alone: every arm of the suite trained end to end on a subset
def test_growth_equal_time_suite_end_to_end_on_a_subset(tmp_path, fmnist):
    from zoo.bench.suites import SUITES
    from zoo.bench.suites.growth import GROWTH_LONG_SPEEDUP
    from zoo.hub import load_folder

    tiny = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "schedule.epochs=2"]
    res = SUITES["growth-equal-time"](quick=False, out=tmp_path, seeds=[0], overrides=tiny)
    head = "grow_depth_mlp_long_equal_time"
    assert res["headline_arm"] == head and res["epochs"] == 2.0
    assert res["equal_time_epochs"] == round(2 * GROWTH_LONG_SPEEDUP, 2)
    assert {a["arm"] for a in res["arms"]} == {"dense", head}
    runs = tmp_path / "runs"
    for arm, epochs in (("dense", 2.0), (head, res["equal_time_epochs"])):
        recipe = yaml.safe_load((runs / arm / "seed0" / "recipe.yaml").read_text())
        assert recipe["schedule"]["epochs"] == epochs and recipe["schedule"]["warmup"] == 0.055
    steps = {arm: json.loads((runs / arm / "seed0" / "result.json").read_text())["steps"] for arm in ("dense", head)}
    assert steps == {"dense": 8, head: 14}  # 4 steps per epoch (256 images, batch 64); 3.26 epochs: 13.04, rounded up
    acc = {a["arm"]: a["acc"]["mean"] for a in res["arms"]}
    wall = {a["arm"]: a["wall_clock_s"]["mean"] for a in res["arms"]}
    assert res["acc_delta_equal_time"] == pytest.approx(100 * (acc[head] - acc["dense"]))
    assert res["time_ratio"] == pytest.approx(wall[head] / wall["dense"])
    grown = load_folder(runs / head / "seed0" / "model")
    assert len(grown.blocks) == 6 and grown.blocks[0].mlp.fc1.out_features == 256


def test_convert_speed_rows_compare_every_model_with_the_dense_one():
    from zoo.bench.suites.convert import merged_copy, speed_rows

    dense = timm.create_model("zoo_vit_micro_conv_p4", num_classes=10, stem_width=8).eval()
    merged = merged_copy(dense, 8)
    assert merged.model_args["merging"] == {"r": 8, "layers": "all"} and dense.model_args["merging"] is None
    rows = speed_rows({"dense": dense, "merge_r8": merged}, {"dense": 0.9, "merge_r8": 0.885}, rounds=1)
    by = {r["model"]: r for r in rows}
    assert by["dense"]["speedup"] == 1.0 and by["dense"]["Δ pt"] == 0.0
    assert by["dense"]["speedup 95% CI"] == "[1.00, 1.00]", "the reference against itself, round by round"
    assert by["merge_r8"]["Δ pt"] == pytest.approx(-1.5) and by["merge_r8"]["MFLOP"] < by["dense"]["MFLOP"]


@pytest.mark.slow
def test_convert_suite_end_to_end_on_a_subset(tmp_path, fmnist, monkeypatch):
    from zoo.bench.suites import convert

    monkeypatch.setattr(convert, "MERGE_SWEEP", (8,))
    tiny = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "schedule.steps=2"]
    res = convert.convert_suite(False, tmp_path, [0], overrides=tiny)
    assert [r["model"] for r in res["training_free"]] == ["dense", "merge_r8"]
    assert [r["model"] for r in res["rows"]] == ["dense", "merged_kd", "routed_kd", "dense_kd_control"]
    control = yaml.safe_load((tmp_path / "runs" / "dense_kd_control" / "seed0" / "recipe.yaml").read_text())
    assert control["merging"] is None and control["distill"]["teacher"] == "pretrained"
    head = next(r for r in res["rows"] if r["model"] == convert.HEADLINE)
    assert res["headline_arm"] == convert.HEADLINE in {"merged_kd", "routed_kd"}
    assert res["infer_speedup"] == head["speedup"] and res["acc_delta"] == head["Δ pt"]
    assert res["infer_speedup_ci"] == head["speedup 95% CI"]
    assert res["eval_split"] == "test" and 0 < res["dense_acc"] <= 1


@pytest.mark.slow  # 0.5-2 minutes alone: every arm of the suite trained end to end on a subset
def test_growth_baseline_suite_end_to_end_on_a_subset(tmp_path, fmnist):
    from zoo.bench.suites import SUITES
    from zoo.bench.suites.growth_baseline import GROWTH_BASELINE_ARM, GROWTH_BASELINE_RECIPE
    from zoo.hub import load_folder

    tiny = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "schedule.epochs=2"]
    res = SUITES["growth-baseline"](quick=False, out=tmp_path, seeds=[0], overrides=tiny)
    head, control = GROWTH_BASELINE_ARM, "dense_matched_grow"
    assert res["headline_arm"] == head
    assert {a["arm"] for a in res["arms"]} == {"dense", head, control}
    fraction = res["compute_fraction"][head]
    assert 0.3 < fraction < 0.9 and res["control_epochs"] == {head: round(2 * fraction, 2)}
    runs = tmp_path / "runs"
    dense_recipe = yaml.safe_load((runs / "dense" / "seed0" / "recipe.yaml").read_text())
    control_recipe = yaml.safe_load((runs / control / "seed0" / "recipe.yaml").read_text())
    assert control_recipe["schedule"]["epochs"] == round(2 * fraction, 2)
    # the control is the baseline recipe itself, only shorter: no suite-wide schedule change between the arms
    assert {k: v for k, v in control_recipe["schedule"].items() if k != "epochs"} == {
        k: v for k, v in dense_recipe["schedule"].items() if k != "epochs"
    }
    acc = {a["arm"]: a["acc"]["mean"] for a in res["arms"]}
    wall = {a["arm"]: a["wall_clock_s"]["mean"] for a in res["arms"]}
    assert res["acc_vs_control"] == pytest.approx(100 * (acc[head] - acc[control]))
    assert res["acc_delta"] == pytest.approx(100 * (acc[head] - acc["dense"]))
    assert res["speedup"] == pytest.approx(wall["dense"] / wall[head])
    assert len(res["loss_spikes"][head]) == len(load_recipe_stages(GROWTH_BASELINE_RECIPE))
    # the exported growth model is the baseline's architecture, at the baseline's resolution
    grown, dense = (load_folder(runs / arm / "seed0" / "model") for arm in (head, "dense"))
    assert grown.model_args["img_size"] == dense.model_args["img_size"] == 28
    assert sorted(grown.state_dict()) == sorted(dense.state_dict())


def load_recipe_stages(name: str) -> list:
    from zoo.training.recipe import load_recipe
    from zoo.training.recipe_lookup import resolve_recipe_path

    return load_recipe(resolve_recipe_path(name)).growth.stages


def test_grow_pretrained_suite_end_to_end_on_a_subset(tmp_path, fmnist):
    from zoo.bench.suites import SUITES
    from zoo.hub import load_folder

    tiny = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "schedule.epochs=1"]
    res = SUITES["grow-pretrained"](quick=False, out=tmp_path, seeds=[0], overrides=tiny)
    assert res["headline_arm"] == "grown" and res["base_model"] == "zoo_vit_micro_conv_p4.fmnist"
    assert {a["arm"] for a in res["arms"]} == {"scratch", "grown"}
    acc = {a["arm"]: a["acc"]["mean"] for a in res["arms"]}
    wall = {a["arm"]: a["wall_clock_s"]["mean"] for a in res["arms"]}
    assert res["time_ratio"] == pytest.approx(wall["grown"] / wall["scratch"])
    assert res["acc_delta"] == pytest.approx(100 * (acc["grown"] - acc["scratch"]))
    assert res["acc_vs_base"] == pytest.approx(100 * acc["grown"] - res["base_acc_pct"])
    assert 50 < res["base_acc_pct"] <= 100  # the published model, evaluated on the same 256 test images
    # both arms end as the same architecture: the baseline's, at twice its depth
    runs = tmp_path / "runs"
    grown, scratch = (load_folder(runs / arm / "seed0" / "model") for arm in ("grown", "scratch"))
    assert len(grown.blocks) == len(scratch.blocks) == 8
    assert sorted(grown.state_dict()) == sorted(scratch.state_dict())
    with pytest.raises(ValueError, match="val_split"):
        SUITES["grow-pretrained"](quick=False, out=tmp_path / "v", seeds=[0], overrides=[*tiny, "data.val_split=500"])
