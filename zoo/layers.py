"""Blocks and attention shared by the zoo's ViT families.

Parameter names match timm's ``vision_transformer.Block`` exactly (norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1,
mlp.fc2, ls2), so a timm ViT state dict loads unchanged. Unlike timm's block, the two residual branches are exposed as
methods: a routed block needs ``f(x_sel)`` without the residual, and growth operators need to zero a branch output.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout) on SDPA.

    ``context`` lets a subset of tokens (the queries) attend to a larger set (the keys/values); the routed block uses
    it for its ``context: all`` mode. Without it this is ordinary self-attention. The efficient variants in
    ``zoo.attention`` subclass this and are selected by ``Block(attn_type=...)``.
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
        # unused by dense attention; kept so every variant in zoo.attention shares one constructor and grid interface
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
            k, v = F.linear(context, w_kv, b_kv).view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
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
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # B, H, 1, Np
        return attn.softmax(dim=-1).mean(dim=1).squeeze(1)


class Block(nn.Module):
    """Pre-norm transformer block, timm-compatible, with the residual branches as separate methods.

    ``attn_type`` / ``attn_args`` pick the attention from ``zoo.attention.ATTENTION_TYPES`` ("dense" is
    ``Attention``); ``grid_size`` and ``num_prefix_tokens`` describe the token layout the grid-aware variants need.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        mlp_hidden: int | None = None,
        head_dim: int | None = None,
        attn_type: str = "dense",
        attn_args: dict | None = None,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        # imported here: zoo.attention subclasses Attention from this module
        from zoo.attention import build_attention

        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = build_attention(
            attn_type,
            dim,
            num_heads,
            attn_args,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            head_dim=head_dim,
            grid_size=grid_size,
            num_prefix_tokens=num_prefix_tokens,
        )
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = mlp_hidden if mlp_hidden is not None else int(dim * mlp_ratio)
        self.mlp = Mlp(in_features=dim, hidden_features=hidden, act_layer=nn.GELU, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def attn_branch(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = None if context is None else self.norm1(context)
        return self.ls1(self.attn(self.norm1(x), context=ctx))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def residual(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """f(x) with block(x) = x + f(x), summed from the branches (no ``h - x``, which would cancel digits)."""
        a = self.drop_path1(self.attn_branch(x, context))
        return a + self.drop_path2(self.mlp_branch(x + a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn_branch(x))
        x = x + self.drop_path2(self.mlp_branch(x))
        return x
