"""Profile a model for CPU-limited training: FLOPs, peak training memory, throughput, MFU and a per-block breakdown.

Backs ``zoo profile MODEL [--batch N] [--img-size S] [--precision bf16|fp32] [--json]``: ``profile_model`` returns a
JSON-safe dict and ``format_profile`` renders it. FLOP counting lives in ``zoo.measure.flops``.

Measurement choices:
  - FLOPs: ``FlopCounterMode`` (matmuls only, 2*M*N*K) with the CPU flash-attention kernels registered; the train
    step is forward + backward of the model as defined (activation checkpointing disabled while counting, so these
    are *model* FLOPs, the MFU convention; recomputation would add about one forward). The optimizer step is
    negligible (~10 FLOPs/parameter) and not counted.
  - Memory: see ``measure_train_memory`` (in ``zoo.measure.memory``, re-exported here). Tensor-level live-bytes
    tracking on every device; on CUDA the peak itself comes from the caching allocator's ``max_memory_allocated``.
  - Throughput: median wall time (``time.perf_counter``; ``cuda.synchronize`` on CUDA) of ``iters`` steps after
    ``warmup`` steps. A train step is forward + cross-entropy + backward + AdamW step + zero_grad.
  - MFU: train-step FLOPs / median step time, over the best square-GEMM FLOP/s measured in the same run at the same
    precision (``measure_gemm_peak``), so it is relative to what this machine's BLAS actually reaches, not a
    datasheet number.

The device/precision helpers and the batch, loss, optimizer and train step that both timing and memory measure live
in ``zoo.measure.steps``.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import timm
import torch
from torch import nn

from zoo.measure.flops import count_flops
from zoo.measure.machine import measure_gemm_peak
from zoo.measure.memory import measure_train_memory, train_memory
from zoo.measure.steps import (
    PRECISIONS,
    autocast,
    check_precision,
    make_batch,
    make_optimizer,
    model_input_size,
    resolve_device,
    sync,
    train_step,
)
from zoo.measure.stopwatch import median_time
from zoo.utils.manifest import cpu_capability
from zoo.utils.units import mib, si

__all__ = [
    "PRECISIONS",
    "format_profile",
    "measure_gemm_peak",
    "measure_train_memory",
    "profile_model",
]


# -------------------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _no_checkpointing(model: nn.Module) -> Iterator[None]:
    """Switch off timm-style ``grad_checkpointing`` flags (on any submodule) for the duration, then restore them."""
    saved = [
        (m, m.grad_checkpointing) for m in model.modules() if isinstance(getattr(m, "grad_checkpointing", None), bool)
    ]
    try:
        for m, _ in saved:
            m.grad_checkpointing = False
        yield
    finally:
        for m, v in saved:
            m.grad_checkpointing = v


# ------------------------------------------------------------------------------------------------ block breakdown
def _row_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level modules as report rows: direct children, with Sequential/ModuleList containers expanded."""
    rows = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            rows.extend((f"{name}.{i}", m) for i, m in child.named_children())
        else:
            rows.append((name, child))
    return rows


def _block_times(
    model: nn.Module, x: torch.Tensor, modules: list[tuple[str, nn.Module]], runs: int, device: str, amp
) -> tuple[dict[str, float], float]:
    """Median forward seconds per module (timed by pre/post forward hooks on the real inputs) and of the whole."""
    per: dict[str, list[float]] = {name: [] for name, _ in modules}
    acc: dict[str, float] = {}
    start: dict[str, float] = {}

    def pre(name: str, *_: Any) -> None:
        sync(device)
        start[name] = time.perf_counter()

    def post(name: str, *_: Any) -> None:
        sync(device)
        acc[name] = acc.get(name, 0.0) + time.perf_counter() - start[name]  # summed if a module runs twice

    handles = []
    for name, m in modules:
        handles.append(m.register_forward_pre_hook(partial(pre, name)))
        handles.append(m.register_forward_hook(partial(post, name)))
    totals = []
    try:
        with torch.inference_mode(), amp:
            model(x)  # warm-up with hooks installed
            for _ in range(runs):
                acc.clear()
                sync(device)
                t0 = time.perf_counter()
                model(x)
                sync(device)
                totals.append(time.perf_counter() - t0)
                for name in per:
                    per[name].append(acc.get(name, 0.0))
    finally:
        for h in handles:
            h.remove()
    return {k: statistics.median(v) for k, v in per.items()}, statistics.median(totals)


def _breakdown_rows(
    model: nn.Module,
    fwd: dict[str, int],
    train: dict[str, int],
    flops_fwd: int,
    flops_train: int,
    times: dict[str, float] | None,
    total_time: float | None,
) -> list[dict[str, Any]]:
    rows = []
    for name, m in _row_modules(model):
        n_params = sum(p.numel() for p in m.parameters())
        if not n_params and not fwd.get(name):
            continue  # Dropout / Identity / pos_drop: folded into '(other)'
        rows.append(
            {
                "name": name,
                "params": n_params,
                "flops_fwd": fwd.get(name, 0),
                "flops_train": train.get(name, 0),
                "time_fwd_s": None if times is None else times.get(name, 0.0),
            }
        )
    other_time = None
    if times is not None and total_time is not None:
        other_time = max(total_time - sum(r["time_fwd_s"] for r in rows), 0.0)
    rows.append(
        {
            "name": "(other)",  # parameter-free glue: position embedding, token concat, pooling, dropouts
            "params": sum(p.numel() for p in model.parameters()) - sum(r["params"] for r in rows),
            "flops_fwd": flops_fwd - sum(r["flops_fwd"] for r in rows),
            "flops_train": flops_train - sum(r["flops_train"] for r in rows),
            "time_fwd_s": other_time,
        }
    )
    return rows


# ---------------------------------------------------------------------------------------------------- public API
def _profiled_copy(model: nn.Module | str, img_size: int | None) -> tuple[str, nn.Module]:
    """The model's name and the instance to profile: a new timm model for a name, else a deep copy (resized to
    ``img_size`` when given and different), so the caller's model is never touched."""
    if isinstance(model, str):
        return model, timm.create_model(model, **({"img_size": img_size} if img_size is not None else {}))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture") or type(model).__name__
    model = copy.deepcopy(model)
    pe_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None and pe_size is not None and tuple(pe_size) != (img_size, img_size):
        if not hasattr(model, "set_input_size"):
            raise ValueError(f"model is built for {tuple(pe_size)} inputs and cannot be resized to img_size={img_size}")
        model.set_input_size(img_size=img_size)
    return name, model


def profile_model(
    model: nn.Module | str,
    batch: int = 32,
    img_size: int | None = None,
    precision: str = "fp32",
    iters: int = 10,
    warmup: int = 3,
    device: str | None = None,
    breakdown: bool = True,
) -> dict:
    """Profile one model: FLOPs, peak training memory, train/inference throughput, MFU and a per-block breakdown.

    Args:
        model: a module (profiled on a deep copy, so its weights and optimizer-free state are untouched) or a timm
            model name (created with ``timm.create_model``, with ``img_size`` if given).
        batch: images per step.
        img_size: input side; default ``model.pretrained_cfg['input_size']``. For a module instance with
            ``set_input_size`` the copy is resized to it.
        precision: 'fp32' or 'bf16' (``torch.autocast`` on the model's device, CPU included).
        iters: timed iterations per throughput measurement (the median is reported).
        warmup: untimed iterations before each throughput measurement.
        device: 'cpu', 'cuda', ...; default CUDA when available.
        breakdown: also time each top-level module (patch_embed, blocks.i, norm, head) and fill ``blocks``.

    Returns:
        JSON-safe dict: ``model``, ``params``, ``trainable_params``, ``input_size``, ``flops_fwd`` and
        ``flops_train_step`` (per batch), ``peak_mem_train_bytes``, ``mem_breakdown`` (params, grads, optimizer,
        activations bytes), ``mem_peak_phase``, ``mem_method``, ``train_step_s``, ``train_img_per_s``,
        ``infer_batch_s``, ``infer_img_per_s``, ``gemm_peak_flops``, ``achieved_flops``, ``mfu``, ``batch``,
        ``precision``, ``device``, ``threads``, ``blocks`` (rows: name, params, flops_fwd, flops_train,
        time_fwd_s; the last row '(other)' holds what no listed module accounts for).
    """
    check_precision(precision)
    if batch < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, iters >= 1, warmup >= 0; got batch={batch}, iters={iters}, warmup={warmup}")
    device = resolve_device(device)
    name, model = _profiled_copy(model, img_size)
    model = model.to(device)
    input_size = model_input_size(model, img_size)
    amp = autocast(device, precision)
    x, loss_fn = make_batch(model, batch, input_size, device)

    # FLOPs: model FLOPs, so no recomputation from activation checkpointing
    with _no_checkpointing(model):
        flops_fwd, fwd_mod = count_flops(model.eval(), x, autocast=amp)
        flops_train, train_mod = count_flops(model.train(), x, loss_fn=loss_fn, autocast=amp)

    opt = make_optimizer(model)
    mem = train_memory(model, x, loss_fn, opt, device, precision)
    train_s = median_time(lambda: train_step(model, opt, x, loss_fn, amp), iters, warmup, device)
    opt.state.clear()  # frees the optimizer state before the inference runs

    model.eval()

    def infer() -> None:
        with torch.inference_mode(), amp:
            model(x)

    infer_s = median_time(infer, iters, warmup, device)
    times = total = None
    if breakdown:
        times, total = _block_times(model, x, _row_modules(model), max(3, min(iters, 5)), device, amp)
    rows = _breakdown_rows(model, fwd_mod, train_mod, flops_fwd, flops_train, times, total) if breakdown else []

    gemm = measure_gemm_peak(precision, device=device)
    achieved = flops_train / train_s
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "input_size": list(input_size),
        "batch": batch,
        "precision": precision,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "flops_fwd": int(flops_fwd),
        "flops_train_step": int(flops_train),
        **mem,
        "train_step_s": train_s,
        "train_img_per_s": batch / train_s,
        "infer_batch_s": infer_s,
        "infer_img_per_s": batch / infer_s,
        "gemm_peak_flops": gemm,
        "achieved_flops": achieved,
        "mfu": achieved / gemm,
        "cpu_capability": cpu_capability(),
        "blocks": rows,
    }


# ------------------------------------------------------------------------------------------------------ rendering
def format_profile(result: dict) -> str:
    """Readable text report of a ``profile_model`` result, with the per-block table when present."""
    r = result
    c, h, w = r["input_size"]
    b = r["batch"]
    mb = r["mem_breakdown"]
    lines = [
        f"{r['model']}: batch {b} x {c}x{h}x{w}, {r['precision']} on {r['device']} (threads={r['threads']})",
        f"  params       {si(r['params'])} ({si(r['trainable_params'])} trainable)",
        f"  FLOPs        forward {si(r['flops_fwd'], 'FLOP')}/batch ({si(r['flops_fwd'] / b, 'FLOP')}/img), "
        f"train step {si(r['flops_train_step'], 'FLOP')}/batch (fwd+bwd, optimizer negligible)",
        f"  memory       peak {mib(r['peak_mem_train_bytes'])} during {r.get('mem_peak_phase') or '?'}: "
        f"params {mib(mb['params'])}, grads {mib(mb['grads'])}, optimizer {mib(mb['optimizer'])}, "
        f"activations {mib(mb['activations'])}",
        f"               method: {r['mem_method']}",
        f"  train        {r['train_img_per_s']:.1f} img/s ({r['train_step_s'] * 1e3:.0f} ms/step, median)",
        f"  inference    {r['infer_img_per_s']:.1f} img/s ({r['infer_batch_s'] * 1e3:.0f} ms/batch, median)",
        f"  MFU          {r['mfu']:.1%} = {si(r['achieved_flops'], 'FLOP/s')} achieved / "
        f"{si(r['gemm_peak_flops'], 'FLOP/s')} best {r['precision']} GEMM on this machine",
    ]
    rows = r.get("blocks") or []
    if rows:
        timed = all(row["time_fwd_s"] is not None for row in rows)
        total_t = sum(row["time_fwd_s"] for row in rows) if timed else 0.0
        total_f = r["flops_fwd"] or 1
        head = (
            f"  {'module':<14}{'params':>10}{'fwd FLOP':>13}{'train FLOP':>13}{'fwd ms':>10}{'% time':>8}{'% FLOP':>8}"
        )
        lines += ["", head, "  " + "-" * (len(head) - 2)]
        for row in rows:
            t = row["time_fwd_s"]
            t_ms = f"{t * 1e3:.2f}" if t is not None else "-"
            t_pct = f"{t / total_t:.1%}" if timed and total_t > 0 else "-"
            lines.append(
                f"  {row['name']:<14}{si(row['params']):>10}{si(row['flops_fwd']):>13}"
                f"{si(row['flops_train']):>13}{t_ms:>10}{t_pct:>8}{row['flops_fwd'] / total_f:>8.1%}"
            )
    return "\n".join(lines)
