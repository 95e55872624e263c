"""The pre-norm transformer block shared by the zoo's ViT families.

Parameter names match timm's ``vision_transformer.Block`` exactly (norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1,
mlp.fc2, ls2), so a timm ViT state dict loads unchanged. Unlike timm's block, the two residual branches are exposed as
methods: a routed block needs ``f(x_sel)`` without the residual, and growth operators need to zero a branch output.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn

from zoo.nn.attention import build_attention


class Block(nn.Module):
    """Pre-norm transformer block, timm-compatible, with the residual branches as separate methods.

    ``attn_type`` / ``attn_args`` pick the attention from ``zoo.nn.attention.ATTENTION_TYPES`` ("dense" is
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
