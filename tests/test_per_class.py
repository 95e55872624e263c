"""Per-class accuracy and confusion matrix: the counting is exact, and an export writes them into the card."""

import torch

from zoo.publish.per_class import per_class_markdown, summarize
from zoo.training.evaluation import accuracy


class FixedPredictions(torch.nn.Module):
    """Predicts ``preds[i]`` for the image whose single pixel holds ``i``."""

    def __init__(self, preds):
        super().__init__()
        self.preds = preds

    def forward(self, x):
        index = (x.flatten(1)[:, 0] * 255).round().long()
        return torch.nn.functional.one_hot(self.preds[index], 3).float()


def test_confusion_matrix_counts_true_by_predicted():
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2, 2])
    images = torch.arange(7, dtype=torch.uint8).reshape(7, 1, 1, 1)
    res = accuracy(FixedPredictions(preds), images, targets, [0.0], [1.0], batch_size=3, num_classes=3)
    m = res["matrix"]
    assert m == [[1, 1, 0], [0, 2, 0], [1, 0, 2]] and res["acc"] == 5 / 7
    s = summarize(m, ["a", "b", "c"])
    assert s["acc"] == 5 / 7
    a, b, c = s["per_class"]
    assert a["acc"] == 0.5 and a["most_confused_with"] == "b" and a["confused_share"] == 0.5
    assert b["acc"] == 1.0 and b["most_confused_with"] is None
    assert c["n"] == 3 and c["most_confused_with"] == "a"
    md = per_class_markdown(s, "confusion_matrix.png")
    assert "| a | 2 | 50.0% | b (50.0%) |" in md and "| b | 2 | 100.0% | – |" in md
    assert "![Confusion matrix](confusion_matrix.png)" in md
