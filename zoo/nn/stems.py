"""Patch-embedding stems. ``patch`` is timm's ``PatchEmbed`` (one conv, kernel = stride = patch size: timm
checkpoint compatible). ``conv`` puts a small stride-1 convolution in front of it ("early convolutions help
transformers see better", Xiao et al. 2021): on small data a ViT learns markedly faster with a local inductive bias
in the stem, at a cost that is small next to the transformer blocks.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed, to_2tuple
from torch import nn


class ConvStem(nn.Module):
    """3x3 stride-1 conv (in -> hidden) + GELU, then the usual patchifying conv (hidden -> embed_dim, named ``proj``).

    Same interface as timm's ``PatchEmbed`` (``img_size``, ``patch_size``, ``grid_size``, ``num_patches``,
    ``set_input_size``), so the rest of the model, growth and profiling treat it alike.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, hidden: int = 32):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.conv = nn.Conv2d(in_chans, hidden, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.proj = nn.Conv2d(hidden, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.set_input_size(img_size=img_size)

    def set_input_size(self, img_size: int) -> None:
        self.img_size = to_2tuple(img_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.act(self.conv(x)))  # B, D, H', W'
        return x.flatten(2).transpose(1, 2)  # B, N, D


def make_stem(kind: str, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> nn.Module:
    if kind == "patch":
        return PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
    if kind == "conv":
        return ConvStem(img_size, patch_size, in_chans, embed_dim)
    raise ValueError(f"stem must be 'patch' or 'conv', got {kind!r}")
