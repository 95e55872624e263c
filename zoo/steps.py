"""Step closures for side-by-side measurement: one training step (forward, backward, AdamW) or one inference
forward of a model on a fixed random batch, at a given precision. Benchmarks time these; they never assert."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "bf16")


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device (CPU autocast on CPU), nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def random_batch(model: nn.Module, batch: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    args = model.model_args
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, args["in_chans"], args["img_size"], args["img_size"], generator=g).to(device)
    y = torch.randint(0, max(model.num_classes, 1), (batch,), generator=g).to(device)
    return x, y


def train_step_fn(model: nn.Module, batch: int, precision: str = "fp32", device: str = "cpu") -> Callable[[], None]:
    """A closure running one full training step on ``model`` (which it trains in place, at a tiny LR)."""
    model = model.to(device).train()
    x, y = random_batch(model, batch, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    amp = autocast(device, precision)

    def step() -> None:
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_step_fn(model: nn.Module, batch: int, precision: str = "fp32", device: str = "cpu") -> Callable[[], None]:
    model = model.to(device).eval()
    x, _ = random_batch(model, batch, device)
    amp = autocast(device, precision)

    @torch.inference_mode()
    def step() -> None:
        with amp:
            model(x)

    return step
