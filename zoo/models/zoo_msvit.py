"""ZooMSViT: a multi-scale (hierarchical) Vision Transformer built from the zoo's pre-norm blocks.

Design. Stages of ``zoo.nn.block.Block`` (the same pre-norm attention + MLP block as ``ZooViT``, with its
``attn_type`` / ``attn_args`` attention variants), joined by **patch merging** as in Swin (Liu et al., "Swin
Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021): every 2x2 group of neighbouring
tokens is concatenated (C -> 4C), layer-normed and projected by a bias-free linear layer to the next stage's width,
so the token count drops 4x and the width grows from stage to stage. After the last stage: final norm, global
average pool over the tokens, head. One absolute position embedding is added after the stem (as in ViT and PiT),
there is no class token, and attention inside a stage is global by default (as in PVT and PiT, not Swin's shifted
windows: ``attn_type="window"`` gives Swin-style local windows without the shift, ``"spatial_reduction"`` PVT-style
reduced keys/values; each block's attention sees its own stage's grid).

Why patch merging rather than PiT's pooling layer (Heo et al., "Rethinking Spatial Dimensions of Vision
Transformers", ICCV 2021: a strided depthwise conv on the token grid plus a separate linear layer for the class
token) or MViT's pooling attention (Fan et al., "Multiscale Vision Transformers", ICCV 2021, which pools inside the
attention and so would replace the zoo's attention modules): merging works on the (B, N, C) token sequence the zoo
blocks already pass around (a reshape and one ``nn.Linear``), needs no class-token special case, keeps every value of
a 2x2 group (the linear layer sees all four tokens, unlike a pooling), leaves the blocks and attention variants
untouched, and all of its cost is a matmul that ``zoo.measure.flops`` / ``FlopCounterMode`` count. Its parameter names
and
concatenation order (``downsample.norm``, ``downsample.reduction``; x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
x[1::2, 1::2]) are those of timm's Swin ``PatchMerging``. A grid side that is odd is zero-padded at the
bottom/right before merging (as timm's Swin does), so any input size works: ``ceil(H/2) x ceil(W/2)`` tokens
come out. The registered sizes only ever merge even grids: ``zoo_msvit_micro_p2`` (28 px, patch 2) has two stages,
14x14 then 7x7, i.e. a single merge (a third stage would need the 7x7 grid padded to 8x8);
``zoo_msvit_tiny_p4`` (224 px, patch 4) has four, 56 -> 28 -> 14 -> 7.

Layout for the zoo's tools. ``model.blocks`` is ONE flat ``nn.Sequential`` of all blocks of all stages; the first
block of every stage after the first is a ``MergeBlock``, which merges the previous stage's tokens before its own
attention and MLP. So a block is still the unit of everything the zoo does per block: ``set_grad_checkpointing``
(checkpoints block by block, merges included; the same code as ``ZooViT``), ``group_matcher`` and
``zoo.training.freezing`` (groups: stem, one per block in order with the final norm joining the last block, head on
top: a
merge belongs to the group of the block it starts), ``no_grad_prefix`` (frozen leading blocks run without a graph),
the per-block rows of ``zoo profile``. ``model_args["depth"]`` is the total number of blocks, ``sum(depths)``
(the zoo's tools read it as ``len(model.blocks)``); ``depths`` gives the split into stages. ``feature_info`` and
``forward_intermediates`` are per STAGE (the last block of each), as in timm's hierarchical models, with reductions
``patch_size * 2**s``.

Not supported (ZooViT-only features): token routing (a routed block processes a top-k subset of tokens in score
order, which breaks the 2x2 neighbourhoods a merge needs; ``routing=...`` at construction raises ValueError and
``set_routing`` NotImplementedError), layer-wise growth (``zoo.growth.operators`` operators assume one residual width
``embed_dim`` shared by all blocks; this family has ``embed_dims`` per stage, so it does not set
``supports_growth`` and ``zoo.growth.operators.grow`` raises NotImplementedError before changing anything),
class / register tokens, and pooling other than ``global_pool="avg"``. Changing the input size with
``set_input_size`` is supported (position embedding resampled, every stage's grid recomputed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from zoo.models.common import fmnist_cfg, init_linears, keep_frozen_prefix_eval, run_blocks, vit_cfg
from zoo.models.zoo_vit import ZooViT, checkpoint_filter_fn, drop_path_rates, new_head
from zoo.nn.attention import resolve_attn_args
from zoo.nn.block import Block
from zoo.nn.stems import make_stem

__all__ = ["MergeBlock", "PatchMerging", "ZooMSViT", "stage_grid_sizes"]


def stage_grid_sizes(grid_size: Sequence[int], num_stages: int) -> list[tuple[int, int]]:
    """Token grid of every stage: the stem's grid, then each merge halves both sides, rounding up (odd sides pad)."""
    h, w = (int(s) for s in grid_size)
    grids = [(h, w)]
    for _ in range(num_stages - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        grids.append((h, w))
    return grids


def _per_stage(name: str, value: int | Sequence[int], num_stages: int) -> list[int]:
    """One int per stage (an int is repeated); as a list, so ``model_args`` stays equal after a JSON round trip."""
    out = [int(value)] * num_stages if isinstance(value, int) else [int(v) for v in value]
    if len(out) != num_stages:
        raise ValueError(f"{name} has {len(out)} entries, depths has {num_stages} stages")
    if any(v < 1 for v in out):
        raise ValueError(f"{name} entries must be >= 1, got {out}")
    return out


# ---------------------------------------------------------------------------------------------------------- blocks
class PatchMerging(nn.Module):
    """Swin's patch merging on a token sequence: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), out_dim).

    Each 2x2 group of neighbouring tokens is concatenated to 4C (timm's Swin order: (0,0), (1,0), (0,1), (1,1) as
    (row, column) offsets), layer-normed and projected without bias. An odd side is zero-padded at the bottom/right.
    ``grid_size`` is the INPUT grid (H, W); ``ZooMSViT.set_input_size`` updates it.
    """

    def __init__(self, dim: int, out_dim: int, grid_size: tuple[int, int]):
        super().__init__()
        self.grid_size = tuple(int(s) for s in grid_size)
        self.norm = nn.LayerNorm(4 * dim, eps=1e-6)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    @property
    def out_grid_size(self) -> tuple[int, int]:
        return stage_grid_sizes(self.grid_size, 2)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, W = self.grid_size
        if N != H * W:
            raise ValueError(f"patch merging expects the {H}x{W} grid ({H * W} tokens), got {N} tokens")
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, W % 2, 0, H % 2))
        h, w = x.shape[1] // 2, x.shape[2] // 2
        x = x.reshape(B, h, 2, w, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, h * w, 4 * C)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}"


class MergeBlock(Block):
    """First block of a stage after the first: ``PatchMerging`` (previous width, previous grid) then a ``Block``.

    Parameter names are a ``Block``'s plus ``downsample.norm`` / ``downsample.reduction``. The block maps
    ``(B, N, C_in) -> (B, N/4, C)``, so it is not a residual function of its input: ``residual`` raises.
    """

    def __init__(self, in_dim: int, in_grid_size: tuple[int, int], **block_kwargs: Any):
        super().__init__(**block_kwargs)
        self.downsample = PatchMerging(in_dim, block_kwargs["dim"], in_grid_size)

    def residual(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError("a MergeBlock changes the token count and width: it has no residual form x + f(x)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.downsample(x))


# ---------------------------------------------------------------------------------------------------------- model
class ZooMSViT(nn.Module):
    """Hierarchical ViT with timm's interface (see the module docstring for the design and what is not supported).

    Hooks shared with ``ZooViT``: ``no_grad_prefix`` (set by ``zoo.training.freezing``) and
    ``set_grad_checkpointing(enable, every=k, policy=...)``, both per block of the flat ``blocks`` sequence.
    """

    supports_growth = False  # see the module docstring
    supports_routing = False
    supports_prefix_cache = True  # forward runs through run_blocks, which takes a cached frozen prefix's output

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (1, 1, 3, 1),
        num_heads: int | Sequence[int] = (2, 4, 8, 16),
        depth: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_type: str = "dense",
        attn_args: dict | None = None,
        stem: str = "patch",
        routing: dict | None = None,
        weight_init: str = "",
    ):
        """Build the model.

        Args:
            img_size: Input resolution (square; a square (h, w) pair, as timm's builder passes, is stored as int).
            patch_size: Patch size of the stem (must divide ``img_size``).
            in_chans: Input channels.
            num_classes: Classes of the linear head; 0 for no head (pooled features).
            global_pool: 'avg' (mean of the last stage's tokens), the only pooling: there is no class token.
            embed_dims: Width of each stage.
            depths: Blocks in each stage (the first block of every stage after the first merges 2x2 tokens).
            num_heads: Attention heads per stage (an int: the same in every stage).
            depth: Total number of blocks; optional, must equal ``sum(depths)`` (recorded in ``model_args`` because
                the zoo's tools read ``model_args["depth"]`` as the block count).
            mlp_ratio: MLP hidden width as a multiple of the stage width.
            qkv_bias: Bias on the qkv projections.
            init_values: LayerScale init (None: no LayerScale).
            drop_rate: Dropout after the position embedding and before the head.
            proj_drop_rate: Dropout after the attention projection and in the MLP.
            attn_drop_rate: Attention-probability dropout.
            drop_path_rate: Stochastic depth, increasing linearly over all blocks of all stages.
            attn_type: Attention of every block (``zoo.nn.attention``); grid-aware variants see their stage's grid.
            attn_args: Options of ``attn_type`` (defaults filled in and recorded).
            stem: 'patch' (timm's PatchEmbed) or 'conv' (``zoo.nn.stems.ConvStem``).
            routing: Must be None: token routing is not supported by this family (ValueError otherwise).
            weight_init: '' for timm's default ViT init, 'skip' to leave modules' own init.
        """
        super().__init__()
        if routing is not None:
            raise ValueError(
                "zoo_msvit models do not support token routing (a routed block works on a top-k subset of tokens, "
                "patch merging needs the full 2x2 neighbourhoods); use a zoo_vit model for routing"
            )
        if global_pool != "avg":
            raise ValueError(f"global_pool must be 'avg' (ZooMSViT has no class token), got {global_pool!r}")
        if isinstance(img_size, (tuple, list)):  # timm's builder passes a fixed input size as a pair
            if len(img_size) != 2 or img_size[0] != img_size[1]:
                raise ValueError(f"img_size must be an int or a square (h, w) pair, got {img_size!r}")
            img_size = int(img_size[0])
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if isinstance(depths, int) or len(depths) < 1:
            raise ValueError(f"depths must list the blocks of each stage (at least one stage), got {depths!r}")
        num_stages = len(depths)
        depths = _per_stage("depths", depths, num_stages)
        embed_dims = _per_stage("embed_dims", embed_dims, num_stages)
        num_heads = _per_stage("num_heads", num_heads, num_stages)
        if depth is not None and depth != sum(depths):
            raise ValueError(
                f"depth {depth} != sum(depths) {sum(depths)} (depths {depths}): set the blocks per stage with depths"
            )
        attn_args = resolve_attn_args(attn_type, attn_args) or None
        self.model_args: dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, global_pool=global_pool,
            embed_dims=embed_dims, depths=depths, num_heads=num_heads, depth=sum(depths), mlp_ratio=float(mlp_ratio),
            qkv_bias=qkv_bias, init_values=init_values, drop_rate=drop_rate, proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, attn_type=attn_type, attn_args=attn_args,
            stem=stem,
        )  # fmt: skip
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = embed_dims
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False
        self.checkpoint_every = 1
        self.checkpoint_policy = "full"
        self.no_grad_prefix = -1
        self.prefix_input = False  # True while forward takes a cached frozen prefix output (zoo.training.prefix_cache)

        self.patch_embed = make_stem(stem, img_size, patch_size, in_chans, embed_dims[0])
        self.grid_sizes = stage_grid_sizes(self.patch_embed.grid_size, num_stages)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dims[0]))
        self.pos_drop = nn.Dropout(drop_rate)
        # block i belongs to stage stage_of[i]; stage s ends at block stage_ends[s]
        self.stage_of = [s for s, d in enumerate(depths) for _ in range(d)]
        self.stage_ends = [sum(depths[: s + 1]) - 1 for s in range(num_stages)]
        self.blocks = nn.Sequential(*[self.make_block(i) for i in range(sum(depths))])
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = self.make_feature_info()
        if weight_init != "skip":
            self.init_weights()

    # ----------------------------------------------------------------------------------------------- construction
    def make_block(self, index: int) -> Block:
        """Block ``index`` of the flat sequence: a ``MergeBlock`` if it starts a stage after the first."""
        a = self.model_args
        s = self.stage_of[index]
        kw = dict(
            dim=a["embed_dims"][s], num_heads=a["num_heads"][s], mlp_ratio=a["mlp_ratio"], qkv_bias=a["qkv_bias"],
            init_values=a["init_values"], proj_drop=a["proj_drop_rate"], attn_drop=a["attn_drop_rate"],
            drop_path=drop_path_rates(a["drop_path_rate"], a["depth"])[index], attn_type=a["attn_type"],
            attn_args=a["attn_args"], grid_size=self.grid_sizes[s], num_prefix_tokens=0,
        )  # fmt: skip
        if s > 0 and index == self.stage_ends[s - 1] + 1:
            return MergeBlock(in_dim=a["embed_dims"][s - 1], in_grid_size=self.grid_sizes[s - 1], **kw)
        return Block(**kw)

    def make_feature_info(self) -> list[dict]:
        """One entry per stage (its last block), reduction ``patch_size * 2**s``."""
        p = self.patch_embed.patch_size[0]
        return [
            dict(module=f"blocks.{end}", num_chs=self.embed_dims[s], reduction=p * 2**s)
            for s, end in enumerate(self.stage_ends)
        ]

    def init_weights(self) -> None:
        """timm's default ('') ViT init: trunc-normal(0.02) linears and position embedding, zero biases."""
        trunc_normal_(self.pos_embed, std=0.02)
        init_linears(self)

    def train(self, mode: bool = True) -> ZooMSViT:
        """Frozen leading blocks stay in eval mode, as in ``ZooViT``: a frozen prefix is a fixed feature extractor."""
        super().train(mode)
        if mode:
            keep_frozen_prefix_eval(self)
        return self

    # ------------------------------------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """As ``ZooViT``'s: stem, one group per block (a merge is part of its block; the final norm joins the last
        block via timm's ``(99999,)``), and the head, left unmatched, as the top group."""
        return dict(stem=r"^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # the same per-block checkpointing as ZooViT (flags + every-k-th block + full/selective policy)
    set_grad_checkpointing = ZooViT.set_grad_checkpointing
    _run_block = ZooViT._run_block

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New (re-initialised) head for ``num_classes`` (0: none); ``global_pool`` may only be 'avg'."""
        if global_pool is not None and global_pool != "avg":
            raise ValueError(f"global_pool must be 'avg' (ZooMSViT has no class token), got {global_pool!r}")
        self.num_classes = num_classes
        self.head = new_head(self.num_features, num_classes)

    # ---------------------------------------------------------------------------------------------------- forward
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x) + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of the last stage after the final norm: B, H_last * W_last, embed_dims[-1]."""
        return self.norm(run_blocks(self, x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        **_: Any,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature-extraction API over STAGES (as ``feature_info``): the output of each chosen stage's last
        block (all stages if ``indices`` is None, the last n if an int), NCHW on the stage's grid or NLC.

        ``norm`` applies the final norm to the last stage's output only (the other stages have other widths).
        ``stop_early`` skips the stages after the last chosen one when ``intermediates_only``; otherwise every block
        runs, so the returned final tokens are always ``forward_features``'.
        """
        n = len(self.stage_ends)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i if i >= 0 else n + i for i in indices]
        if any(not 0 <= i < n for i in take):
            raise ValueError(f"stage indices {indices} out of range for {n} stages")
        last = self.stage_ends[max(take)] if (stop_early and intermediates_only) else len(self.blocks) - 1
        x = self.stem(x)
        feats = []
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = blk(x)
            s = self.stage_of[i]
            if i == self.stage_ends[s] and s in take:
                y = self.norm(x) if norm and s == n - 1 else x
                if output_fmt == "NCHW":
                    H, W = self.grid_sizes[s]
                    y = y.reshape(y.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous()
                feats.append(y)
        if intermediates_only:
            return feats
        return self.norm(x), feats

    # ------------------------------------------------------------------------------------------ unsupported / size
    def set_routing(self, routing: dict | None) -> None:
        """Not supported: raises NotImplementedError (``routing=None`` is accepted: the model is already dense)."""
        if routing is None:
            return
        raise NotImplementedError(
            "ZooMSViT does not support token routing (patch merging needs every token of its 2x2 neighbourhoods); "
            "use a zoo_vit model for routing"
        )

    def set_input_size(self, img_size: int) -> None:
        """Change the input resolution: position embedding resampled (bicubic, timm's ``resample_abs_pos_embed``),
        every stage's grid recomputed (merges and grid-aware attention follow). Low-rank attention raises
        ValueError for a different token count, before anything changes."""
        if isinstance(img_size, (tuple, list)):
            if len(img_size) != 2 or img_size[0] != img_size[1]:
                raise ValueError(f"img_size must be an int or a square (h, w) pair, got {img_size!r}")
            img_size = int(img_size[0])
        p = self.patch_embed.patch_size[0]
        if img_size % p:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {p}")
        old_grid = tuple(self.patch_embed.grid_size)
        grids = stage_grid_sizes(tuple(s // p for s in to_2tuple(img_size)), len(self.stage_ends))
        for i, blk in enumerate(self.blocks):
            blk.attn.check_grid_size(grids[self.stage_of[i]])
        self.patch_embed.set_input_size(img_size=img_size)
        self.grid_sizes = grids
        for i, blk in enumerate(self.blocks):
            s = self.stage_of[i]
            blk.attn.set_grid_size(grids[s])
            if isinstance(blk, MergeBlock):
                blk.downsample.grid_size = grids[s - 1]
        if grids[0] != old_grid:
            with torch.no_grad():
                pe = resample_abs_pos_embed(
                    self.pos_embed.data, new_size=grids[0], old_size=old_grid, num_prefix_tokens=0, verbose=False
                )
            requires_grad = self.pos_embed.requires_grad
            self.pos_embed = nn.Parameter(pe, requires_grad=requires_grad)
        self.model_args["img_size"] = img_size
        if getattr(self, "pretrained_cfg", None):
            c = self.pretrained_cfg.get("input_size", (self.model_args["in_chans"], img_size, img_size))
            self.pretrained_cfg = {**self.pretrained_cfg, "input_size": (c[0], img_size, img_size)}


# ------------------------------------------------------------------------------------------------------ registry
def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ZooMSViT:
    # features through forward_intermediates ('getter'), one per stage; an int out_indices means "the last n": all
    num_stages = len(kwargs.get("depths", ()))
    return build_model_with_cfg(
        ZooMSViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,  # position-embedding resampling (router filling never applies)
        feature_cfg=dict(out_indices=num_stages, feature_cls="getter"),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        "zoo_msvit_micro_p2": fmnist_cfg(),
        "zoo_msvit_tiny_p4": vit_cfg(),
    }
)


@register_model
def zoo_msvit_micro_p2(pretrained: bool = False, **kwargs: Any) -> ZooMSViT:
    """28x28 grey images: patch 2 -> 14x14 tokens at width 64 (2 blocks, 2 heads), one 2x2 merge -> 7x7 at width
    128 (4 blocks, 4 heads); MLP ratio 2 (as zoo_vit_micro_p7), mean pool."""
    model_args = dict(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dims=[64, 128], depths=[2, 4],
                      num_heads=[2, 4], mlp_ratio=2.0)  # fmt: skip
    return _create("zoo_msvit_micro_p2", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_msvit_tiny_p4(pretrained: bool = False, **kwargs: Any) -> ZooMSViT:
    """224 px: patch 4 -> 56x56 -> 28x28 -> 14x14 -> 7x7 tokens at widths 64/128/256/512 (Swin-T's widths and
    resolutions, head width 32), depths 1/1/3/1 (small), MLP ratio 4, global attention in every stage."""
    model_args = dict(patch_size=4, embed_dims=[64, 128, 256, 512], depths=[1, 1, 3, 1], num_heads=[2, 4, 8, 16])
    return _create("zoo_msvit_tiny_p4", pretrained=pretrained, **dict(model_args, **kwargs))
