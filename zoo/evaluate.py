"""Evaluate any model source (name, folder, local-dir:, hf-hub:) on a dataset's test split, outside training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.data import DataError, build_datasets
from zoo.hub import load_model
from zoo.pipeline import normalize


def check_input_fits(model, bundle, source: str) -> None:
    """Image size and channels of the data must be what the model was built for."""
    args = getattr(model, "model_args", {})
    want_c, want_s = args.get("in_chans"), args.get("img_size")
    if want_c is not None and want_c != bundle.in_chans:
        raise DataError(f"{source}: model_args.in_chans: model takes {want_c} channels, data has {bundle.in_chans}")
    if want_s is not None and want_s != bundle.img_size:
        raise DataError(f"{source}: model_args.img_size: model takes {want_s} px, data is {bundle.img_size} px")


@torch.no_grad()
def accuracy(model, x_uint8: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 512) -> dict:
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        logits = model(normalize(x_uint8[i : i + batch_size], mean, std)).float()
        yb = y[i : i + batch_size]
        correct += (logits.argmax(-1) == yb).sum().item()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
    return {"acc": correct / len(y), "loss": loss / len(y), "n": len(y)}


def evaluate_source(
    source: str, data: str, path: str | None = None, batch_size: int = 512, classes=None, test_subset=None
) -> dict:
    """Top-1 and loss of ``source`` on the test split; ``test_subset`` keeps the same deterministic class-balanced
    subset a recipe's ``data.test_subset`` trains against (so `zoo demo --set data.test_subset=N` compares like
    with like)."""
    model = load_model(source)
    bundle = build_datasets(
        data,
        path=path,
        classes=classes,
        test_subset=test_subset,
        img_size=model.model_args.get("img_size"),
        in_chans=model.model_args.get("in_chans"),
    )
    check_input_fits(model, bundle, source)
    if model.num_classes != bundle.num_classes:
        raise DataError(
            f"{source}: num_classes: model predicts {model.num_classes} classes, data has {bundle.num_classes}"
        )
    return accuracy(model, bundle.test_x, bundle.test_y, bundle.mean, bundle.std, batch_size)
