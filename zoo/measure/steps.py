"""The one measurement step: what a measurement runs on (device, precision, a random batch and loss, an optimizer)
and the step itself, for ``zoo profile`` (throughput, memory), ``zoo plan``, ``precision: auto``, the growth budget
solver and the benchmark suites. Benchmarks time these; they never assert.

``train_step_fn`` / ``infer_step_fn`` are closures over a fixed random batch (seeded: every arm sees the same data)
for the stopwatch (``zoo.measure.stopwatch``); ``make_batch`` / ``make_optimizer`` / ``train_step`` are the pieces,
used directly where a measurement needs them apart (the memory tracker wraps one ``train_step``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from zoo.measure.stopwatch import sync

__all__ = [
    "PRECISIONS",
    "autocast",
    "check_precision",
    "infer_step_fn",
    "make_batch",
    "make_optimizer",
    "model_input_size",
    "random_batch",
    "seeded_model",
    "resolve_device",
    "sync",
    "train_step",
    "train_step_fn",
]

PRECISIONS = ("fp32", "bf16")


# --------------------------------------------------------------------------------------------- precision, device
def check_precision(precision: str) -> torch.dtype | None:
    """Autocast dtype for a precision name (None for fp32); anything else is a ValueError naming the argument."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else None


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    dtype = check_precision(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------- batch, loss, optimizer, step
def model_input_size(model: nn.Module, img_size: int | None) -> tuple[int, int, int]:
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


def make_batch(
    model: nn.Module, batch: int, input_size: tuple[int, int, int] | None, device: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """A random batch and a loss: cross-entropy on random labels for logits, mean square for anything else."""
    c, h, w = input_size if input_size is not None else model_input_size(model, None)
    x = torch.randn(batch, c, h, w, device=device)
    num_classes = getattr(model, "num_classes", 0) or 0
    if num_classes > 0:
        y = torch.randint(0, num_classes, (batch,), device=device)
        return x, lambda out: F.cross_entropy(out.float(), y)
    return x, lambda out: out.float().square().mean()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # weight decay and lr do not change cost; a tiny lr keeps repeated steps on random data from blowing up
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, weight_decay=0.05)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, loss_fn, amp) -> None:
    with amp:
        loss = loss_fn(model(x))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------- closures for the stopwatch
def seeded_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with the global seed fixed first, so every arm of a measurement gets the same weights."""
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def random_batch(model: nn.Module, batch: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch and labels at the model's current input size (``model_args``)."""
    args = model.model_args
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, args["in_chans"], args["img_size"], args["img_size"], generator=g).to(device)
    y = torch.randint(0, max(model.num_classes, 1), (batch,), generator=g).to(device)
    return x, y


def train_step_fn(model: nn.Module, batch: int, precision: str = "fp32", device: str = "cpu") -> Callable[[], None]:
    """A closure running one full training step on ``model`` (which it trains in place, at a tiny LR)."""
    model = model.to(device).train()
    x, y = random_batch(model, batch, device)
    opt = make_optimizer(model)
    amp = autocast(device, precision)
    return lambda: train_step(model, opt, x, lambda out: F.cross_entropy(out.float(), y), amp)


def infer_step_fn(model: nn.Module, batch: int, precision: str = "fp32", device: str = "cpu") -> Callable[[], None]:
    """A closure running one inference forward of ``model`` (eval mode, no autograd)."""
    model = model.to(device).eval()
    x, _ = random_batch(model, batch, device)
    amp = autocast(device, precision)

    @torch.inference_mode()
    def step() -> None:
        with amp:
            model(x)

    return step
