"""What a zoo model family must provide, checked when a model is built for training, so a contributed family fails
with a message naming the missing piece instead of deep inside the trainer (an AttributeError on ``group_matcher``,
a wrapped TypeError from a routing recipe, or gradual unfreezing that silently saves nothing).

The contract (README "Contribute a model family"):

- timm's model interface: ``num_classes``, ``reset_classifier(n)``, ``forward_features`` / ``forward_head``,
  ``group_matcher(coarse)`` (the layer groups freezing and layer-wise LR decay use: stem, one group per block);
- ``model_args``: the constructor arguments, JSON-safe, with integer ``img_size`` and ``in_chans`` and
  ``depth == len(blocks)`` (export writes them to ``config.json``; loading rebuilds the model from them);
- ``blocks``: the residual blocks, in order;
- ``no_grad_prefix``: an int the trainer sets (-1: nothing frozen; k: the stem and ``blocks[:k]`` are frozen), which
  ``forward`` must honour by running that prefix under ``torch.no_grad()``: without it a frozen prefix still builds
  its autograd graph and freezing saves nothing;
- capabilities, declared as class attributes and checked before a recipe uses them: ``supports_routing``
  (``set_routing(spec)``), ``supports_merging`` (``set_merging(spec)``), ``supports_growth`` (``zoo.growth.operators``
  apply).
"""

from __future__ import annotations

import json

from torch import nn

REQUIRED_METHODS = ("reset_classifier", "forward_features", "forward_head", "group_matcher")


class ContractError(ValueError):
    """A model family that does not meet the zoo contract; the message names the family and what is missing."""

    def __init__(self, model: nn.Module, message: str):
        super().__init__(f"{type(model).__name__}: {message} (see README: Contribute a model family)")


def check_zoo_model(model: nn.Module) -> None:
    """Raise ContractError unless ``model`` provides what training, freezing and export need."""
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise ContractError(model, f"missing timm interface method(s) {missing}")
    args = getattr(model, "model_args", None)
    if not isinstance(args, dict):
        raise ContractError(model, "no `model_args` dict (the constructor arguments, written to config.json)")
    try:
        json.dumps(args)
    except (TypeError, ValueError) as e:
        raise ContractError(model, f"`model_args` is not JSON-safe: {e}") from None
    for key in ("img_size", "in_chans"):
        if not isinstance(args.get(key), int) or isinstance(args.get(key), bool):
            raise ContractError(model, f"`model_args[{key!r}]` must be an int, got {args.get(key)!r}")
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList):
        raise ContractError(model, "no `blocks` (nn.ModuleList or nn.Sequential of the residual blocks)")
    if args.get("depth") != len(blocks):
        raise ContractError(model, f"`model_args['depth']` is {args.get('depth')!r} but there are {len(blocks)} blocks")
    if not isinstance(getattr(model, "no_grad_prefix", None), int):
        raise ContractError(model, "no integer `no_grad_prefix` (the frozen prefix forward runs without a graph)")
    if not isinstance(getattr(model, "num_classes", None), int):
        raise ContractError(model, "no integer `num_classes`")


def check_supports(model: nn.Module, feature: str, where: str) -> None:
    """Raise ContractError unless the family declares ``supports_<feature>`` (``routing``, ``merging``, ``growth``)."""
    if not getattr(model, f"supports_{feature}", False):
        raise ContractError(model, f"{where} needs {feature}, which this family does not declare (supports_{feature})")
