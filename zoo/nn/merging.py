"""Token merging (ToMe, Bolya et al., ICLR 2023): training-free token reduction by bipartite soft matching.

In each merging block, after attention, the patch tokens are split alternately into two sets A and B; every A token
is matched to its most similar B token (cosine similarity of the attention keys, averaged over heads), and the ``r``
best-matched A tokens are merged into their B partners by a size-weighted average. A merged token stands for several
patches: its ``size`` (how many) is carried to later blocks, whose attention adds ``log(size)`` to the logits of its
key (proportional attention), and the average pool weights tokens by size, so a merged token counts as the patches it
replaces. Prefix tokens (class, registers) are never merged.

The algorithm is the pure functions :func:`bipartite_soft_matching` and :func:`merge_weighted`; ``MergingBlock``
wires them into a timm-compatible block, and :class:`TokenSizes` carries the sizes from block to block (the blocks
of one model share one instance, reset at the start of every forward). With ``r = 0`` and no merged token before it,
a merging block runs exactly the dense block's code, so converting a model is exact at ratio 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from zoo.nn.block import Block

#: the keys of a model's ``merging`` spec
MERGING_KEYS = frozenset({"r", "layers"})


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """ToMe's matching on patch tokens ``metric`` (B, N, C): a function that merges ``r`` tokens of any (B, N, D).

    Even positions form set A, odd positions set B; each A token's best B match (cosine similarity) is found and the
    ``r`` A tokens with the most similar matches are reduced into their B partners. Kept tokens stay in their
    original relative order (A's kept tokens first, then B)."""
    n = metric.shape[1]
    r = min(r, n // 2)
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = metric[:, ::2], metric[:, 1::2]
    node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)  # B, |A|
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]  # B, |A|, 1
    unm_idx = edge_idx[:, r:].sort(dim=1).values  # kept A tokens, in their original order
    src_idx = edge_idx[:, :r]  # merged A tokens
    dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)  # their B partners

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]
        bsz, t1, d = src.shape
        unm = src.gather(dim=1, index=unm_idx.expand(bsz, t1 - r, d))
        src = src.gather(dim=1, index=src_idx.expand(bsz, r, d))
        dst = dst.scatter_reduce(1, dst_idx.expand(bsz, r, d), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def merge_weighted(
    merge: Callable[[torch.Tensor, str], torch.Tensor], x: torch.Tensor, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge tokens ``x`` (B, N, C) of sizes ``size`` (B, N, 1) into their size-weighted averages, and the sizes."""
    x = merge(x * size, "sum")
    size = merge(size, "sum")
    return x / size, size


def resolve_merge_plan(depth: int, merging: dict | None) -> list[int]:
    """Tokens merged per block from a merging spec: ``r`` (one int for the chosen ``layers``, or a list of one int per
    block) and ``layers`` (``"all"``, or a list of block indices)."""
    if not merging:
        return [0] * depth
    if not isinstance(merging, Mapping):
        raise ValueError(f"merging must be a mapping of {sorted(MERGING_KEYS)} or None, got {merging!r}")
    unknown = sorted(set(merging) - MERGING_KEYS)
    if unknown:
        raise ValueError(f"merging: unknown key(s) {unknown}; allowed: {sorted(MERGING_KEYS)}")
    r = merging.get("r", 0)
    if isinstance(r, Sequence) and not isinstance(r, str):
        if len(r) != depth:
            raise ValueError(f"merging.r list has {len(r)} entries for depth {depth}")
        plan = [int(v) for v in r]
    else:
        layers = merging.get("layers", "all")
        if layers == "all":
            chosen = set(range(depth))
        elif isinstance(layers, Sequence) and not isinstance(layers, str):
            chosen = {int(i) for i in layers}
            if any(not 0 <= i < depth for i in chosen):
                raise ValueError(f"merging.layers {sorted(chosen)} out of range for depth {depth}")
        else:
            raise ValueError(f"merging.layers must be 'all' or a list of block indices, got {layers!r}")
        plan = [int(r) if i in chosen else 0 for i in range(depth)]
    if any(v < 0 for v in plan):
        raise ValueError(f"merging.r must be >= 0 tokens per block, got {plan}")
    return plan


class TokenSizes:
    """How many patches each current token stands for, shared by the merging blocks of one model: ``None`` until a
    block has merged (every token is one patch), then (B, N, 1). The model resets it before its blocks run."""

    def __init__(self) -> None:
        self.size: torch.Tensor | None = None

    def reset(self) -> None:
        self.size = None


class MergingBlock(Block):
    """A Block that merges ``r`` patch tokens after its attention, and attends proportionally to merged tokens.

    Same parameters as ``Block`` (a dense block's state dict loads into it). ``sizes`` is the model's shared
    :class:`TokenSizes`.
    """

    def __init__(self, *args, r: int = 0, sizes: TokenSizes, num_prefix_tokens: int = 1, **kwargs):
        super().__init__(*args, num_prefix_tokens=num_prefix_tokens, **kwargs)
        if r < 0:
            raise ValueError(f"merging.r must be >= 0, got {r}")
        self.r = int(r)
        self.sizes = sizes
        self.num_prefix_tokens = num_prefix_tokens

    def _attend(self, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of the normed tokens with ``log(size)`` added to each key's logits; also the keys averaged over
        heads (ToMe's similarity metric)."""
        attn = self.attn
        bsz, n, _ = x.shape
        q, k, v = attn.qkv(x).view(bsz, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None if size is None else size.log().view(bsz, 1, 1, n).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=attn.attn_drop if self.training else 0.0
        )
        out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(bsz, n, attn.attn_dim)))
        return out, k.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.sizes.size
        if self.r == 0 and size is None:
            return super().forward(x)  # exactly the dense block: nothing merged so far, nothing to merge
        out, metric = self._attend(self.norm1(x), size)
        x = x + self.drop_path1(self.ls1(out))
        if self.r > 0:
            p = self.num_prefix_tokens
            if size is None:
                size = x.new_ones(x.shape[0], x.shape[1], 1)
            merge = bipartite_soft_matching(metric[:, p:], self.r)
            patches, patch_size = merge_weighted(merge, x[:, p:], size[:, p:])
            x = torch.cat([x[:, :p], patches], dim=1)
            size = torch.cat([size[:, :p], patch_size], dim=1)
            self.sizes.size = size
        return x + self.drop_path2(self.mlp_branch(x))

    def extra_repr(self) -> str:
        return f"r={self.r}"
