"""Benchmark suites, declared in one place. Each suite measures side by side in one run and returns a JSON-safe
summary whose headline keys the issues name (``bf16_speedup``, ``step_time_ratio``, ``train_speedup``, ...).

``quick`` suites take about two minutes and still measure real ratios (fewer rounds, fewer configurations, no
multi-seed training); full suites add the configurations and the multi-seed accuracy arms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch

from zoo.bench import Arm, interleaved_times, median, run_arms, speedup
from zoo.steps import infer_step_fn, train_step_fn

SUITES: dict[str, Callable[..., dict]] = {}

# the issues' targets for each suite's headline numbers: (comparison, value)
GOALS: dict[str, dict[str, tuple[str, float]]] = {
    "overhead": {"step_time_ratio": ("<=", 1.03)},
    "precision": {"bf16_speedup": (">=", 1.7)},
    "routing": {
        "train_speedup": (">=", 1.55),
        "infer_speedup": (">=", 1.5),
        "infer_speedup_b1": (">=", 0.95),
        "acc_delta_equal_epochs": (">=", -0.5),  # routed c0.25 minus dense, points
        "acc_delta_equal_time": (">", 0.0),
    },
    "unfreeze": {"frozen_half_speedup": (">=", 1.5)},
    "memory": {"ckpt_mem_ratio": (">=", 3.0), "ckpt_time_ratio": ("<=", 1.35), "rev_depth_mem_ratio": ("<=", 1.2)},
    "growth": {"speedup": (">=", 1.6), "acc_delta": (">=", -0.3), "acc_vs_control": (">", 0.0)},
}
GOALS["growth-long"] = GOALS["growth"]  # the same goals, checked at a length where the arms are nearly trained
# growth given the dense run's time: ahead of dense, and the time really equal (within this machine's ~5% noise)
GOALS["growth-equal-time"] = {"time_ratio": ("<=", 1.05), "acc_delta_equal_time": (">", 0.0)}


def suite(name: str):
    def deco(fn):
        SUITES[name] = fn
        return fn

    return deco


def _model(name: str, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def arms_report(
    records: list[dict], baseline: str, out: Path, target_acc: float | None = None, name: str = "arms"
) -> dict:
    """Statistics, markdown and plot for multi-seed arms (written to ``out/NAME.md`` and ``out/NAME.png``)."""
    from zoo.report import arms_markdown, plot_arms, summarize_arms

    summary = summarize_arms(records, baseline=baseline, target_acc=target_acc)
    md = arms_markdown(summary)
    (out / f"{name}.md").write_text(md + "\n")
    try:
        plot_arms(records, out / f"{name}.png")
    except ImportError as e:  # plots are an extra; the numbers stand without them
        print(f"note: {e}")
    return {name: summary, f"{name}_markdown": md}


# ---------------------------------------------------------------------------------------------------- precision
@suite("precision")
def precision_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """fp32 vs bf16 train step: ViT-S/16 at batch 16 (where bf16 pays on this CPU) and the CPU-sized micro model."""
    rounds = 8 if quick else 15  # 3 rounds proved too noisy here (1.63x vs 1.71x from 10 rounds, same machine)
    res: dict = {}
    for label, name, batch in [("small_p16_b16", "zoo_vit_small_p16", 16), ("micro_p4_b128", "zoo_vit_micro_p4", 128)]:
        fns = {p: train_step_fn(_model(name), batch, p) for p in ("fp32", "bf16")}
        t = interleaved_times(fns, rounds=rounds, warmup=1, progress=f"precision {label}")
        res[label] = {
            "fp32_s": median(t["fp32"]),
            "bf16_s": median(t["bf16"]),
            "bf16_speedup": speedup(t, "fp32", "bf16"),
        }
    res["bf16_speedup"] = res["small_p16_b16"]["bf16_speedup"]
    if not quick:
        arms = [Arm("fp32", "fmnist_micro_dense", ["train.precision=fp32"]),
                Arm("bf16", "fmnist_micro_dense", ["train.precision=bf16"])]  # fmt: skip
        records = run_arms(arms, seeds, out / "runs", extra_overrides=overrides, allow_mismatch=allow_mismatch)
        res.update(arms_report(records, "fp32", out))
    return res


# ----------------------------------------------------------------------------------------------------- overhead
@suite("overhead")
def overhead_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Zoo dense ViT vs timm's VisionTransformer of the same shape: train step time ratio (zoo / timm)."""
    rounds = 5 if quick else 15
    configs = [("small_p16_b8", "zoo_vit_small_p16", "vit_small_patch16_224", {}, 8)]
    if not quick:
        configs.append(("micro_p4_b128", "zoo_vit_micro_p4", "vit_small_patch16_224",
                        dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6,
                             num_heads=3), 128))  # fmt: skip
    res: dict = {}
    for label, zoo_name, timm_name, timm_kwargs, batch in configs:
        zm, tm = _model(zoo_name), _model(timm_name, **timm_kwargs)
        tm.model_args = zm.model_args  # the step builder reads the input shape from model_args
        fns = {"zoo": train_step_fn(zm, batch), "timm": train_step_fn(tm, batch)}
        t = interleaved_times(fns, rounds=rounds, warmup=2, progress=f"overhead {label}")
        res[label] = {
            "zoo_s": median(t["zoo"]),
            "timm_s": median(t["timm"]),
            "step_time_ratio": speedup(t, "timm", "zoo") ** -1,
        }
    res["step_time_ratio"] = res["small_p16_b8"]["step_time_ratio"]
    res.update(_input_pipeline_headroom(rounds))
    return res


def _input_pipeline_headroom(rounds: int) -> dict:
    """Is the input pipeline a bottleneck? Its images/s (loader + augmentation + normalisation, full Fashion-MNIST)
    against the training images/s of the default model at the default batch."""
    from zoo.data import build_datasets
    from zoo.pipeline import measure_input_pipeline

    bundle = build_datasets("fashion-mnist")
    pipe = measure_input_pipeline(bundle, batch_size=128, batches=100)
    t = interleaved_times({"train": train_step_fn(_model("zoo_vit_micro_p7"), 128)}, rounds=rounds, warmup=2)
    train_ips = 128 / median(t["train"])
    return {"input_pipeline_img_per_s": pipe, "default_train_img_per_s": train_ips, "input_headroom": pipe / train_ips}


# ------------------------------------------------------------------------------------------------------ routing
def _flops(model, batch: int, train: bool) -> int:
    import torch.nn.functional as F

    from zoo.flops import count_flops
    from zoo.steps import random_batch

    x, y = random_batch(model, batch)
    loss_fn = (lambda out: F.cross_entropy(out, y)) if train else None
    return count_flops(model.train() if train else model.eval(), x, loss_fn=loss_fn)[0]


@suite("routing")
def routing_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Routed vs dense ViT-Ti/16 shape (192 wide, 12 blocks, 196 patch tokens): every other block routed."""
    capacities = [0.25] if quick else [0.5, 0.25, 0.125]
    batches = [1, 128] if quick else [1, 32, 128]
    rounds = 3 if quick else 8
    name = "zoo_vit_tiny_p16"
    res: dict = {"model": name, "configs": []}
    for cap in capacities:
        routing = {"capacity": cap, "layers": "every_other"}
        flops_ratio = _flops(_model(name), 1, train=False) / _flops(_model(name, routing=routing), 1, train=False)
        train_flops_ratio = _flops(_model(name), 2, train=True) / _flops(_model(name, routing=routing), 2, train=True)
        for batch in batches:
            row = {"capacity": cap, "batch": batch, "flops_ratio": flops_ratio, "train_flops_ratio": train_flops_ratio}
            infer = {
                "dense": infer_step_fn(_model(name), batch),
                "routed": infer_step_fn(_model(name, routing=routing), batch),
            }
            t = interleaved_times(
                infer, rounds=rounds * (3 if batch == 1 else 1), warmup=2, progress=f"infer c{cap} b{batch}"
            )
            row["infer_speedup"] = speedup(t, "dense", "routed")
            if batch > 1:
                tr = {
                    "dense": train_step_fn(_model(name), batch),
                    "routed": train_step_fn(_model(name, routing=routing), batch),
                }
                t = interleaved_times(tr, rounds=rounds, warmup=1, progress=f"train c{cap} b{batch}")
                row["train_speedup"] = speedup(t, "dense", "routed")
                row["train_vs_flops"] = row["train_speedup"] / train_flops_ratio
            row["infer_vs_flops"] = row["infer_speedup"] / flops_ratio
            res["configs"].append(row)
    head = next(r for r in res["configs"] if r["capacity"] == 0.25 and r["batch"] == 128)
    b1 = next(r for r in res["configs"] if r["capacity"] == 0.25 and r["batch"] == 1)
    res.update(train_speedup=head["train_speedup"], infer_speedup=head["infer_speedup"],
               infer_speedup_b1=b1["infer_speedup"], flops_ratio=head["flops_ratio"])  # fmt: skip
    if not quick:
        from zoo.experiments import routing_accuracy

        records, extra = routing_accuracy(capacities, seeds, out, overrides or [], allow_mismatch)
        res.update(extra)
        res.update(arms_report(records, "dense", out))
    return res


# ----------------------------------------------------------------------------------------------------- unfreeze
def _frozen(model, first_trainable: int):
    from zoo.freezing import set_trainable_from

    set_trainable_from(model, first_trainable)
    return model


@suite("unfreeze")
def unfreeze_suite(
    quick: bool, out: Path, seeds: list[int], allow_mismatch: bool = False, overrides: list[str] | None = None
) -> dict:
    """Step time with the bottom half frozen vs fully trainable (same model and batch), and the transfer experiment:
    pretrain on Fashion-MNIST classes 0-4, fine-tune on 5-9 with linear probe / full / full+LLRD / gradual+LLRD."""
    rounds = 4 if quick else 10
    name, batch = "zoo_vit_mini_p4", 128  # 192 wide, 12 blocks
    depth = 12
    fns = {
        "trainable": train_step_fn(_model(name), batch),
        # group 0 is the stem, groups 1..12 the blocks: trainable from group 7 freezes the stem and blocks 0-5
        "frozen_half": train_step_fn(_frozen(_model(name), 1 + depth // 2), batch),
    }
    t = interleaved_times(fns, rounds=rounds, warmup=1, progress="unfreeze step")
    res: dict = {
        "model": name,
        "batch": batch,
        "trainable_s": median(t["trainable"]),
        "frozen_half_s": median(t["frozen_half"]),
        "frozen_half_speedup": speedup(t, "trainable", "frozen_half"),
    }
    if not quick:
        pre_dir = out / "pretrain_0to4"
        run_arms([Arm("pretrain_0to4", "fmnist_pretrain_0to4")], [0], pre_dir, overrides, allow_mismatch)
        src = f"model.pretrained=local-dir:{pre_dir / 'pretrain_0to4' / 'seed0' / 'model'}"
        arms = [
            Arm("full_ft", "fmnist_ft_5to9_full", [src]),
            Arm("linear_probe", "fmnist_ft_5to9_linear", [src]),
            Arm("full_ft_llrd", "fmnist_ft_5to9_llrd", [src]),
            Arm("gradual_llrd", "fmnist_ft_5to9_gradual", [src]),
        ]
        records = run_arms(arms, seeds, out / "runs", extra_overrides=overrides, allow_mismatch=allow_mismatch)
        res.update(arms_report(records, "full_ft", out))
    return res


# ------------------------------------------------------------------------------------------------------- memory
def _mem_model(kind: str, depth: int):
    """192 wide, 3 heads, 28 px / patch 4 (50 tokens); ``kind``: none | full | selective | reversible."""
    name = "zoo_revvit_micro_p4" if kind == "reversible" else "zoo_vit_micro_p4"
    model = _model(name, embed_dim=192, num_heads=3, depth=depth)
    if kind in ("full", "selective"):
        model.set_grad_checkpointing(True, every=1, policy=kind)
    return model


def _activation_bytes(model, batch: int) -> int:
    """Peak training memory minus parameters, gradients and optimizer state (the issue's definition). Gradients count
    at their full size whether or not they exist at the peak: the reversible backward materialises parameter gradients
    as autograd outputs before they land in ``.grad``, and they must not pass for activations."""
    from zoo.memory_profile import measure_train_memory

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
    from zoo.report import markdown_table

    cols = [
        ("kind", "blocks", None),
        ("depth", "depth", None),
        ("activation_bytes", "activation MiB", lambda v: f"{v / 2**20:.1f}"),
        ("step_s", "step s", ".3f"),
    ]
    (out / "memory.md").write_text(markdown_table(rows, cols) + "\n")
    if not quick:
        from zoo.experiments import attention_arms

        res["attention"] = _attention_costs(rounds)
        records = attention_arms(seeds, out, overrides or [], allow_mismatch)
        res.update(arms_report(records, "dense", out, name="attention_arms"))
    return res


def _attention_costs(rounds: int) -> list[dict]:
    """FLOPs and train step time of each attention variant against dense attention, side by side: on the
    Fashion-MNIST model that the accuracy arms train (micro_p7, 16 tokens) and at ViT-Ti/16 shape (196 tokens)."""
    from zoo.experiments import ATTENTION_ARMS, TINY_ATTENTION

    rows = []
    for shape, name, variants, batch in [
        ("micro_p7 (16 tokens)", "zoo_vit_micro_p7", ATTENTION_ARMS, 128),
        ("tiny_p16 (196 tokens)", "zoo_vit_tiny_p16", TINY_ATTENTION, 32),
    ]:
        fns = {v: train_step_fn(_model(name, **args), batch) for v, args in variants.items()}
        t = interleaved_times(fns, rounds=rounds, warmup=1, progress=f"attention {name}")
        dense_flops = _flops(_model(name), 1, train=False)
        for v, args in variants.items():
            flops = _flops(_model(name, **args), 1, train=False)
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


# registers the growth suites (their own module; it imports this one's registry)
import zoo.suites_growth  # noqa: E402, F401
