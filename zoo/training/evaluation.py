"""Evaluation: the one loop (top-1 and mean loss over labelled batches), used during training (batches sharded by
Accelerate, gathered across processes) and outside it (``zoo eval``: any model source on a dataset's test split)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from zoo.data.datasets import DataError, build_datasets
from zoo.data.pipeline import default_workers, make_loader, normalize
from zoo.data.sources import ImageSource, TensorSource
from zoo.data.streaming import StreamSource, make_stream_loader
from zoo.hub import load_model
from zoo.hub.folders import ModelLoadError, default_published_tag


def fit_resolution(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize a normalized batch to the model's current input size (resolution growth trains small images first)."""
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mean,
    std,
    gather: Callable | None = None,
    num_classes: int | None = None,
    per_sample: bool = False,
) -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` over uint8 image batches.

    Args:
        batches: ``(x uint8 (B, C, H, W), y int64 (B,))`` pairs.
        gather: ``Accelerator.gather_for_metrics`` when the batches are this process's shard (every process then
            gets the totals over all of them, without the padding of the last batch); None in a single process.
        num_classes: when given, also count the confusion matrix (``matrix[true][predicted]``).
        per_sample: also return ``"correct"``, a bool tensor with one entry per image in the batches' order: two
            models scored on one split are then compared image by image (``zoo.bench.stats.paired_accuracy_diff``).

    Returns:
        ``{"acc", "loss", "n"}`` (and ``"matrix"``, ``"correct"``). The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    size = getattr(getattr(model, "module", model), "model_args", {}).get("img_size")
    correct = total = 0
    loss_sum = 0.0
    matrix = torch.zeros(num_classes or 0, num_classes or 0, dtype=torch.int64)
    hits = []
    for x, y in batches:
        logits = model(fit_resolution(normalize(x, mean, std), size)).float()
        loss = F.cross_entropy(logits, y, reduction="sum")
        preds, ys, losses = (logits.argmax(-1), y, loss.reshape(1))
        if gather is not None:
            preds, ys, losses = gather((preds, ys, losses))
        correct += (preds == ys).sum().item()
        if per_sample:
            hits.append(preds == ys)
        total += ys.numel()
        loss_sum += losses.sum().item()
        if num_classes:
            matrix += torch.bincount(ys * num_classes + preds, minlength=num_classes**2).reshape(matrix.shape)
    model.train(was_training)
    out = {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1), "n": total}
    if per_sample:
        out["correct"] = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    return {**out, "matrix": matrix.tolist()} if num_classes else out


def evaluate_shards(model, batches, mean, std, reduce: Callable) -> dict:
    """:func:`evaluate` over this process's share of a split whose shares differ in length (a stream), summed across
    processes by ``reduce`` (``Accelerator.reduce``): gathering per batch would need equal batch counts."""
    res = evaluate(model, batches, mean, std)
    n = res["n"]
    totals = reduce(torch.tensor([res["acc"] * n, res["loss"] * n, n], dtype=torch.float64)).tolist()
    return {"acc": totals[0] / max(totals[2], 1), "loss": totals[1] / max(totals[2], 1), "n": int(totals[2])}


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """In-memory tensors in order, ``batch_size`` at a time."""
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def split_batches(source: ImageSource | StreamSource, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """A split in order, ``batch_size`` at a time: sliced from memory, decoded in DataLoader workers, or streamed."""
    if isinstance(source, TensorSource):
        return tensor_batches(source.x, source.labels, batch_size)
    if isinstance(source, StreamSource):
        return make_stream_loader(source, batch_size, shuffle=False, seed=0, drop_last=False)
    workers = default_workers(source, 0)
    return make_loader(source, None, batch_size, shuffle=False, seed=0, drop_last=False, num_workers=workers)


def check_input_fits(model, bundle, source: str) -> None:
    """Image size and channels of the data must be what the model was built for."""
    args = getattr(model, "model_args", {})
    want_c, want_s = args.get("in_chans"), args.get("img_size")
    if want_c is not None and want_c != bundle.in_chans:
        raise DataError(f"{source}: model_args.in_chans: model takes {want_c} channels, data has {bundle.in_chans}")
    if want_s is not None and want_s != bundle.img_size:
        raise DataError(f"{source}: model_args.img_size: model takes {want_s} px, data is {bundle.img_size} px")


def accuracy(
    model,
    x_uint8: torch.Tensor | ImageSource,
    y: torch.Tensor | None,
    mean,
    std,
    batch_size: int = 512,
    progress: bool = False,
    num_classes: int | None = None,
    per_sample: bool = False,
) -> dict:
    """``evaluate`` over in-memory tensors (``x_uint8``, ``y``) or a split (``x_uint8`` an ``ImageSource``, ``y``
    None), leaving the model in eval mode (``progress``: a bar on stderr)."""
    model.eval()
    source = x_uint8 if isinstance(x_uint8, (ImageSource, StreamSource)) else TensorSource(x_uint8, y)
    batches = split_batches(source, batch_size)
    bar = tqdm(batches, total=math.ceil(len(source) / batch_size), desc="eval", unit="batch", disable=not progress)
    return evaluate(model, bar, mean, std, num_classes=num_classes, per_sample=per_sample)


def _published_for_bare_name(source: str) -> str:
    if "." in source or ":" in source or Path(source).exists() or not timm.is_model(source):
        return source
    tag = default_published_tag(source)
    if tag is None:
        raise ModelLoadError(
            source, "<source>", "an architecture without published weights (its random initialisation has nothing to "
            "evaluate); pass a model folder, local-dir:/hf-hub: id, or a published tag"
        )  # fmt: skip
    print(
        f"note: {source} -> {tag}: its published weights (as timm.create_model(..., pretrained=True))", file=sys.stderr
    )
    return tag


def evaluate_source(
    source: str,
    data: str,
    path: str | None = None,
    batch_size: int = 512,
    classes=None,
    test_subset=None,
    progress: bool = False,
    per_sample: bool = False,
) -> dict:
    """Top-1 and loss of ``source`` on the test split; ``test_subset`` keeps the same deterministic class-balanced
    subset a recipe's ``data.test_subset`` trains against (so `zoo demo --set data.test_subset=N` compares like
    with like); ``per_sample``: with each image's right/wrong in the split's order (``evaluate``).

    A bare architecture name means its published weights, as ``timm.create_model(name, pretrained=True)`` does: a
    random initialisation has nothing to evaluate, so a name without published weights is an error."""
    source = _published_for_bare_name(source)
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
    return accuracy(model, bundle.test, None, bundle.mean, bundle.std, batch_size, progress=progress,
                    per_sample=per_sample)  # fmt: skip
