"""Patch-embedding stems, selected by the model arg ``stem``:

- ``patch``: timm's ``PatchEmbed`` (one conv, kernel = stride = patch size: timm checkpoint compatible);
- ``conv``: a small stride-1 3x3 convolution in front of the patchifying conv;
- ``early``: the convolutional stem of "Early convolutions help transformers see better" (Xiao et al. 2021): a
  stride-1 3x3 conv, then one stride-2 3x3 conv per factor 2 of the patch size, each with BatchNorm and GELU and
  doubling the channels, then a 1x1 conv to the embedding width. The same token grid as ``patch``, built from
  overlapping local features, which is what makes a ViT on small data learn at a CNN's pace;
- ``spt``: shifted patch tokenization (Lee et al., "Vision Transformer for Small-Size Datasets", 2021): the image and
  four copies shifted diagonally by half a patch are stacked on the channels, each patch of the stack is
  layer-normalised and linearly embedded. Each token sees its patch and half of each neighbour, at the cost of one
  patchifying linear layer (a fraction of the ``early`` stem's FLOPs).

Every stem has ``PatchEmbed``'s interface (``img_size``, ``patch_size``, ``grid_size``, ``num_patches``,
``set_input_size``) and names its last conv ``proj``, so the model, growth (which widens ``proj``) and profiling treat
them alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, to_2tuple
from torch import nn


class GridStem(nn.Module):
    """What the convolutional stems share: ``PatchEmbed``'s grid bookkeeping, and ``proj`` (the last conv, to the
    embedding width) applied to the subclass's ``features``, flattened to tokens."""

    # Subclasses set ``patch_size`` (a 2-tuple) and ``proj`` (the last conv) in __init__. No class-level annotations:
    # TorchScript would read them as attribute types and cannot resolve ``nn.Conv2d`` from a postponed annotation.

    def set_input_size(self, img_size: int) -> None:
        self.img_size = to_2tuple(img_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.features(x))  # B, D, H / patch, W / patch
        return x.flatten(2).transpose(1, 2)  # B, N, D


class ConvStem(GridStem):
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class EarlyConvStem(GridStem):
    """Stride-1 3x3 conv (in -> width), then log2(patch_size) stride-2 3x3 convs doubling the channels (each with
    BatchNorm and GELU), then a 1x1 conv to ``embed_dim`` (named ``proj``). ``patch_size`` must be a power of 2."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, width: int):
        super().__init__()
        if patch_size < 1 or patch_size & (patch_size - 1):
            raise ValueError(
                f"stem 'early' needs a power-of-2 patch_size (one stride-2 conv per factor 2), got {patch_size}"
            )
        self.patch_size = to_2tuple(patch_size)
        chans = [width * 2**i for i in range(patch_size.bit_length())]  # width, 2 width, ... (log2(patch) doublings)
        layers: list[nn.Module] = []
        c_in = in_chans
        for i, c_out in enumerate(chans):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, embed_dim, kernel_size=1)
        self.set_input_size(img_size=img_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ShiftedPatchStem(GridStem):
    """Shifted patch tokenization: ``[x, x shifted by (+-p/2, +-p/2)]`` on the channels (zero-filled), LayerNorm over
    each patch's ``5 * in_chans * p * p`` values, then the patchifying linear map (``proj``, a kernel = stride = p
    conv, which is the same linear map per patch and keeps the stem's last layer a conv for growth and profiling).

    The paper's LayerNorm acts on the flattened patch; here it is computed on the (C, p, p) block of each patch in
    place, which is the same normalisation with its affine weight laid out as (5C, p, p).
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if patch_size < 2:
            raise ValueError(f"stem 'spt' shifts by half a patch and needs patch_size >= 2, got {patch_size}")
        self.patch_size = to_2tuple(patch_size)
        self.shift = patch_size // 2
        chans = 5 * in_chans
        self.norm_weight = nn.Parameter(torch.ones(chans, patch_size, patch_size))
        self.norm_bias = nn.Parameter(torch.zeros(chans, patch_size, patch_size))
        self.proj = nn.Conv2d(chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.set_input_size(img_size=img_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shift
        padded = F.pad(x, (s, s, s, s))
        h, w = x.shape[-2:]
        # the four diagonal shifts: the crop of the padded image at offset (dy, dx) moves x by (s - dy, s - dx)
        shifted = [padded[..., dy : dy + h, dx : dx + w] for dy, dx in ((0, 0), (0, 2 * s), (2 * s, 0), (2 * s, 2 * s))]
        x = torch.cat([x, *shifted], dim=1)  # B, 5C, H, W
        b, c = x.shape[:2]
        ph, pw = self.patch_size
        gh, gw = h // ph, w // pw
        x = x[..., : gh * ph, : gw * pw]  # like the patchifying conv, drop a remainder that fills no whole patch
        patches = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)  # B, gh, gw, 5C, p, p
        patches = F.layer_norm(patches, patches.shape[-3:], self.norm_weight, self.norm_bias, eps=1e-6)
        return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * ph, gw * pw)


STEMS = ("patch", "conv", "early", "spt")


def default_stem_width(kind: str, embed_dim: int) -> int | None:
    """The ``early`` stem's first width when none is given: a quarter of the embedding width (Xiao et al. end their
    stem at the embedding width after doublings); None for stems without a width."""
    return max(8, embed_dim // 4) if kind == "early" else None


def make_stem(
    kind: str, img_size: int, patch_size: int, in_chans: int, embed_dim: int, width: int | None = None
) -> nn.Module:
    if kind == "patch":
        return PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
    if kind == "conv":
        return ConvStem(img_size, patch_size, in_chans, embed_dim)
    if kind == "early":
        return EarlyConvStem(img_size, patch_size, in_chans, embed_dim, width or default_stem_width(kind, embed_dim))
    if kind == "spt":
        return ShiftedPatchStem(img_size, patch_size, in_chans, embed_dim)
    raise ValueError(f"stem must be one of {STEMS}, got {kind!r}")
