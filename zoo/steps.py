"""Step closures for side-by-side measurement: one training step (forward, backward, AdamW) or one inference
forward of a model on a fixed random batch, at a given precision. Benchmarks time these; they never assert."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.measure_setup import autocast  # one precision -> autocast rule for benchmarks and `zoo profile`


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
