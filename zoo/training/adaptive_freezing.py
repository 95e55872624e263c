"""Adaptive bottom-up freezing (``unfreeze.mode: adaptive``): freeze the lowest trainable layer group once it has
stopped changing, in the spirit of Egeria (freeze front layers whose plasticity has dropped) and AutoFreeze.

The signal is the group's relative weight change between two checks, ``||w_now - w_then|| / ||w_now||``, measured
every ``check_every`` of training on the lowest trainable group; below ``threshold`` the group freezes at that step
(and the next group's reference is taken there). Weights rather than activations: they need no extra forward, are
identical on every rank (so every process decides alike), and the reference is a copy of one group's parameters.

Deterministic and resumable: the check steps are a pure function of the run length; the decisions (the steps at
which groups froze) and the current reference are checkpoint state, so a resumed run re-derives exactly the decisions
the uninterrupted one made.
"""

from __future__ import annotations

import math

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.training.freezing import layer_groups

REFERENCE_FILE = "freeze_reference.safetensors"


def check_steps(total_steps: int, every: float) -> list[int]:
    """The steps at which the signal is measured: every ``every`` of training, the end excluded."""
    n = int(1 / every + 1e-9)
    steps = sorted({math.ceil((k * every - 1e-12) * total_steps) for k in range(1, n + 1)})
    return [s for s in steps if 0 < s < total_steps]


def relative_change(now: dict[str, torch.Tensor], then: dict[str, torch.Tensor]) -> float:
    """``||now - then|| / ||now||`` over all tensors of a group, in float64 (so the decision does not depend on the
    order of a float32 reduction)."""
    diff = sum(float((now[k].double().cpu() - then[k].double().cpu()).pow(2).sum()) for k in now)
    norm = sum(float(now[k].double().cpu().pow(2).sum()) for k in now)
    return math.sqrt(diff) / max(math.sqrt(norm), 1e-12)


class PlasticityMonitor:
    """The reference weights of the lowest trainable group and the rule that freezes it."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.group: int | None = None  # the group the reference belongs to
        self.reference: dict[str, torch.Tensor] = {}

    def _snapshot(self, model: nn.Module, group: int) -> None:
        params = dict(model.named_parameters())
        self.group = group
        self.reference = {n: params[n].detach().clone() for n in layer_groups(model)[group]}

    def should_freeze(self, model: nn.Module, group: int) -> bool:
        """At a check step: True when ``group`` (the lowest trainable one) changed less than the threshold since the
        last check; the reference moves to now either way (to the next group after a freeze)."""
        num_groups = len(layer_groups(model))
        if group != self.group or not self.reference:  # first measurement of this group: nothing to compare yet
            self._snapshot(model, group)
            return False
        params = dict(model.named_parameters())
        change = relative_change({n: params[n].detach() for n in self.reference}, self.reference)
        freeze = change < self.threshold and group < num_groups - 1  # the top group (head) always trains
        self._snapshot(model, group + 1 if freeze else group)
        return freeze

    def save(self, folder) -> None:
        if not self.reference:  # before the first check: nothing to keep
            return
        tensors = {n: t.contiguous().cpu() for n, t in self.reference.items()}
        save_file(tensors, str(folder / REFERENCE_FILE), metadata={"group": str(self.group)})

    def load(self, folder) -> None:
        path = folder / REFERENCE_FILE
        if not path.is_file():  # saved before the first check: no reference yet
            return
        with safe_open(str(path), "pt") as f:
            self.group = int(f.metadata()["group"])
        self.reference = load_file(str(path))
