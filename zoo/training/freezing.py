"""Layer groups, freezing, and optimizer parameter groups with layer-wise LR decay.

Groups come from the model's timm ``group_matcher``: the stem, one group per block (timm's ``(99999,)`` puts the
final norm with the last block), and everything the matcher leaves out (the classifier head) as the top group. So any
zoo model, grown or routed, has them for free: ``depth + 2`` groups, bottom (0 = stem) to top (head alone).

Layer decay is applied through each parameter group's ``lr_scale``, which the trainer multiplies into the LR it sets
every step: timm stores ``lr_scale`` too, but only timm's own schedulers read it, so with any other scheduler layer
decay would silently do nothing.
"""

from __future__ import annotations

from timm.models import group_parameters
from torch import nn


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per layer group, bottom to top; every parameter is in exactly one group."""
    grouped = group_parameters(model, model.group_matcher(coarse=False))  # {group_id: [names]}, sorted ids
    names = [list(v) for _, v in sorted(grouped.items())]
    seen = {n for g in names for n in g}
    leftover = [n for n, _ in model.named_parameters() if n not in seen]
    if leftover:  # the head (and anything else unmatched) is the top group
        names.append(leftover)
    return names


def set_trainable_from(model: nn.Module, first_trainable: int) -> None:
    """Freeze groups below ``first_trainable`` and make the rest trainable.

    Frozen leading blocks also run without an autograd graph (``model.no_grad_prefix``), so backward stops at the
    first trainable block: that, not ``requires_grad`` alone, is what makes a frozen prefix cheaper.
    """
    groups = layer_groups(model)
    if not 0 <= first_trainable < len(groups):
        raise ValueError(f"first trainable group {first_trainable} out of range: model has {len(groups)} groups")
    frozen = {n for g in groups[:first_trainable] for n in g}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    # group 0 is the stem, group i (1..depth) is block i-1: trainable_from=g freezes the stem and blocks[:g-1]
    depth = len(model.blocks)
    model.no_grad_prefix = -1 if first_trainable == 0 else min(first_trainable - 1, depth)
    model.train(model.training)  # re-apply the frozen-prefix eval mode (see ZooViT.train)


def layer_scales(num_groups: int, layer_decay: float | None) -> list[float]:
    """LR multiplier per group: ``layer_decay ** (top - g)`` (BEiT/timm convention); 1 everywhere without decay."""
    if layer_decay is None:
        return [1.0] * num_groups
    return [layer_decay ** (num_groups - 1 - g) for g in range(num_groups)]


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    lr_mult: dict[str, float] | None = None,
) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters, each with ``lr_scale`` and ``weight_decay``.

    No weight decay on 1-D parameters (norms, biases) and on ``model.no_weight_decay()`` names, as in timm.
    ``lr_mult`` multiplies the scale of parameters whose name contains a key (e.g. ``{"router": 10}``).
    """
    lr_mult = lr_mult or {}
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups = layer_groups(model)
    scales = layer_scales(len(groups), layer_decay)
    params = dict(model.named_parameters())
    out: dict[tuple, dict] = {}
    for gi, names in enumerate(groups):
        for n in names:
            p = params[n]
            if not p.requires_grad:
                continue
            no_decay = p.ndim <= 1 or n in skip or n.endswith(".bias")
            mult = 1.0
            for key, m in lr_mult.items():
                if key in n:
                    mult *= m
            key = (gi, no_decay, mult)
            if key not in out:
                out[key] = dict(
                    params=[],
                    names=[],
                    layer_group=gi,
                    lr_scale=scales[gi] * mult,
                    weight_decay=0.0 if no_decay else weight_decay,
                )
            out[key]["params"].append(p)
            out[key]["names"].append(n)
    return list(out.values())


def set_group_lrs(optimizer, lr: float, layer_lrs: dict[int, float] | None = None) -> None:
    """Set every group's LR to ``lr * lr_scale``: this is where layer decay and ``lr_mult`` take effect, every step,
    whatever produced ``lr`` (no scheduler object that could ignore ``lr_scale``). ``layer_lrs`` replaces ``lr`` for
    the parameter groups of the layer groups it names (FreezeOut's per-layer schedules)."""
    layer_lrs = layer_lrs or {}
    for g in optimizer.param_groups:
        g["lr"] = layer_lrs.get(g.get("layer_group"), lr) * g.get("lr_scale", 1.0)
