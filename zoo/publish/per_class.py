"""Per-class accuracy and the confusion matrix of an exported model on the split its run was evaluated on: what a
user looks at before trusting a headline accuracy (which classes the model confuses). Written by ``zoo export`` as
``per_class.json`` and ``confusion_matrix.png``, and tabulated in the card."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zoo.data.datasets import build_datasets
from zoo.training.evaluation import accuracy

PER_CLASS_FILE = "per_class.json"
CONFUSION_PLOT = "confusion_matrix.png"


def summarize(matrix: list[list[int]], class_names: list[str]) -> dict:
    """Per-class accuracy (recall), each class's most frequent confusion, and the overall accuracy."""
    rows = []
    for i, (name, row) in enumerate(zip(class_names, matrix)):
        n = sum(row)
        others = [(count, j) for j, count in enumerate(row) if j != i]
        count, j = max(others) if others else (0, i)
        rows.append(
            {
                "class": name,
                "n": n,
                "acc": row[i] / n if n else None,
                "most_confused_with": class_names[j] if count else None,
                "confused_share": count / n if n and count else 0.0,
            }
        )
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    return {"class_names": class_names, "matrix": matrix, "per_class": rows, "acc": correct / total if total else None}


def evaluate_per_class(model: nn.Module, recipe, batch_size: int = 512) -> dict | None:
    """The run's evaluation split (the recipe's data settings), predicted by ``model``; None when the data is not
    available on this machine (an image folder elsewhere)."""
    d = recipe.data
    try:
        bundle = build_datasets(
            d.name, path=d.path, classes=d.classes, test_subset=d.test_subset, val_split=d.val_split,
            train_subset=1, img_size=d.img_size, in_chans=d.in_chans, streaming=d.streaming, progress=False,
        )  # fmt: skip
    except (ValueError, OSError):
        return None
    n = bundle.num_classes
    res = accuracy(model, bundle.test, None, bundle.mean, bundle.std, batch_size, num_classes=n)
    return summarize(res["matrix"], list(bundle.class_names or [str(i) for i in range(n)]))


def plot_confusion(summary: dict, path: Path, title: str) -> bool:
    """Row-normalised confusion matrix; False when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    m = torch.tensor(summary["matrix"], dtype=torch.float64)
    share = (m / m.sum(1, keepdim=True).clamp(min=1)).numpy()
    names = summary["class_names"]
    fig = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            if share[i, j] >= 0.01:
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{share[i, j] * 100:.0f}", ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    fig.savefig(path, dpi=110)
    return True


def per_class_markdown(summary: dict, plot_file: str | None) -> str:
    """The card's per-class table (and the confusion plot)."""
    lines = ["| class | images | accuracy | most confused with |", "|---|---|---|---|"]
    for r in summary["per_class"]:
        acc = "–" if r["acc"] is None else f"{r['acc'] * 100:.1f}%"
        worst = f"{r['most_confused_with']} ({r['confused_share'] * 100:.1f}%)" if r["most_confused_with"] else "–"
        lines.append(f"| {r['class']} | {r['n']} | {acc} | {worst} |")
    plot = f"\n\n![Confusion matrix]({plot_file})" if plot_file else ""
    return (
        "Per class, on the same images (recall; the class it is most often mistaken for):\n\n" + "\n".join(lines) + plot
    )
