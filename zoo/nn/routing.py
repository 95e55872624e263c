"""Token routing (Mixture-of-Depths style) for vision: fixed-capacity top-k, gather, block, scatter-add.

The algorithm is a handful of pure tensor functions; ``RoutedBlock`` only wires them around a timm-compatible block.
Shapes stay static (k is fixed by the capacity), there are no per-sample loops, and prefix tokens (CLS, registers)
are always processed with gate 1.

Why these choices (see CHANGELOG.md):
- Unselected tokens are never written: the output starts as ``x`` and only the selected rows receive
  ``r * f(x_sel)`` via ``scatter_add``, so they pass through bit-for-bit.
- The learned router is a zero-initialised linear layer with gate ``r = 2 * sigmoid(score)``: r == 1 at
  initialisation, so converting a dense block is exactly function-preserving at capacity 1.0, and the router still
  receives gradient through the multiplication (MoD).
- ``torch.topk(..., sorted=False).indices`` are used directly as token positions (no ``argsort`` of the top-k values,
  the bug found in community MoD code).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from zoo.nn.block import Block

ROUTERS = ("linear", "cls_attn")
CONTEXTS = ("selected", "all")
#: how a learned router's score weights tokens: ``sigmoid`` (MoD: processed tokens' residual times 2*sigmoid(s));
#: ``tanh`` (p-MoD: 1 + a*tanh(s), bounded, on processed tokens' residual and on skipped tokens alike, so the router
#: also learns from the tokens it skips)
WEIGHTS = ("sigmoid", "tanh")


def capacity_to_k(num_tokens: int, capacity: float) -> int:
    """Number of routed tokens for a capacity in (0, 1]; at least one token, never more than exist."""
    if not 0.0 < capacity <= 1.0:
        raise ValueError(f"routing capacity must be in (0, 1], got {capacity}")
    return max(1, min(num_tokens, math.ceil(capacity * num_tokens - 1e-9)))


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k highest scores per row (B, N) -> (B, k). Order within the k is unspecified."""
    return torch.topk(scores, k, dim=1, sorted=False).indices


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, k) -> (B, k, C)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_add_tokens(x: torch.Tensor, idx: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Out-of-place ``x[b, idx[b, j]] += delta[b, j]``; rows not in idx are returned unchanged."""
    return x.scatter_add(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]), delta.to(x.dtype))


#: the keys of a model's ``routing`` spec (the recipe's ``routing`` section adds its schedule: start, anneal)
ROUTING_KEYS = frozenset({"capacity", "layers", "router", "context", "weight", "weight_scale"})


def resolve_route_plan(depth: int, routing: dict | None) -> list[float | None]:
    """Per-block capacity (None = dense block) from a routing spec.

    ``routing['layers']``: ``"every_other"`` (blocks 1, 3, 5, ..., as in MoD), ``"all"``, or a list of block indices;
    ``routing['capacity']``: one float for every routed block, or a list with one entry per block (None = dense;
    1.0 = routed at full capacity, which keeps the router and its gate).
    """
    if not routing:
        return [None] * depth
    if not isinstance(routing, Mapping):
        raise ValueError(f"routing must be a mapping of {sorted(ROUTING_KEYS)} or None, got {routing!r}")
    unknown = sorted(set(routing) - ROUTING_KEYS)
    if unknown:  # a misspelt key ("layer") would otherwise fall back to a default silently
        raise ValueError(f"routing: unknown key(s) {unknown}; allowed: {sorted(ROUTING_KEYS)}")
    capacity = routing.get("capacity", 0.5)
    if isinstance(capacity, Sequence) and not isinstance(capacity, str):
        if len(capacity) != depth:
            raise ValueError(f"routing.capacity list has {len(capacity)} entries for depth {depth}")
        plan = [None if c is None else float(c) for c in capacity]
    else:
        layers = routing.get("layers", "every_other")
        if layers == "every_other":
            chosen = set(range(1, depth, 2))
        elif layers == "all":
            chosen = set(range(depth))
        elif isinstance(layers, Sequence) and not isinstance(layers, str):
            chosen = {int(i) for i in layers}
            bad = [i for i in chosen if not 0 <= i < depth]
            if bad:
                raise ValueError(f"routing.layers {sorted(bad)} out of range for depth {depth}")
        else:
            raise ValueError(f"routing.layers must be 'every_other', 'all' or a list of block indices, got {layers!r}")
        plan = [float(capacity) if i in chosen else None for i in range(depth)]
    for c in plan:
        if c is not None:
            capacity_to_k(1, c)  # validates the range
    return plan


class RoutedBlock(Block):
    """A Block that processes only the top-k patch tokens (plus all prefix tokens) of each image.

    Same parameters as ``Block`` plus ``router`` for the learned router, so a dense block's state dict loads into it.
    """

    def __init__(
        self,
        *args,
        capacity: float = 0.5,
        router: str = "linear",
        context: str = "selected",
        num_prefix_tokens: int = 1,
        weight: str = "sigmoid",
        weight_scale: float = 0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if weight not in WEIGHTS:
            raise ValueError(f"routing.weight must be one of {WEIGHTS}, got {weight!r}")
        if not 0.0 < weight_scale < 1.0:  # 1 + a*tanh(s) stays positive: a token is never negated or erased
            raise ValueError(f"routing.weight_scale must be in (0, 1), got {weight_scale}")
        if router not in ROUTERS:
            raise ValueError(f"routing.router must be one of {ROUTERS}, got {router!r}")
        if context not in CONTEXTS:
            raise ValueError(f"routing.context must be one of {CONTEXTS}, got {context!r}")
        if router == "cls_attn" and num_prefix_tokens < 1:
            raise ValueError("routing.router 'cls_attn' needs a class token (class_token=True)")
        capacity_to_k(1, capacity)
        self.capacity = float(capacity)
        self.router_type = router
        self.context = context
        self.num_prefix_tokens = num_prefix_tokens
        self.weight, self.weight_scale = weight, float(weight_scale)
        dim = self.norm1.normalized_shape[0]
        self.router = nn.Linear(dim, 1) if router == "linear" else None
        if self.router is not None:
            nn.init.zeros_(self.router.weight)
            nn.init.zeros_(self.router.bias)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores of the patch tokens: (B, N - num_prefix_tokens)."""
        patches = x[:, self.num_prefix_tokens :]
        if self.router is not None:
            return self.router(patches).squeeze(-1)
        return self.attn.cls_attention(self.norm1(x), self.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        P = self.num_prefix_tokens
        k = capacity_to_k(N - P, self.capacity)
        scores = self.scores(x)
        patch_idx = select_topk(scores, k)  # B, k (positions among patch tokens)
        prefix_idx = torch.arange(P, device=x.device).expand(B, P)
        idx = torch.cat([prefix_idx, patch_idx + P], dim=1)  # B, P + k
        x_sel = gather_tokens(x, idx)
        delta = self.residual(x_sel, context=x if self.context == "all" else None)
        if self.router is None:
            return scatter_add_tokens(x, idx, delta)
        if self.weight == "sigmoid":  # MoD: the router learns only through the processed tokens; 1 at zero init
            w = 2.0 * torch.sigmoid(scores)
        else:  # p-MoD: bounded in [1 - a, 1 + a]; 1 at zero init
            w = 1.0 + self.weight_scale * torch.tanh(scores)
        gate = torch.cat([w.new_ones(B, P), w.gather(1, patch_idx)], dim=1)
        delta = delta * gate.unsqueeze(-1).to(delta.dtype)
        if self.weight == "tanh" and k < N - P:  # skipped tokens carry the weight too (processed ones: 1 here)
            keep = w.scatter(1, patch_idx, 1.0)
            x = x * torch.cat([w.new_ones(B, P), keep], dim=1).unsqueeze(-1).to(x.dtype)
        return scatter_add_tokens(x, idx, delta)

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, router={self.router_type}, context={self.context}, weight={self.weight}"
