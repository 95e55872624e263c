"""Peak training memory of a model: tensor-tracked live bytes of one train step.

``measure_train_memory`` (used by ``zoo profile``, ``zoo plan`` and the memory bench suite) counts the bytes of
every tensor storage alive during one steady-state step (a training run's own RSS high-water mark is recorded by
``zoo.training.trainer``). Separate from ``zoo.measure.profile`` because memory is a question of its own
(planning micro-batches and checkpointing needs it without FLOPs, throughput or MFU) and its machinery (a
``TorchDispatchMode``, weakref callbacks) shares nothing with timing but the step in
``zoo.measure.steps``.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from zoo.measure.steps import autocast, check_precision, make_batch, make_optimizer, resolve_device, sync, train_step

__all__ = ["measure_train_memory", "train_memory"]


# ------------------------------------------------------------------------------------------ tensor-tracked memory
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


def train_memory(
    model: nn.Module, x: torch.Tensor, loss_fn: Callable, opt: torch.optim.Optimizer, device: str, precision: str
) -> dict[str, Any]:
    """Peak memory of one steady-state train step of ``model`` (modified in place: one warm step, one tracked)."""
    amp = autocast(device, precision)
    params = list(model.parameters())
    train_step(model, opt, x, loss_fn, amp)  # untracked: creates the optimizer state, as in every later step
    live = _LiveBytes()
    for t in [*params, *model.buffers(), *_optimizer_tensors(opt)]:
        live.track(t, "static")
    # a gradient is 'grad' from the moment it is accumulated into .grad (before that it is a backward temporary)
    hooks = [
        p.register_post_accumulate_grad_hook(lambda p: live.track(p.grad, "grad")) for p in params if p.requires_grad
    ]
    cuda = torch.device(device).type == "cuda"
    if cuda:
        sync(device)
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
        sync(device)
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
    device = resolve_device(device)
    check_precision(precision)
    model = copy.deepcopy(model).to(device).train()
    x, loss_fn = make_batch(model, batch, input_size, device)
    opt = make_optimizer(model)
    return train_memory(model, x, loss_fn, opt, device, precision)
