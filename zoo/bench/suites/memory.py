"""The ``memory`` suite: activation checkpointing and reversible blocks (memory and time ratios), and the efficient
attention variants (their costs side by side, and multi-seed accuracy arms on Fashion-MNIST)."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.bench.arms import epochs_from
from zoo.bench.registry import suite
from zoo.bench.report import arms_report, markdown_table
from zoo.bench.runner import Arm, run_arms
from zoo.measure.flops import step_flops
from zoo.measure.memory import measure_train_memory
from zoo.measure.steps import seeded_model, train_step_fn
from zoo.measure.stopwatch import interleaved_times, median, speedup


# ------------------------------------------------------------------------------------------------------- memory
def _mem_model(kind: str, depth: int):
    """192 wide, 3 heads, 28 px / patch 4 (50 tokens); ``kind``: none | full | selective | reversible."""
    name = "zoo_revvit_micro_p4" if kind == "reversible" else "zoo_vit_micro_p4"
    model = seeded_model(name, embed_dim=192, num_heads=3, depth=depth)
    if kind in ("full", "selective"):
        model.set_grad_checkpointing(True, every=1, policy=kind)
    return model


def _activation_bytes(model, batch: int) -> int:
    """Peak training memory minus parameters, gradients and optimizer state (the issue's definition). Gradients count
    at their full size whether or not they exist at the peak: the reversible backward materialises parameter gradients
    as autograd outputs before they land in ``.grad``, and they must not pass for activations."""

    m = measure_train_memory(model, batch)
    b = m["mem_breakdown"]
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return int(m["peak_mem_train_bytes"] - b["params"] - grads - b["optimizer"])


@suite("memory")
def memory_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Activation memory (peak minus params, grads, optimizer state) and step time at depth 6 / 12 / 24 for no
    checkpointing, full and selective checkpointing, and reversible blocks; same width and batch."""
    batch = 64
    rounds = 3 if quick else 6
    kinds = ("none", "full", "selective", "reversible")
    grid = [(k, 12) for k in ("none", "full")] + [("reversible", 6), ("reversible", 24)] if quick else [
        (k, d) for d in (6, 12, 24) for k in kinds
    ]  # fmt: skip
    rows = []
    for kind, depth in grid:
        rows.append(
            {"kind": kind, "depth": depth, "activation_bytes": _activation_bytes(_mem_model(kind, depth), batch)}
        )
    # step times side by side, per depth
    for depth in sorted({d for _, d in grid}):
        at_depth = [r for r in rows if r["depth"] == depth]
        fns = {r["kind"]: train_step_fn(_mem_model(r["kind"], depth), batch) for r in at_depth}
        t = interleaved_times(fns, rounds=rounds, warmup=1, progress=f"memory depth {depth}")
        for r in at_depth:
            r["step_s"] = median(t[r["kind"]])
    by = {(r["kind"], r["depth"]): r for r in rows}
    res = {"batch": batch, "rows": rows}
    res["ckpt_mem_ratio"] = by[("none", 12)]["activation_bytes"] / by[("full", 12)]["activation_bytes"]
    res["ckpt_time_ratio"] = by[("full", 12)]["step_s"] / by[("none", 12)]["step_s"]
    res["rev_depth_mem_ratio"] = by[("reversible", 24)]["activation_bytes"] / by[("reversible", 6)]["activation_bytes"]
    if ("selective", 12) in by:
        res["selective_mem_ratio"] = by[("none", 12)]["activation_bytes"] / by[("selective", 12)]["activation_bytes"]
        res["selective_time_ratio"] = by[("selective", 12)]["step_s"] / by[("none", 12)]["step_s"]

    cols = [
        ("kind", "blocks", None),
        ("depth", "depth", None),
        ("activation_bytes", "activation MiB", lambda v: f"{v / 2**20:.1f}"),
        ("step_s", "step s", ".3f"),
    ]
    (out / "memory.md").write_text(markdown_table(rows, cols) + "\n")
    if not quick:
        res["attention"] = _attention_costs(rounds)
        records = attention_arms(seeds, out, overrides or [], allow_mismatch)
        res.update(arms_report(records, "dense", out, name="attention_arms"))
    return res


def _attention_costs(rounds: int) -> list[dict]:
    """FLOPs and train step time of each attention variant against dense attention, side by side: on the
    Fashion-MNIST model that the accuracy arms train (micro_p7, 16 tokens) and at ViT-Ti/16 shape (196 tokens)."""

    rows = []
    for shape, name, variants, batch in [
        ("micro_p7 (16 tokens)", "zoo_vit_micro_p7", ATTENTION_ARMS, 128),
        ("tiny_p16 (196 tokens)", "zoo_vit_tiny_p16", TINY_ATTENTION, 32),
    ]:
        fns = {v: train_step_fn(seeded_model(name, **args), batch) for v, args in variants.items()}
        t = interleaved_times(fns, rounds=rounds, warmup=1, progress=f"attention {name}")
        dense_flops = step_flops(seeded_model(name), 1, train=False)
        for v, args in variants.items():
            flops = step_flops(seeded_model(name, **args), 1, train=False)
            rows.append(
                {
                    "shape": shape,
                    "variant": v,
                    "batch": batch,
                    "gflops_infer_b1": flops / 1e9,
                    "flops_ratio": dense_flops / flops,
                    "step_s": median(t[v]),
                    "step_speedup": speedup(t, "dense", v),
                }
            )
    return rows


# ------------------------------------------------------------------------------------------- attention variants
#: variant -> model args on zoo_vit_micro_p7 (4 x 4 patch grid): windows of 2 x 2, keys/values pooled 2 x 2,
#: keys/values projected from 16 to 8 tokens, one shared query/key projection.
ATTENTION_ARMS: dict[str, dict] = {
    "dense": {},
    "window": {"attn_type": "window", "attn_args": {"window_size": 2}},
    "spatial_reduction": {"attn_type": "spatial_reduction", "attn_args": {"sr_ratio": 2}},
    "lowrank": {"attn_type": "lowrank", "attn_args": {"k_len": 8}},
    "shared_qk": {"attn_type": "shared_qk"},
}

#: the attention variants at ViT-Ti/16 shape (14 x 14 grid), where attention is a real share of the cost
TINY_ATTENTION = {
    "dense": {},
    "window": {"attn_type": "window", "attn_args": {"window_size": 7}},
    "spatial_reduction": {"attn_type": "spatial_reduction", "attn_args": {"sr_ratio": 2}},
    "lowrank": {"attn_type": "lowrank", "attn_args": {"k_len": 64}},
    "shared_qk": {"attn_type": "shared_qk"},
}


def _args_override(args: dict) -> list[str]:
    return [f"model.args={json.dumps(args)}"] if args else []


def attention_arms(seeds: list[int], out: Path, overrides: list[str], allow_mismatch: bool) -> list[dict]:
    """Each attention variant in the baseline recipe (same epochs, LR and seed) on Fashion-MNIST."""
    epochs = epochs_from(overrides, 2.0)
    common = [*overrides, f"schedule.epochs={epochs}"]
    arms = [Arm(name, "fmnist_micro_dense", _args_override(args)) for name, args in ATTENTION_ARMS.items()]
    return run_arms(arms, seeds, out / "runs", extra_overrides=common, allow_mismatch=allow_mismatch)
