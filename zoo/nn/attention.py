"""Efficient attention variants for ZooViT blocks, selected by the model args ``attn_type`` and ``attn_args``.

Every class takes the base ``Attention``'s constructor arguments (``dim, num_heads, qkv_bias, attn_drop, proj_drop,
head_dim``) plus ``grid_size`` (patch grid, H x W) and ``num_prefix_tokens`` (CLS + registers), then its own options,
and implements ``forward(x, context=None)`` on the full sequence ``[prefix tokens; patch tokens in raster order]``.

=====================  ==================  ===================================  =====================================
``attn_type``          options (default)   state dict vs dense                  token set it can run on
=====================  ==================  ===================================  =====================================
``dense``              -                   (reference)                          any (routed subsets, ``context``)
``window``             ``window_size`` 7   identical                            full sequence only
``spatial_reduction``  ``sr_ratio`` 2      identical                            full sequence only
``lowrank``            ``k_len`` 64        + ``attn.e_proj``, ``attn.f_proj``   full sequence only, fixed length N
``shared_qk``          -                   ``attn.qkv`` has 2*A rows, not 3*A   any set (no ``context``)
``lsa``                -                   + ``attn.log_scale`` (one scalar)    any set (no ``context``)
=====================  ==================  ===================================  =====================================

(A = num_heads * head_dim.) "Full sequence only" variants cannot run inside a routed block (which gathers a subset of
tokens in score order): ``check_routing`` raises, and ``ZooViT`` calls it before building or converting blocks.

Growth (``zoo.growth.operators``): window and spatial reduction have a dense block's parameters, so every operator
applies and
``set_grid_size`` follows resolution growth. Low-rank: depth, MLP and head growth apply; resolution growth raises
ValueError (E/F are tied to N) and width growth raises NotImplementedError (``growth._role`` has no rule for E/F).
Shared-QK: depth, MLP, width and resolution growth apply; head growth does NOT (``grow_heads`` splits qkv into three
blocks and has no guard for the [qk; v] layout yet). LSA: every operator applies (its learned scale is one scalar per
block, shared by the heads, and ``head_dim`` is fixed under every widening).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ATTENTION_TYPES",
    "LocalitySelfAttention",
    "LowRankAttention",
    "SharedQKAttention",
    "SpatialReductionAttention",
    "WindowAttention",
    "build_attention",
    "check_routing",
    "no_self_mask",
    "reduce_patch_tokens",
    "resolve_attn_args",
    "window_grid",
    "window_key_mask",
    "window_merge",
    "window_partition",
]


# ------------------------------------------------------------------------------------------------ pure helpers
class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout) on SDPA.

    ``context`` lets a subset of tokens (the queries) attend to a larger set (the keys/values); the routed block uses
    it for its ``context: all`` mode. Without it this is ordinary self-attention. The efficient variants in
    ``zoo.nn.attention`` subclass this and are selected by ``Block(attn_type=...)``.
    """

    #: True if the variant only runs on the complete ``[prefix; patch grid]`` sequence (not on a routed subset)
    needs_full_sequence: ClassVar[bool] = False
    #: True if ``forward(x, context=...)`` is supported
    supports_context: ClassVar[bool] = True
    #: variant options (``attn_args``) and their defaults
    options: ClassVar[dict[str, int]] = {}

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        # head_dim may differ from dim // num_heads (e.g. after heads were added by growth): attention width
        # num_heads * head_dim is then independent of the residual width
        self.head_dim = head_dim or dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(self.attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # unused by dense attention; kept so every variant in zoo.nn.attention shares one constructor and grid interface
        self.grid_size = None if grid_size is None else tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens

    def check_grid_size(self, grid_size: tuple[int, int]) -> None:
        """Raise ValueError if this attention cannot run on patch grid ``grid_size`` (called before any change)."""

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        """Follow a new input resolution (``ZooViT.set_input_size``); validates first."""
        self.check_grid_size(grid_size)
        self.grid_size = tuple(grid_size)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # B, H, N, Dh

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        A = self.attn_dim
        if context is None:
            q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            # queries from x only; keys and values from the full context (same weights, row slices of qkv)
            w_q, w_kv = self.qkv.weight.split([A, 2 * A])
            b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([A, 2 * A])
            q = self._heads(F.linear(x, w_q, b_q))
            M = context.shape[1]
            kv = F.linear(context, w_kv, b_kv).view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, A)
        return self.proj_drop(self.proj(x))

    def cls_attention(self, x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """Head-averaged attention of the first (CLS) token to the patch tokens: B, N - num_prefix_tokens.

        Computes only the CLS query and the keys (not values, not the full N x N map), so a parameter-free
        selector (EViT-style) costs about a third of one qkv projection.
        """
        A = self.attn_dim
        w_q, w_k, _ = self.qkv.weight.split([A, A, A])
        b_q, b_k = (None, None) if self.qkv.bias is None else self.qkv.bias.split([A, A, A])[:2]
        q = self._heads(F.linear(x[:, :1], w_q, b_q))  # B, H, 1, Dh
        k = self._heads(F.linear(x[:, num_prefix_tokens:], w_k, b_k))  # B, H, Np, Dh
        attn = (q * self.score_scale()) @ k.transpose(-2, -1)  # B, H, 1, Np
        return attn.softmax(dim=-1).mean(dim=1).squeeze(1)

    def score_scale(self) -> float | torch.Tensor:
        """The factor of q.k in the softmax: ``head_dim ** -0.5`` (LSA learns its own)."""
        return self.head_dim**-0.5


def no_self_mask(n: int, device: torch.device) -> torch.Tensor | None:
    """SDPA's boolean mask for attention without a token attending to itself; None for a lone token (a row with
    every key masked would be NaN)."""
    return None if n == 1 else ~torch.eye(n, dtype=torch.bool, device=device)


def _check_tokens(name: str, n: int, grid_size: tuple[int, int], num_prefix_tokens: int) -> None:
    expected = num_prefix_tokens + grid_size[0] * grid_size[1]
    if n != expected:
        raise ValueError(
            f"{name} attention expects the full sequence of {num_prefix_tokens} prefix + {grid_size[0]}x{grid_size[1]}"
            f" patch tokens ({expected}), got {n} tokens (a routed subset or a different input size?)"
        )


def _require_grid(name: str, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    if grid_size is None:
        raise ValueError(f"{name} attention needs the patch grid: pass grid_size=(H, W)")
    h, w = (int(s) for s in grid_size)
    if h < 1 or w < 1:
        raise ValueError(f"{name} attention: grid_size must be positive, got {tuple(grid_size)}")
    return h, w


def window_grid(grid_size: tuple[int, int], window_size: int) -> tuple[int, int]:
    """Number of windows along H and W after zero-padding the grid up to multiples of ``window_size``."""
    return math.ceil(grid_size[0] / window_size), math.ceil(grid_size[1] / window_size)


def window_partition(t: torch.Tensor, grid_size: tuple[int, int], window_size: int) -> torch.Tensor:
    """(B, H, Hg*Wg, D) patch tokens -> (B, H * nW, ws*ws, D) windows, zero-padded at the bottom/right.

    Windows are ordered head-major then raster (h * nW + window index), tokens inside a window in raster order.
    """
    B, heads, _, D = t.shape
    (hg, wg), ws = grid_size, window_size
    nh, nw = window_grid(grid_size, ws)
    t = t.reshape(B, heads, hg, wg, D)
    t = F.pad(t, (0, 0, 0, nw * ws - wg, 0, nh * ws - hg))
    t = t.view(B, heads, nh, ws, nw, ws, D).permute(0, 1, 2, 4, 3, 5, 6)
    return t.reshape(B, heads * nh * nw, ws * ws, D)


def window_merge(t: torch.Tensor, grid_size: tuple[int, int], window_size: int, heads: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B, H * nW, ws*ws, D) -> (B, H, Hg*Wg, D), padding dropped."""
    B, _, _, D = t.shape
    (hg, wg), ws = grid_size, window_size
    nh, nw = window_grid(grid_size, ws)
    t = t.view(B, heads, nh, nw, ws, ws, D).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, heads, nh * ws, nw * ws, D)
    return t[:, :, :hg, :wg].reshape(B, heads, hg * wg, D)


def window_key_mask(
    grid_size: tuple[int, int], window_size: int, num_prefix_tokens: int, device: torch.device | None = None
) -> torch.Tensor | None:
    """Boolean key mask (nW, P + ws*ws), True = attend: prefix keys always, padded grid positions never.

    None when the grid divides into windows exactly (no padding), so SDPA keeps its unmasked path.
    """
    (hg, wg), ws = grid_size, window_size
    nh, nw = window_grid(grid_size, ws)
    if nh * ws == hg and nw * ws == wg:
        return None
    valid = torch.zeros(nh * ws, nw * ws, dtype=torch.bool, device=device)
    valid[:hg, :wg] = True
    valid = valid.view(nh, ws, nw, ws).permute(0, 2, 1, 3).reshape(nh * nw, ws * ws)
    prefix = torch.ones(nh * nw, num_prefix_tokens, dtype=torch.bool, device=device)
    return torch.cat([prefix, valid], dim=1)


def reduce_patch_tokens(
    x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int, ratio: int
) -> torch.Tensor:
    """[prefix; patches] (B, N, C) -> [prefix; avg-pooled patches] (B, P + ceil(Hg/r) * ceil(Wg/r), C).

    Non-overlapping ``ratio`` x ``ratio`` average pooling; edge cells of a grid that ``ratio`` does not divide average
    only the patches they cover (``ceil_mode``, no zero padding in the mean).
    """
    P, (hg, wg) = num_prefix_tokens, grid_size
    if ratio == 1:
        return x
    B, _, C = x.shape
    grid = x[:, P:].transpose(1, 2).reshape(B, C, hg, wg)
    pooled = F.avg_pool2d(grid, ratio, ratio, ceil_mode=True).flatten(2).transpose(1, 2)
    return torch.cat([x[:, :P], pooled], dim=1)


# ------------------------------------------------------------------------------------------------------ variants
class WindowAttention(Attention):
    """Local attention in non-overlapping ``window_size`` x ``window_size`` windows of the patch grid (Swin, no shift).

    Exact scheme, with P prefix tokens and the grid zero-padded at the bottom/right to multiples of the window:
      - a prefix query attends to all N = P + Hg*Wg tokens (global, as in dense attention);
      - a patch query attends to the P prefix keys plus the patch keys of its own window (padded keys masked out).
    With ``window_size >= max(grid)`` every patch shares one window, so this equals dense attention. No extra
    parameters: the state dict is a dense block's.
    """

    needs_full_sequence = True
    supports_context = False
    options = {"window_size": 7}

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 0,
        window_size: int = 7,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, head_dim, grid_size, num_prefix_tokens)
        self.grid_size = _require_grid("window", grid_size)
        self.window_size = int(window_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("window attention does not support context (routed blocks); use attn_type 'dense'")
        B, N, _ = x.shape
        P, H, ws = self.num_prefix_tokens, self.num_heads, self.window_size
        _check_tokens("window", N, self.grid_size, P)
        q, k, v = self.qkv(x).view(B, N, 3, H, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        outs = []
        if P:
            outs.append(F.scaled_dot_product_attention(q[:, :, :P], k, v, dropout_p=drop))
        nw = window_grid(self.grid_size, ws)
        n_win = nw[0] * nw[1]

        def keys(t: torch.Tensor) -> torch.Tensor:
            # every window sees the prefix keys first, then its own patch keys (same order as dense attention)
            win = window_partition(t[:, :, P:], self.grid_size, ws)
            pre = t[:, :, :P].unsqueeze(2).expand(-1, -1, n_win, -1, -1).reshape(B, H * n_win, P, self.head_dim)
            return torch.cat([pre, win], dim=2)

        mask = window_key_mask(self.grid_size, ws, P, device=x.device)
        if mask is not None:
            mask = mask.repeat(H, 1).unsqueeze(1).unsqueeze(0)  # 1, H * nW, 1, P + ws*ws (head-major, as the windows)
        qw = window_partition(q[:, :, P:], self.grid_size, ws)
        o = F.scaled_dot_product_attention(qw, keys(k), keys(v), attn_mask=mask, dropout_p=drop)
        outs.append(window_merge(o, self.grid_size, ws, H))
        x = torch.cat(outs, dim=2).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, window_size={self.window_size}, num_prefix_tokens={self.num_prefix_tokens}"


class SpatialReductionAttention(Attention):
    """PVT-style spatial-reduction attention with parameter-free reduction.

    Queries come from all N tokens; keys and values from the P prefix tokens plus the patch grid average-pooled by
    ``sr_ratio`` (non-overlapping cells, ceil at the edges), projected with the block's own k/v rows of ``qkv``.
    Pooling before the (linear) k/v projection equals pooling k and v, and is cheaper. PVT's strided conv + LayerNorm
    is deliberately not used: avg pooling adds no parameters, so the state dict is a dense block's (a dense
    checkpoint loads unchanged, and ``sr_ratio=1`` is exactly dense attention).
    """

    needs_full_sequence = True
    supports_context = False
    options = {"sr_ratio": 2}

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 0,
        sr_ratio: int = 2,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, head_dim, grid_size, num_prefix_tokens)
        self.grid_size = _require_grid("spatial_reduction", grid_size)
        self.sr_ratio = int(sr_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("spatial_reduction attention does not support context (routed blocks)")
        _check_tokens("spatial_reduction", x.shape[1], self.grid_size, self.num_prefix_tokens)
        # the dense context path: queries from x, keys/values (same weights) from the reduced sequence
        return super().forward(x, context=reduce_patch_tokens(x, self.grid_size, self.num_prefix_tokens, self.sr_ratio))

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, sr_ratio={self.sr_ratio}, num_prefix_tokens={self.num_prefix_tokens}"


class LowRankAttention(Attention):
    """Linformer attention: K and V (N x Dh per head) are projected along the token axis to ``k_len`` rows.

    ``K' = E K`` and ``V' = F V`` with learned ``e_proj`` (E) and ``f_proj`` (F), each ``k_len x N`` over the full
    sequence N = P + Hg*Wg (prefix tokens included) and shared by all heads of the block; queries stay N. E and F
    start as N(0, 1/N), which keeps the projected rows at the scale of the originals.

    N is fixed by the image size: ``set_grid_size`` (resolution growth) raises for a different N instead of
    resampling E/F, because growth has no parameter map for them. The two extra parameters also mean a dense
    checkpoint does not load strictly (missing ``attn.e_proj`` / ``attn.f_proj``).
    """

    needs_full_sequence = True
    supports_context = False
    options = {"k_len": 64}

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 0,
        k_len: int = 64,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, head_dim, grid_size, num_prefix_tokens)
        self.grid_size = _require_grid("lowrank", grid_size)
        self.k_len = int(k_len)
        n = num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.e_proj = nn.Parameter(torch.randn(self.k_len, n) * n**-0.5)
        self.f_proj = nn.Parameter(torch.randn(self.k_len, n) * n**-0.5)

    def check_grid_size(self, grid_size: tuple[int, int]) -> None:
        n_new = self.num_prefix_tokens + grid_size[0] * grid_size[1]
        if n_new != self.e_proj.shape[1]:
            raise ValueError(
                f"lowrank attention: E/F are {self.k_len} x {self.e_proj.shape[1]} (tokens of grid {self.grid_size}); "
                f"grid {tuple(grid_size)} needs {n_new} tokens. Changing the resolution of a Linformer model is not "
                "supported (E/F would have to be resampled); build a new model at the target size instead."
            )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("lowrank attention does not support context (routed blocks)")
        B, N, _ = x.shape
        _check_tokens("lowrank", N, self.grid_size, self.num_prefix_tokens)
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k, v = self.e_proj @ k, self.f_proj @ v  # (k_len, N) @ (B, H, N, Dh) -> (B, H, k_len, Dh)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, k_len={self.k_len}, num_prefix_tokens={self.num_prefix_tokens}"


class SharedQKAttention(Attention):
    """Reformer's shared-QK attention: one projection gives queries and keys; ``qkv`` is ``[qk; v]`` (2*A rows).

    As in Reformer, keys are the per-head L2-normalised queries, and a token may not attend to itself (q.q would
    dominate its row) unless it is the only token. Works on any token set, so it can run inside a routed block
    with ``context: selected``; ``context`` (routing ``context: all``) is unsupported because the self-mask needs
    to know which context token is the query. The qkv weight (and bias) has 2*A rows instead of 3*A: a dense
    checkpoint does not load, and ``grow_heads`` (which splits qkv into three) does not apply.
    """

    supports_context = False

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 0,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, head_dim, grid_size, num_prefix_tokens)
        self.qkv = nn.Linear(dim, 2 * self.attn_dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("shared_qk attention does not support context (routing context 'all'); use 'selected'")
        B, N, _ = x.shape
        qk, v = self.qkv(x).view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k = F.normalize(qk, dim=-1)
        mask = no_self_mask(N, x.device)
        x = F.scaled_dot_product_attention(qk, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))

    def cls_attention(self, x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """Head-averaged attention of the CLS query to the (normalised, shared-projection) patch keys."""
        A = self.attn_dim
        w_qk = self.qkv.weight[:A]
        b_qk = None if self.qkv.bias is None else self.qkv.bias[:A]
        q = self._heads(F.linear(x[:, :1], w_qk, b_qk))
        k = F.normalize(self._heads(F.linear(x[:, num_prefix_tokens:], w_qk, b_qk)), dim=-1)
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        return attn.softmax(dim=-1).mean(dim=1).squeeze(1)


class LocalitySelfAttention(Attention):
    """Locality self-attention (LSA; Lee et al., "Vision Transformer for Small-Size Datasets", 2021): dense attention
    with a learned softmax temperature and no attention of a token to itself.

    Both sharpen the attention map, which on small data otherwise stays close to uniform: the temperature starts at
    the usual ``head_dim ** -0.5`` and is learned (``log_scale``, one scalar per block: the paper's single learnable
    temperature), and the diagonal of the score matrix is masked out so a token's weight goes to the others. It runs on
    any token set (a routed subset with ``context: selected`` too); ``context`` (routing ``context: all``) is refused
    because the self-mask needs to know which context token is the query.
    """

    supports_context = False

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 0,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, head_dim, grid_size, num_prefix_tokens)
        self.log_scale = nn.Parameter(torch.tensor(math.log(self.head_dim**-0.5)))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("lsa attention does not support context (routing context 'all'); use 'selected'")
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # the learned scale is applied to q (SDPA's own ``scale`` must be a Python float, which autograd cannot reach)
        q = q * self.score_scale()
        mask = no_self_mask(N, x.device)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0, scale=1.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))

    def score_scale(self) -> torch.Tensor:
        """The learned temperature (also what ``cls_attention``, inherited, scores with; the CLS token is not a patch
        key, so no self-mask is needed there)."""
        return self.log_scale.exp()


#: ``attn_type`` -> class. All share Attention's constructor plus ``grid_size``, ``num_prefix_tokens`` and ``options``.
ATTENTION_TYPES: dict[str, type[Attention]] = {
    "dense": Attention,
    "window": WindowAttention,
    "spatial_reduction": SpatialReductionAttention,
    "lowrank": LowRankAttention,
    "shared_qk": SharedQKAttention,
    "lsa": LocalitySelfAttention,
}


# ------------------------------------------------------------------------------------------------ configuration
def _attention_class(attn_type: str) -> type[Attention]:
    if attn_type not in ATTENTION_TYPES:
        raise ValueError(f"attn_type must be one of {tuple(ATTENTION_TYPES)}, got {attn_type!r}")
    return ATTENTION_TYPES[attn_type]


def resolve_attn_args(attn_type: str, attn_args: dict[str, Any] | None) -> dict[str, int]:
    """Validated options of ``attn_type`` with defaults filled in (so a saved config does not depend on defaults).

    Raises:
        ValueError: On an unknown type, an unknown option, or an option that is not a positive integer.
    """
    cls = _attention_class(attn_type)
    args = dict(attn_args or {})
    unknown = sorted(set(args) - set(cls.options))
    if unknown:
        raise ValueError(f"attn_args {unknown} unknown for attn_type {attn_type!r}; options: {sorted(cls.options)}")
    out = {**cls.options, **args}
    for key, value in out.items():
        # bool is an int subclass; a JSON float such as 4.0 would silently truncate
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"attn_args.{key} must be a positive integer, got {value!r}")
    return out


def build_attention(
    attn_type: str,
    dim: int,
    num_heads: int,
    attn_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Attention:
    """Instantiate ``attn_type`` with Attention's keyword arguments (``qkv_bias``, ..., ``grid_size``,
    ``num_prefix_tokens``) and the validated ``attn_args``."""
    return _attention_class(attn_type)(dim, num_heads, **kwargs, **resolve_attn_args(attn_type, attn_args))


def check_routing(attn_type: str, routed: bool, context: str = "selected") -> None:
    """Raise a clear error if ``attn_type`` cannot run inside a routed block.

    Window, spatial-reduction and low-rank attention need the complete token sequence in grid order (a routed
    block passes a top-k subset in score order); shared-QK cannot use ``context: all``.

    Raises:
        ValueError: For an unsupported combination.
    """
    cls = _attention_class(attn_type)
    if not routed:
        return
    if cls.needs_full_sequence:
        raise ValueError(
            f"attn_type {attn_type!r} needs the full token grid and cannot run in routed blocks (routing gathers a "
            "subset of tokens); use attn_type 'dense' or 'shared_qk' with routing, or disable routing"
        )
    if context == "all" and not cls.supports_context:
        raise ValueError(f"attn_type {attn_type!r} does not support routing context 'all'; use context 'selected'")
