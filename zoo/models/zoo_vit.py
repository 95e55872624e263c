"""ZooViT: a timm Vision Transformer whose blocks can be routed, grown, frozen and checkpointed.

State dicts are interchangeable with timm's ``VisionTransformer`` of the same shape (class token, absolute position
embedding over prefix + patch tokens, pre-norm blocks, final norm, linear head). Everything that defines the
architecture is a JSON-safe keyword argument and is kept, current, in ``model.model_args``: growth and routing
conversions update it, and export writes it to ``config.json``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import PatchDropout, build_sincos2d_pos_embed, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.models.common import fmnist_cfg, init_linears, keep_frozen_prefix_eval, run_blocks, vit_cfg
from zoo.models.pretrained import published_cfg
from zoo.nn.activation_checkpointing import checkpoint_context_fn
from zoo.nn.attention import check_routing, resolve_attn_args
from zoo.nn.block import Block
from zoo.nn.merging import MergingBlock, TokenSizes, resolve_merge_plan
from zoo.nn.routing import RoutedBlock, resolve_route_plan
from zoo.nn.stems import default_stem_width, make_stem

POS_EMBED_INITS = ("normal", "sincos")


def check_global_pool(global_pool: str, class_token: bool) -> None:
    if global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
    if global_pool == "token" and not class_token:
        raise ValueError("global_pool='token' needs class_token=True")


def new_head(embed_dim: int, num_classes: int) -> nn.Module:
    """A fresh classifier (timm init: trunc-normal 0.02, zero bias), or Identity for ``num_classes == 0``."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(embed_dim, num_classes)
    trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def add_prefix_tokens(x: torch.Tensor, cls_token: torch.Tensor | None, reg_token: torch.Tensor | None) -> torch.Tensor:
    """[cls; registers; patches]: the token order timm's ViT (and its position embedding) uses."""
    prefix = [t.expand(x.shape[0], -1, -1) for t in (cls_token, reg_token) if t is not None]
    return torch.cat(prefix + [x], dim=1) if prefix else x


def pool_tokens(
    x: torch.Tensor, global_pool: str, num_prefix_tokens: int, size: torch.Tensor | None = None
) -> torch.Tensor:
    """The class token, or the mean of the patch tokens; merged tokens (``size``: patches per token, ToMe) weigh as
    the patches they stand for."""
    if global_pool != "avg":
        return x[:, 0]
    patches = x[:, num_prefix_tokens:]
    if size is None:
        return patches.mean(dim=1)
    size = size[:, num_prefix_tokens:]
    return (patches * size).sum(dim=1) / size.sum(dim=1)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic depth, as timm does; recomputed whenever depth changes."""
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


def check_attention_routing(attn_type: str, depth: int, routing: dict | None) -> None:
    """Raise ValueError if ``routing`` would put ``attn_type`` attention into a routed block that cannot run it."""
    routed = any(c is not None for c in resolve_route_plan(depth, routing))
    check_routing(attn_type, routed, (routing or {}).get("context", "selected"))


def check_merging(attn_type: str, depth: int, routing: dict | None, merging: dict | None) -> None:
    """Raise ValueError for a merging spec this model cannot run: a bad spec, routing beside it (both decide which
    tokens a block sees), or an attention variant other than dense (merged tokens leave the patch grid)."""
    resolve_merge_plan(depth, merging)  # validates the spec
    if not merging:
        return
    if any(c is not None for c in resolve_route_plan(depth, routing)):
        raise ValueError("merging and routing cannot be combined: set one of them")
    if attn_type != "dense":
        raise ValueError(f"merging needs dense attention (merged tokens leave the patch grid), got {attn_type!r}")


class ZooViT(nn.Module):
    """Vision Transformer with timm's interface and the zoo's efficiency hooks.

    Hooks (all set from outside, none threaded through ``forward`` as flags):
      - ``routing``: which blocks are ``RoutedBlock`` and at what capacity (see ``zoo.nn.routing``).
      - ``no_grad_prefix``: number of leading blocks (after the stem) that run without building an autograd graph,
        set by ``zoo.training.freezing`` when they are frozen; -1 means the stem also builds a graph.
      - ``set_grad_checkpointing(enable, every=k, policy=...)``: activation checkpointing per block.
      - ``merging``: token merging (ToMe) per block, training-free (``set_merging``; see ``zoo.nn.merging``).
      - ``patch_drop_rate``: random patch-token dropping in training (timm's ``PatchDropout``).

    ``attn_type`` ("dense", "window", "spatial_reduction", "lowrank", "shared_qk", "lsa") and ``attn_args`` (its
    options, e.g. ``{"window_size": 4}``) select every block's attention; see ``zoo.nn.attention``. ``stem``
    ("patch", "conv", "early", "spt") selects the tokenizer; see ``zoo.nn.stems``.
    """

    supports_growth = True  # zoo.growth.operators operators apply (single residual width, plain block list)
    supports_routing = True  # set_routing converts blocks to RoutedBlock and back
    supports_merging = True  # set_merging converts blocks to MergingBlock and back
    supports_prefix_cache = True  # forward runs through run_blocks, which takes a cached frozen prefix's output

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        mlp_hidden: int | None = None,
        qkv_bias: bool = True,
        class_token: bool = True,
        reg_tokens: int = 0,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_drop_rate: float = 0.0,
        routing: dict | None = None,
        merging: dict | None = None,
        attn_type: str = "dense",
        attn_args: dict | None = None,
        stem: str = "patch",
        stem_width: int | None = None,
        pos_embed_init: str = "normal",
        weight_init: str = "",
    ):
        super().__init__()
        check_global_pool(global_pool, class_token)
        if pos_embed_init not in POS_EMBED_INITS:
            raise ValueError(f"pos_embed_init must be one of {POS_EMBED_INITS}, got {pos_embed_init!r}")
        if isinstance(img_size, (tuple, list)):  # timm's builder passes a fixed input size as a pair
            if len(img_size) != 2 or img_size[0] != img_size[1]:
                raise ValueError(f"img_size must be square, got {img_size}")
            img_size = int(img_size[0])
        # defaults filled in, so a saved config.json does not depend on the option defaults of this version
        attn_args = resolve_attn_args(attn_type, attn_args) or None
        check_attention_routing(attn_type, depth, routing)
        check_merging(attn_type, depth, routing, merging)
        self.model_args: dict[str, Any] = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            head_dim=head_dim,
            mlp_ratio=mlp_ratio,
            mlp_hidden=mlp_hidden,
            qkv_bias=qkv_bias,
            class_token=class_token,
            reg_tokens=reg_tokens,
            init_values=init_values,
            drop_rate=drop_rate,
            proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            patch_drop_rate=patch_drop_rate,
            routing=routing,
            merging=merging,
            attn_type=attn_type,
            attn_args=attn_args,
            stem=stem,
            # resolved, so a saved config.json rebuilds the same stem whatever embed_dim has grown to since
            stem_width=(stem_width or default_stem_width(stem, embed_dim)) if stem == "early" else None,
            pos_embed_init=pos_embed_init,
        )
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.grad_checkpointing = False
        self.checkpoint_every = 1
        self.checkpoint_policy = "full"
        self.no_grad_prefix = -1
        self.prefix_input = False  # True while forward takes a cached frozen prefix output (zoo.training.prefix_cache)

        self.patch_embed = make_stem(stem, img_size, patch_size, in_chans, embed_dim, self.model_args["stem_width"])
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.token_sizes = TokenSizes()  # patches per token, shared by the merging blocks (zoo.nn.merging)
        # random token dropping during training (timm's PatchDropout: prefix tokens kept, a fixed share of patch
        # tokens dropped per image; identity in eval mode)
        self.patch_drop = (
            PatchDropout(patch_drop_rate, num_prefix_tokens=self.num_prefix_tokens)
            if patch_drop_rate > 0
            else nn.Identity()
        )
        routes = resolve_route_plan(depth, routing)
        self.blocks = nn.Sequential(*[self.make_block(i, c) for i, c in enumerate(routes)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = self.make_feature_info()
        if weight_init != "skip":
            self.init_weights()

    # ----------------------------------------------------------------------------------------------- construction
    def make_block(self, index: int, capacity: float | None) -> Block:
        """Build block ``index`` from the current ``model_args`` (used at construction and by growth/routing)."""
        a = self.model_args
        dpr = drop_path_rates(a["drop_path_rate"], a["depth"])[index] if index < a["depth"] else 0.0
        kw = dict(
            dim=a["embed_dim"],
            num_heads=a["num_heads"],
            head_dim=a["head_dim"],
            mlp_ratio=a["mlp_ratio"],
            mlp_hidden=a["mlp_hidden"],
            qkv_bias=a["qkv_bias"],
            init_values=a["init_values"],
            proj_drop=a["proj_drop_rate"],
            attn_drop=a["attn_drop_rate"],
            drop_path=dpr,
            attn_type=a.get("attn_type", "dense"),
            attn_args=a.get("attn_args"),
            grid_size=tuple(self.patch_embed.grid_size),
        )
        if a.get("merging"):
            r = resolve_merge_plan(a["depth"], a["merging"])[index] if index < a["depth"] else 0
            return MergingBlock(**kw, r=r, sizes=self.token_sizes, num_prefix_tokens=self.num_prefix_tokens)
        if capacity is None:
            return Block(**kw, num_prefix_tokens=self.num_prefix_tokens)
        r = a["routing"] or {}
        # RoutedBlock keeps num_prefix_tokens for itself; its attention is token-agnostic (check_attention_routing)
        return RoutedBlock(
            **kw,
            capacity=capacity,
            router=r.get("router", "linear"),
            context=r.get("context", "selected"),
            num_prefix_tokens=self.num_prefix_tokens,
            weight=r.get("weight", "sigmoid"),
            weight_scale=r.get("weight_scale", 0.5),
        )

    def make_feature_info(self) -> list[dict]:
        r = self.patch_embed.patch_size[0]
        return [dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=r) for i in range(len(self.blocks))]

    def init_weights(self) -> None:
        """timm's default ('') ViT init: trunc-normal(0.02) linears and position embedding, tiny class token. With
        ``pos_embed_init="sincos"`` the (still learned) position embedding of the patch tokens starts as the 2D
        sin-cos embedding of the grid ("Better plain ViT baselines", Beyer et al. 2022, use it fixed), prefix
        tokens at zero."""
        trunc_normal_(self.pos_embed, std=0.02)
        if self.model_args.get("pos_embed_init") == "sincos":
            grid = list(self.patch_embed.grid_size)
            with torch.no_grad():
                self.pos_embed.zero_()
                self.pos_embed[0, self.num_prefix_tokens :] = build_sincos2d_pos_embed(grid, dim=self.embed_dim)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        init_linears(self, skip_suffix="router")  # routers start at zero: exact dense -> routed conversion

    def train(self, mode: bool = True) -> ZooViT:
        """Frozen leading blocks stay in eval mode (no dropout / drop-path): a frozen prefix is a fixed feature
        extractor, so its output does not change from step to step while only the top trains."""
        super().train(mode)
        if mode:
            keep_frozen_prefix_eval(self)
        return self

    # ------------------------------------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "reg_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^cls_token|^reg_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, every: int = 1, policy: str = "full") -> None:
        """Checkpoint every ``every``-th block; ``policy`` 'full' recomputes everything, 'selective' keeps matmuls."""
        if policy not in ("full", "selective"):
            raise ValueError(f"checkpoint policy must be 'full' or 'selective', got {policy!r}")
        if every < 1:
            raise ValueError(f"checkpoint every must be >= 1, got {every}")
        self.grad_checkpointing = enable
        self.checkpoint_every = every
        self.checkpoint_policy = policy

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            check_global_pool(global_pool, self.cls_token is not None)
            self.global_pool = self.model_args["global_pool"] = global_pool
        self.head = new_head(self.embed_dim, num_classes)

    # ---------------------------------------------------------------------------------------------------- forward
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(add_prefix_tokens(x, self.cls_token, self.reg_token) + self.pos_embed)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        self.token_sizes.reset()  # every token is one patch until a merging block merges
        return self.patch_drop(self._pos_embed(self.patch_embed(x)))

    def _run_block(self, i: int, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and i % self.checkpoint_every == 0:
            return checkpoint(blk, x, use_reentrant=False, context_fn=checkpoint_context_fn(self.checkpoint_policy))
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(run_blocks(self, x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(pool_tokens(x, self.global_pool, self.num_prefix_tokens, self.token_sizes.size))
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
    ):
        """timm's feature-extraction API: outputs of the chosen blocks (last n if ``indices`` is an int)."""
        n = len(self.blocks)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i if i >= 0 else n + i for i in indices]
        H, W = self.patch_embed.grid_size
        x = self.stem(x)
        feats = []
        last = max(take) if stop_early else n - 1
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = blk(x)
            if i in take:
                y = self.norm(x) if norm else x
                y = y[:, self.num_prefix_tokens :]
                if output_fmt == "NCHW":
                    y = y.reshape(y.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous()
                feats.append(y)
        if intermediates_only:
            return feats
        return self.norm(x), feats

    # ------------------------------------------------------------------------------------------------ conversion
    def set_routing(self, routing: dict | None) -> None:
        """Make blocks routed / dense per ``routing`` (see ``zoo.nn.routing.resolve_route_plan``), keeping weights.

        Router weights start at zero (gate 1), so at capacity 1.0 the converted model computes the same function.
        Below 1.0 the skipped tokens change the function (a published dense model loses most of its accuracy at 0.25
        until it is fine-tuned with the routing). ``None`` makes every block dense again, dropping the routers.
        """
        plan = resolve_route_plan(len(self.blocks), routing)
        check_attention_routing(self.model_args.get("attn_type", "dense"), len(self.blocks), routing)
        self.model_args["routing"] = routing
        for i, cap in enumerate(plan):
            old = self.blocks[i]
            new = self.make_block(i, cap)
            # dense -> routed: the new router starts at zero (missing); routed -> dense: the router is dropped
            missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
            if any(".router." not in f".{k}" for k in (*missing, *unexpected)):
                raise RuntimeError(f"block {i}: cannot carry weights over: missing {missing}, unexpected {unexpected}")
            self.blocks[i] = new.to(device=old.norm1.weight.device, dtype=old.norm1.weight.dtype)
            self.blocks[i].train(old.training)

    def set_merging(self, merging: dict | None) -> None:
        """Token merging (ToMe) per ``merging`` (``{"r": tokens per block, "layers": "all" | [indices]}``, see
        ``zoo.nn.merging``), keeping weights: training-free, and exact at ``r = 0``. ``None`` makes blocks dense."""
        check_merging(self.model_args.get("attn_type", "dense"), len(self.blocks), self.model_args["routing"], merging)
        self.model_args["merging"] = merging
        for i in range(len(self.blocks)):
            old = self.blocks[i]
            new = self.make_block(i, None)
            new.load_state_dict(old.state_dict())
            self.blocks[i] = new.to(device=old.norm1.weight.device, dtype=old.norm1.weight.dtype)
            self.blocks[i].train(old.training)

    # ---------------------------------------------------------------------------------------------- input size
    def set_input_size(self, img_size: int) -> None:
        """Change the input resolution, resampling the position embedding (used by resolution growth).

        Grid-aware attention (window, spatial reduction) follows the new patch grid; low-rank attention raises a
        ValueError for a different token count, before anything changes.
        """
        old_grid = self.patch_embed.grid_size
        target = tuple(s // p for s, p in zip(to_2tuple(img_size), self.patch_embed.patch_size))
        for blk in self.blocks:
            blk.attn.check_grid_size(target)
        self.patch_embed.set_input_size(img_size=img_size)
        new_grid = self.patch_embed.grid_size
        for blk in self.blocks:
            blk.attn.set_grid_size(new_grid)
        if new_grid != old_grid:
            with torch.no_grad():
                pe = resample_abs_pos_embed(
                    self.pos_embed.data,
                    new_size=new_grid,
                    old_size=old_grid,
                    num_prefix_tokens=self.num_prefix_tokens,
                    verbose=False,
                )
            self.pos_embed = nn.Parameter(pe)
        self.model_args["img_size"] = img_size
        if getattr(self, "pretrained_cfg", None):
            c = self.pretrained_cfg.get("input_size", (self.model_args["in_chans"], img_size, img_size))
            self.pretrained_cfg = {**self.pretrained_cfg, "input_size": (c[0], img_size, img_size)}


def checkpoint_filter_fn(state_dict: dict, model: ZooViT) -> dict:
    """Adapt a timm / zoo ViT state dict to ``model``: resample the position embedding if the grid differs and fill
    router weights a dense checkpoint does not have with the model's own (zero-initialised) ones."""
    state_dict = dict(state_dict.get("state_dict", state_dict))
    own = model.state_dict()
    pe = state_dict.get("pos_embed")
    if pe is not None and pe.shape != own["pos_embed"].shape:
        old = int(math.isqrt(pe.shape[1] - model.num_prefix_tokens))
        state_dict["pos_embed"] = resample_abs_pos_embed(
            pe,
            new_size=model.patch_embed.grid_size,
            old_size=(old, old),
            num_prefix_tokens=model.num_prefix_tokens,
            verbose=False,
        )
    for k, v in own.items():
        if ".router." in k and k not in state_dict:
            state_dict[k] = v
    return state_dict


def _create(variant: str, pretrained: bool = False, **kwargs) -> ZooViT:
    return build_model_with_cfg(
        ZooViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        # timm's own ImageNet weights of the same shape (its default tag of vit_*_patch16_224): with network,
        # timm.create_model("zoo_vit_small_p16", pretrained=True) downloads them into the zoo model
        # (checkpoint_filter_fn maps the names; outputs equal timm's model)
        "zoo_vit_tiny_p16.augreg_in21k_ft_in1k": vit_cfg(hf_hub_id="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
        "zoo_vit_small_p16.augreg_in21k_ft_in1k": vit_cfg(hf_hub_id="timm/vit_small_patch16_224.augreg_in21k_ft_in1k"),
        "zoo_vit_base_p16.augreg2_in21k_ft_in1k": vit_cfg(hf_hub_id="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
        "zoo_vit_micro_p7.fmnist": published_cfg("zoo_vit_micro_p7.fmnist", fmnist_cfg()),
        "zoo_vit_micro_p7": fmnist_cfg(),
        "zoo_vit_micro_p7_r25.fmnist": published_cfg("zoo_vit_micro_p7_r25.fmnist", fmnist_cfg()),
        "zoo_vit_micro_p7.fmnist_grown": published_cfg("zoo_vit_micro_p7.fmnist_grown", fmnist_cfg()),
        "zoo_vit_micro_p7_r25.fmnist_grown": published_cfg("zoo_vit_micro_p7_r25.fmnist_grown", fmnist_cfg()),
        "zoo_vit_micro_p4": fmnist_cfg(),
        "zoo_vit_micro_conv_p4.fmnist": published_cfg(
            "zoo_vit_micro_conv_p4.fmnist", fmnist_cfg(first_conv="patch_embed.conv.0")
        ),
        "zoo_vit_micro_conv_p4": fmnist_cfg(first_conv="patch_embed.conv.0"),
        # the published baseline grown to 8 blocks while fine-tuning (card: base_model, the growth it went through)
        "zoo_vit_micro_conv_p4_d8.fmnist_grown": published_cfg(
            "zoo_vit_micro_conv_p4_d8.fmnist_grown", fmnist_cfg(first_conv="patch_embed.conv.0")
        ),
        "zoo_vit_micro_conv_p4_d8": fmnist_cfg(first_conv="patch_embed.conv.0"),
        "zoo_vit_micro_conv16_p4.fmnist": published_cfg(
            "zoo_vit_micro_conv16_p4.fmnist", fmnist_cfg(first_conv="patch_embed.conv.0")
        ),
        "zoo_vit_micro_conv16_p4": fmnist_cfg(first_conv="patch_embed.conv.0"),
        "zoo_vit_micro_conv16_p4_d8": fmnist_cfg(first_conv="patch_embed.conv.0"),
        # the published lighter-stem baseline converted to routed blocks and distilled from it (card: base_model)
        "zoo_vit_micro_conv16_p4_r20.fmnist_routed": published_cfg(
            "zoo_vit_micro_conv16_p4_r20.fmnist_routed", fmnist_cfg(first_conv="patch_embed.conv.0")
        ),
        "zoo_vit_micro_conv16_p4_r20": fmnist_cfg(first_conv="patch_embed.conv.0"),
        "zoo_vit_mini_p4": fmnist_cfg(),
    }
)


@register_model
def zoo_vit_tiny_p16(pretrained: bool = False, **kwargs) -> ZooViT:
    """ViT-Ti/16 at 224 px, the shape of timm's vit_tiny_patch16_224."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("zoo_vit_tiny_p16", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_small_p16(pretrained: bool = False, **kwargs) -> ZooViT:
    """ViT-S/16 at 224 px, the shape of timm's vit_small_patch16_224."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("zoo_vit_small_p16", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_base_p16(pretrained: bool = False, **kwargs) -> ZooViT:
    """ViT-B/16 at 224 px, the shape of timm's vit_base_patch16_224."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("zoo_vit_base_p16", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_p7(pretrained: bool = False, **kwargs) -> ZooViT:
    """The fastest CPU model for 28x28 grey images: patch 7 (16 tokens), width 128, 6 blocks, MLP ratio 2, mean pool."""
    model_args = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4,
                      mlp_ratio=2.0, global_pool="avg")  # fmt: skip
    return _create("zoo_vit_micro_p7", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_p7_r25(pretrained: bool = False, **kwargs) -> ZooViT:
    """zoo_vit_micro_p7 with every other block token-routed at capacity 0.25 (learned linear router)."""
    model_args = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4,
                      mlp_ratio=2.0, global_pool="avg", routing={"capacity": 0.25, "layers": "every_other",
                      "router": "linear", "context": "selected"})  # fmt: skip
    return _create("zoo_vit_micro_p7_r25", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_p4(pretrained: bool = False, **kwargs) -> ZooViT:
    """CPU-sized ViT for 28x28 grey images: patch 4 (49 tokens), width 96, 6 blocks."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=3)
    return _create("zoo_vit_micro_p4", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_conv_p4(pretrained: bool = False, **kwargs) -> ZooViT:
    """The zoo's dense baseline for 28x28 grey images: an early-convolution stem (3x3 convs 32 -> 64 -> 128 channels,
    two of stride 2) to a 7x7 grid (49 tokens), width 64, 4 blocks, MLP ratio 2, mean pool. On 2 CPU cores the
    convolutions make it learn at a CNN's pace (CHANGELOG: the baseline levers)."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=2,
                      mlp_ratio=2.0, global_pool="avg", stem="early", stem_width=32)  # fmt: skip
    return _create("zoo_vit_micro_conv_p4", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_conv_p4_d8(pretrained: bool = False, **kwargs) -> ZooViT:
    """``zoo_vit_micro_conv_p4`` at twice the depth (8 blocks): what growing the published baseline makes
    (``schedules/fmnist_baseline_grown.yaml``) and its from-scratch reference (``fmnist_baseline_d8``)."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=8, num_heads=2,
                      mlp_ratio=2.0, global_pool="avg", stem="early", stem_width=32)  # fmt: skip
    return _create("zoo_vit_micro_conv_p4_d8", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_conv16_p4(pretrained: bool = False, **kwargs) -> ZooViT:
    """``zoo_vit_micro_conv_p4`` with half the stem width (3x3 convs 16 -> 32 -> 64 channels): 37% fewer FLOPs, so
    the four blocks carry 79% of the compute instead of half, which is what token routing and merging can cut
    (CHANGELOG: the conversion suite). 1.47x the training throughput of the wider stem on 2 CPU cores."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=2,
                      mlp_ratio=2.0, global_pool="avg", stem="early", stem_width=16)  # fmt: skip
    return _create("zoo_vit_micro_conv16_p4", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_conv16_p4_d8(pretrained: bool = False, **kwargs) -> ZooViT:
    """``zoo_vit_micro_conv16_p4`` at twice the depth (8 blocks): what growing the published lighter-stem baseline
    makes (``schedules/fmnist_conv16_grown.yaml``, the demo's better model) and its from-scratch reference
    (``fmnist_conv16_d8``)."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=8, num_heads=2,
                      mlp_ratio=2.0, global_pool="avg", stem="early", stem_width=16)  # fmt: skip
    return _create("zoo_vit_micro_conv16_p4_d8", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_micro_conv16_p4_r20(pretrained: bool = False, **kwargs) -> ZooViT:
    """``zoo_vit_micro_conv16_p4`` with blocks 1-3 routed at capacity 0.2 (10 of 49 patch tokens), chosen by the class
    token's attention in the block before (no router weights): what converting the published lighter-stem baseline
    makes (``schedules/fmnist_baseline_to_routed.yaml``, the demo's faster model)."""
    routing = {"capacity": 0.2, "layers": [1, 2, 3], "router": "cls_attn", "context": "selected"}
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=2,
                      mlp_ratio=2.0, global_pool="avg", stem="early", stem_width=16, routing=routing)  # fmt: skip
    return _create("zoo_vit_micro_conv16_p4_r20", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vit_mini_p4(pretrained: bool = False, **kwargs) -> ZooViT:
    """CPU-sized ViT for 28x28 grey images: patch 4 (49 tokens), width 192, 12 blocks."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=12, num_heads=3)
    return _create("zoo_vit_mini_p4", pretrained=pretrained, **dict(model_args, **kwargs))
