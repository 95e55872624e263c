"""Profile a model for CPU-limited training: FLOPs, peak training memory, throughput, MFU and a per-block breakdown.

Backs ``zoo profile MODEL [--batch N] [--img-size S] [--precision bf16|fp32] [--json]``: ``profile_model`` returns a
JSON-safe dict and ``format_profile`` renders it. FLOP counting lives in ``zoo.flops``.

Measurement choices:
  - FLOPs: ``FlopCounterMode`` (matmuls only, 2*M*N*K) with the CPU flash-attention kernels registered; the train
    step is forward + backward of the model as defined (activation checkpointing disabled while counting, so these
    are *model* FLOPs, the MFU convention; recomputation would add about one forward). The optimizer step is
    negligible (~10 FLOPs/parameter) and not counted.
  - Memory: see ``measure_train_memory``. Tensor-level live-bytes tracking on every device; on CUDA the peak itself
    comes from the caching allocator's ``max_memory_allocated``.
  - Throughput: median wall time (``time.perf_counter``; ``cuda.synchronize`` on CUDA) of ``iters`` steps after
    ``warmup`` steps. A train step is forward + cross-entropy + backward + AdamW step + zero_grad.
  - MFU: train-step FLOPs / median step time, over the best square-GEMM FLOP/s measured in the same run at the same
    precision (``measure_gemm_peak``), so it is relative to what this machine's BLAS actually reaches, not a
    datasheet number.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.flops import count_flops
from zoo.units import mib, si

__all__ = [
    "PRECISIONS",
    "format_profile",
    "measure_gemm_peak",
    "measure_rss_train_peak",
    "measure_train_memory",
    "profile_model",
]

PRECISIONS = ("fp32", "bf16")
GEMM_SIZES = (1024, 2048)


def _check_precision(precision: str) -> torch.dtype | None:
    """Autocast dtype for a precision name (None for fp32); anything else is a ValueError naming the argument."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else None


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    dtype = _check_precision(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _resolve_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------------ GEMM peak
def measure_gemm_peak(
    precision: str = "fp32", size: int | Sequence[int] = GEMM_SIZES, device: str | None = None, min_time: float = 0.2
) -> float:
    """Best FLOP/s of square ``size x size`` matmuls at ``precision`` (bf16 matmuls run on bf16 tensors).

    Each size is warmed up once, then timed repeatedly (at least 3 times and ``min_time`` seconds); the fastest run
    of the fastest size is returned. Best-of rather than median because the question is what the hardware can do,
    and other load on the machine only ever makes a run slower.
    """
    dtype = _check_precision(precision) or torch.float32
    device = _resolve_device(device)
    sizes = [size] if isinstance(size, int) else list(size)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        _sync(device)
        runs: list[float] = []
        start = time.perf_counter()
        while len(runs) < 3 or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            runs.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / min(runs))
    return best


# --------------------------------------------------------------------------------------------------------- memory
class _LiveBytes:
    """Live bytes of tracked tensor storages, by category ('static', 'grad', 'dynamic'), with a running peak.

    A storage is tracked once (views and in-place results share it) and released by a weakref callback when its
    last tensor dies, so the count follows what the allocator has to hold, minus allocator rounding/caching and
    kernel-internal scratch that never becomes a tensor.
    """

    def __init__(self) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self._info = WeakIdKeyDictionary()  # storage -> (record [category, nbytes], weakref keeping the callback)
        self.live = {"static": 0, "grad": 0, "dynamic": 0}
        self.phase = "setup"
        self.peak = 0
        self.peak_phase = ""
        self.peak_dynamic = 0  # forward + backward only: the activation figure

    def _release(self, rec: list, _ref: Any) -> None:
        self.live[rec[0]] -= rec[1]

    def track(self, t: torch.Tensor, category: str | None = None) -> None:
        """Track ``t``'s storage; ``category`` None keeps a known storage's category and makes a new one dynamic."""
        if t.device.type == "meta" or t.is_sparse or t.is_nested:
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # storage-less wrapper subclasses
            return
        n = st.nbytes()
        entry = self._info.get(st)
        if entry is None:
            rec = [category or "dynamic", n]
            self._info[st] = (rec, weakref.ref(st, partial(self._release, rec)))
            self.live[rec[0]] += n
            return
        rec = entry[0]
        if n != rec[1]:  # resized in place (out= ops)
            self.live[rec[0]] += n - rec[1]
            rec[1] = n
        if category is not None and category != rec[0]:
            self.live[rec[0]] -= n
            self.live[category] += n
            rec[0] = category

    def update_peak(self) -> None:
        total = sum(self.live.values())
        if total > self.peak:
            self.peak, self.peak_phase = total, self.phase
        if self.phase in ("forward", "backward"):
            self.peak_dynamic = max(self.peak_dynamic, self.live["dynamic"])


def _tracking_mode(live: _LiveBytes):
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class _Mode(TorchDispatchMode):
        # every op output (forward, backward - autograd propagates the mode to its thread - and optimizer) is seen
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    live.track(t)
            live.update_peak()
            return out

    return _Mode()


def _storage_bytes(tensors: Iterator[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                yield v


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, loss_fn, amp) -> None:
    with amp:
        loss = loss_fn(model(x))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _train_memory(
    model: nn.Module, x: torch.Tensor, loss_fn: Callable, opt: torch.optim.Optimizer, device: str, precision: str
) -> dict[str, Any]:
    """Peak memory of one steady-state train step of ``model`` (modified in place: one warm step, one tracked)."""
    amp = _autocast(device, precision)
    params = list(model.parameters())
    _train_step(model, opt, x, loss_fn, amp)  # untracked: creates the optimizer state, as in every later step
    live = _LiveBytes()
    for t in [*params, *model.buffers(), *_optimizer_tensors(opt)]:
        live.track(t, "static")
    # a gradient is 'grad' from the moment it is accumulated into .grad (before that it is a backward temporary)
    hooks = [
        p.register_post_accumulate_grad_hook(lambda p: live.track(p.grad, "grad")) for p in params if p.requires_grad
    ]
    cuda = torch.device(device).type == "cuda"
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with _tracking_mode(live):
            live.phase = "forward"
            xb = x.clone()  # the batch is part of the step's memory (and saved for the patch-embed backward)
            with amp:
                loss = loss_fn(model(xb))
            del xb
            live.phase = "backward"
            loss.backward()
            del loss
            live.phase = "optimizer"
            opt.step()
            live.update_peak()
    finally:
        for h in hooks:
            h.remove()
    params_b = _storage_bytes(iter(params)) + _storage_bytes(model.buffers())
    grads_b = _storage_bytes(p.grad for p in params if p.grad is not None)
    opt_b = _storage_bytes(_optimizer_tensors(opt))
    opt.zero_grad(set_to_none=True)
    method = (
        "tensor tracking: live bytes of every tensor storage, via a TorchDispatchMode over one steady-state "
        "train step (excludes allocator caching and kernel scratch)"
    )
    peak = live.peak
    if cuda:
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        method = "cuda max_memory_allocated (peak); breakdown from " + method
    return {
        "peak_mem_train_bytes": int(peak),
        "mem_breakdown": {
            "params": params_b,
            "grads": grads_b,
            "optimizer": opt_b,
            "activations": int(live.peak_dynamic),
        },
        "mem_peak_phase": live.peak_phase,
        "mem_method": method,
    }


def measure_train_memory(
    model: nn.Module,
    batch: int,
    input_size: tuple[int, int, int] | None = None,
    precision: str = "fp32",
    device: str | None = None,
) -> dict[str, Any]:
    """Peak memory of one training step (AdamW, cross-entropy), measured on a copy of ``model``.

    Method (CPU has no allocator statistics worth trusting: glibc RSS includes the allocator's retained free
    memory, library code and thread arenas, and it is a process-lifetime high-water mark): every tensor storage
    created by an op during one steady-state step (optimizer state already exists, ``.grad`` starts as None) is
    tracked through a ``TorchDispatchMode`` and released by a weakref callback when it dies. This is exact about
    tensors, follows the batch size and activation checkpointing, works for any device, and splits cleanly:

      - ``params``: parameters and buffers; ``grads``: all ``.grad`` storages after backward;
      - ``optimizer``: optimizer state (AdamW: 2x the trainable parameters plus step counters);
      - ``activations``: the peak, over forward and backward, of everything else alive at once: the input batch,
        tensors saved for backward, autocast weight copies, and backward temporaries (activation gradients).

    The parts are each their own maximum, so they can sum to more than ``peak_mem_train_bytes`` (the true
    simultaneous peak): most gradients do not exist yet when activations peak at the start of backward. Not
    counted: allocator rounding/caching and scratch memory inside kernels. On CUDA the peak is
    ``torch.cuda.max_memory_allocated``, which includes both.

    Returns:
        dict with ``peak_mem_train_bytes``, ``mem_breakdown``, ``mem_peak_phase`` and ``mem_method``.
    """
    device = _resolve_device(device)
    _check_precision(precision)
    model = copy.deepcopy(model).to(device).train()
    x, loss_fn = _make_batch(model, batch, input_size, device)
    opt = _make_optimizer(model)
    return _train_memory(model, x, loss_fn, opt, device, precision)


_RSS_SCRIPT = r"""
import json, sys
import timm
import zoo
from zoo.profile import _autocast, _make_batch, _make_optimizer, _input_size

name, batch, img_size, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
kw = {} if img_size == "none" else {"img_size": int(img_size)}
model = timm.create_model(name, **kw).train()
x, loss_fn = _make_batch(model, batch, _input_size(model, kw.get("img_size")), "cpu")
opt = _make_optimizer(model)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
before = status("VmRSS")
with _autocast("cpu", precision):
    loss = loss_fn(model(x))
loss.backward()
opt.step()
print(json.dumps({"rss_before_step": before, "rss_peak": status("VmHWM")}))
"""


def measure_rss_train_peak(model: str, batch: int, img_size: int | None = None, precision: str = "fp32") -> dict:
    """Cross-check for CPU: peak RSS of a fresh process running the first train step of timm model ``model``.

    ``rss_peak - rss_before_step`` covers what the step adds to an already-built model (activations, gradients,
    optimizer state, temporaries) *plus* allocator overhead (glibc arenas, retained free blocks) and one-time
    library initialisation (oneDNN/BLAS buffers, kernel JIT), so it is an upper-bound-ish sanity check on
    ``measure_train_memory``, not a replacement: it cannot be split by category and RSS peaks cannot be reset.
    Reads ``VmHWM`` from /proc/self/status (Linux), not ``getrusage().ru_maxrss``: a child started by fork + exec
    inherits the parent's RSS high-water mark in ``ru_maxrss``, so from a big parent it reports the parent's peak.
    Costs a process start (torch + timm import).
    """
    import json
    import subprocess
    import sys

    _check_precision(precision)
    args = [model, str(batch), "none" if img_size is None else str(img_size), precision]
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------------- helpers
def _input_size(model: nn.Module, img_size: int | None) -> tuple[int, int, int]:
    """(C, H, W) to profile at: ``img_size`` if given, else the model's current patch-embed size, else its cfg.

    The patch embedding is preferred over ``pretrained_cfg['input_size']`` because resolution growth
    (``set_input_size``) changes the model but not its pretrained_cfg.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    pe = getattr(model, "patch_embed", None)
    proj = getattr(pe, "proj", None)
    chans = size[0] if size else getattr(proj, "in_channels", 3)
    if img_size is not None:
        return (chans, img_size, img_size)
    pe_size = getattr(pe, "img_size", None)
    if isinstance(pe_size, (tuple, list)) and len(pe_size) == 2:
        return (chans, int(pe_size[0]), int(pe_size[1]))
    if size is None:
        raise ValueError("cannot tell the model's input size (no pretrained_cfg['input_size']); pass img_size")
    return tuple(size)  # type: ignore[return-value]


def _make_batch(
    model: nn.Module, batch: int, input_size: tuple[int, int, int] | None, device: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """A random batch and a loss: cross-entropy on random labels for logits, mean square for anything else."""
    c, h, w = input_size if input_size is not None else _input_size(model, None)
    x = torch.randn(batch, c, h, w, device=device)
    num_classes = getattr(model, "num_classes", 0) or 0
    if num_classes > 0:
        y = torch.randint(0, num_classes, (batch,), device=device)
        return x, lambda out: F.cross_entropy(out.float(), y)
    return x, lambda out: out.float().square().mean()


def _make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # weight decay and lr do not change cost; a tiny lr keeps repeated steps on random data from blowing up
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, weight_decay=0.05)


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


def _median_time(fn: Callable[[], Any], iters: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
        _sync(device)
        start[name] = time.perf_counter()

    def post(name: str, *_: Any) -> None:
        _sync(device)
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
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
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
    _check_precision(precision)
    if batch < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, iters >= 1, warmup >= 0; got batch={batch}, iters={iters}, warmup={warmup}")
    device = _resolve_device(device)
    if isinstance(model, str):
        import timm

        import zoo  # noqa: F401  (registers the zoo_* models with timm)

        name = model
        model = timm.create_model(model, **({"img_size": img_size} if img_size is not None else {}))
    else:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") or type(model).__name__
        model = copy.deepcopy(model)
        pe_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is not None and pe_size is not None and tuple(pe_size) != (img_size, img_size):
            if not hasattr(model, "set_input_size"):
                raise ValueError(
                    f"model is built for {tuple(pe_size)} inputs and cannot be resized to img_size={img_size}"
                )
            model.set_input_size(img_size=img_size)
    model = model.to(device)
    input_size = _input_size(model, img_size)
    amp = _autocast(device, precision)
    x, loss_fn = _make_batch(model, batch, input_size, device)

    # FLOPs: model FLOPs, so no recomputation from activation checkpointing
    with _no_checkpointing(model):
        flops_fwd, fwd_mod = count_flops(model.eval(), x, autocast=amp)
        flops_train, train_mod = count_flops(model.train(), x, loss_fn=loss_fn, autocast=amp)

    opt = _make_optimizer(model)
    mem = _train_memory(model, x, loss_fn, opt, device, precision)
    train_s = _median_time(lambda: _train_step(model, opt, x, loss_fn, amp), iters, warmup, device)
    opt.state.clear()  # frees the optimizer state before the inference runs

    model.eval()

    def infer() -> None:
        with torch.inference_mode(), amp:
            model(x)

    infer_s = _median_time(infer, iters, warmup, device)
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
