"""ZooRevViT: a reversible Vision Transformer (RevViT, Mangalam et al., CVPR 2022) with timm's interface.

After the stem the token sequence is duplicated into two streams ``X1 = X2 = x``; every block is reversible::

    Y1 = X1 + F(X2)        F = norm1 -> attn -> ls1 -> drop path   (``Block.attn_branch``)
    Y2 = X2 + G(Y1)        G = norm2 -> mlp  -> ls2 -> drop path   (``Block.mlp_branch``)

and the two streams are averaged, ``(Y1 + Y2) / 2``, before the final norm and the head. Because a block's inputs
can be rebuilt from its outputs (``X2 = Y2 - G(Y1)``, ``X1 = Y1 - F(X2)``), training runs the whole stack through
``RevStackFunction``, which keeps only the stack's final outputs and, in backward, rebuilds and differentiates one
block at a time from the top: activation memory is that of one block whatever the depth, for the price of one extra
forward pass of the blocks in backward.

Parameter names inside a block are those of ``zoo.nn.block.Block`` (and so of timm's ViT block), and the stem, norm
and head are named as in ``ZooViT``: a ViT state dict of the same shape loads (the function differs, it is a
different architecture). Everything that defines the architecture is a JSON-safe keyword argument kept in
``model.model_args``, so ``zoo.hub.save_model_folder`` and ``timm.create_model("local-dir:...")`` round-trip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from timm.layers import DropPath, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from zoo.models.common import fmnist_cfg, init_linears, keep_frozen_prefix_eval, vit_cfg
from zoo.models.zoo_vit import (
    add_prefix_tokens,
    check_global_pool,
    checkpoint_filter_fn,
    drop_path_rates,
    new_head,
    pool_tokens,
)
from zoo.nn.block import Block

__all__ = ["RevBlock", "RevStackFunction", "ZooRevViT"]

# (cpu RNG state, accelerator RNG state or None), taken just before a branch runs in forward
RngState = tuple[torch.Tensor, torch.Tensor | None]


# ------------------------------------------------------------------------------------------------ RNG and autocast
def _get_rng_state(device: torch.device) -> RngState:
    """RNG state that a branch on ``device`` draws from: the CPU generator, plus the device's own if not CPU."""
    dev = None if device.type == "cpu" else torch.get_device_module(device.type).get_rng_state(device)
    return torch.get_rng_state(), dev


@contextlib.contextmanager
def _restored_rng(state: RngState | None, device: torch.device) -> Iterator[None]:
    """Run with the RNG as it was when ``state`` was taken; the caller's RNG stream is untouched afterwards.

    ``fork_rng`` restores the surrounding state on exit, so recomputation in backward does not shift the random
    numbers the next training step draws (that would make reversible and vanilla training diverge).
    """
    if state is None:  # deterministic branch (eval mode or no dropout): nothing to restore
        yield
        return
    cpu, dev = state
    if dev is None:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(cpu)
            yield
    else:
        with torch.random.fork_rng(devices=[device], device_type=device.type):
            torch.set_rng_state(cpu)
            torch.get_device_module(device.type).set_rng_state(dev, device)
            yield


def _autocast_state(device_type: str) -> list[tuple[str, bool, torch.dtype]]:
    """Autocast (device type, enabled, dtype) of forward, for the device of the tensors and for the CPU."""
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in dict.fromkeys((device_type, "cpu"))]


def _autocast(state: list[tuple[str, bool, torch.dtype]], cache_enabled: bool) -> contextlib.ExitStack:
    """Re-enter forward's autocast state: autograd does not do it for a custom Function's backward, and a
    recomputation in another precision would rebuild the inputs wrongly (``Y - F(X)`` with a different ``F``)."""
    stack = contextlib.ExitStack()
    for device_type, enabled, dtype in state:
        stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled))
    return stack


# ---------------------------------------------------------------------------------------------------------- block
class RevBlock(Block):
    """Reversible two-stream block built from ``Block``'s residual branches (same parameters, same names).

    ``f`` is the attention branch and ``g`` the MLP branch, each with its drop path, so the block is
    ``(x1, x2) -> (x1 + f(x2), x2 + g(x1 + f(x2)))``. Drop path stays per sample, as in a ViT block: a dropped
    sample has ``Y1 = X1``, which keeps the block invertible.
    """

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """Attention branch F (no residual)."""
        return self.drop_path1(self.attn_branch(x))

    def g(self, x: torch.Tensor) -> torch.Tensor:
        """MLP branch G (no residual)."""
        return self.drop_path2(self.mlp_branch(x))

    def f_parameters(self) -> list[nn.Parameter]:
        """Parameters F depends on."""
        return [p for m in (self.norm1, self.attn, self.ls1, self.drop_path1) for p in m.parameters()]

    def g_parameters(self) -> list[nn.Parameter]:
        """Parameters G depends on."""
        return [p for m in (self.norm2, self.mlp, self.ls2, self.drop_path2) for p in m.parameters()]

    @property
    def stochastic(self) -> bool:
        """True if a forward pass draws random numbers (so the backward recomputation must replay them)."""
        if not self.training:
            return False
        if self.attn.attn_drop > 0:  # SDPA's dropout_p is a float, not a module
            return True
        return any(
            (isinstance(m, nn.Dropout) and m.p > 0) or (isinstance(m, DropPath) and m.drop_prob > 0)
            for m in self.modules()
        )

    def forward(  # type: ignore[override]  (two streams in, two out)
        self, x1: torch.Tensor, x2: torch.Tensor, rng_states: list[RngState] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both streams one block up; appends the RNG state before F and before G to ``rng_states`` if given."""
        if rng_states is not None:
            rng_states.append(_get_rng_state(x2.device))
        y1 = x1 + self.f(x2)
        if rng_states is not None:
            rng_states.append(_get_rng_state(y1.device))
        y2 = x2 + self.g(y1)
        return y1, y2

    @torch.no_grad()
    def invert(self, y1: torch.Tensor, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's inputs from its outputs (deterministic branches only: eval mode or no dropout)."""
        x2 = y2 - self.g(y1)
        return y1 - self.f(x2), x2


# ------------------------------------------------------------------------------------------------ autograd function
class RevStackFunction(torch.autograd.Function):
    """Backward through a whole ``RevBlock`` stack in depth-independent memory: ``apply(x1, x2, blocks, *params)``.

    Forward runs the blocks without a graph and saves only the two output streams (plus, per stochastic branch, its
    RNG state and the forward's autocast state, which are not activations). Backward walks the blocks from the top;
    for each it rebuilds the inputs and the local graph from the outputs and returns the parameter gradients through
    autograd (passing the parameters as inputs), so gradient accumulation, hooks and ``torch.autograd.grad`` from
    outside behave as with ordinary autograd.
    """

    @staticmethod
    def forward(
        ctx: Any, x1: torch.Tensor, x2: torch.Tensor, blocks: Sequence[RevBlock], *params: nn.Parameter
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = x1.device
        rng: list[list[RngState] | None] = []
        for blk in blocks:
            states: list[RngState] | None = [] if blk.stochastic else None
            x1, x2 = blk(x1, x2, rng_states=states)  # a module call, so forward hooks (profiling) still fire
            rng.append(states)
        ctx.blocks = blocks
        ctx.params = params
        ctx.rng = rng
        ctx.device = device
        ctx.autocast = _autocast_state(device.type)
        ctx.autocast_cache = torch.is_autocast_cache_enabled()
        ctx.save_for_backward(x1, x2)  # the only activations kept, whatever the depth
        return x1, x2

    @staticmethod
    @torch.autograd.function.once_differentiable  # the rebuilt graphs are local: double backward would be wrong
    def backward(ctx: Any, dy1: torch.Tensor, dy2: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y1, y2 = ctx.saved_tensors
        grads: dict[int, torch.Tensor] = {}
        need_x1, need_x2 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.enable_grad(), _autocast(ctx.autocast, ctx.autocast_cache):
            for i in range(len(ctx.blocks) - 1, -1, -1):
                states = ctx.rng[i]
                rng_f, rng_g = (None, None) if states is None else states
                bottom = i == 0
                y1, y2, dy1, dy2 = _block_backward(
                    ctx.blocks[i], y1, y2, dy1, dy2, rng_f, rng_g, ctx.device, grads,
                    need_dx2=not bottom or need_x2, rebuild_x1=not bottom,
                )  # fmt: skip
        param_grads = tuple(grads.get(id(p)) for p in ctx.params)
        return (dy1 if need_x1 else None, dy2 if need_x2 else None, None, *param_grads)


def _grad(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    if not inputs:
        return ()
    # grad_out cast to the branch's dtype, as autograd's own add-backward does for a bf16 branch in an fp32 stream
    return torch.autograd.grad(out, inputs, grad_out.to(out.dtype), allow_unused=True)


def _non_leaf(t: torch.Tensor) -> torch.Tensor:
    """A free view of a grad-requiring leaf, so modules never receive the leaf itself.

    Module backward hooks (torch's ModuleTracker, used by ``FlopCounterMode`` and so by ``zoo.measure.flops``) put a
    multi-grad hook on module inputs, and torch refuses such a hook on a leaf during ``torch.autograd.grad``
    ("A leaf node was passed to _will_engine_execute_node ..."). Gradients still flow to the leaf.
    """
    return t.view_as(t)


def _block_backward(
    blk: RevBlock,
    y1: torch.Tensor,
    y2: torch.Tensor,
    dy1: torch.Tensor,
    dy2: torch.Tensor,
    rng_f: RngState | None,
    rng_g: RngState | None,
    device: torch.device,
    grads: dict[int, torch.Tensor],
    need_dx2: bool,
    rebuild_x1: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block down: rebuild (x1, x2) from (y1, y2), return them with dL/dx1, dL/dx2; parameter grads go to
    ``grads``. With Y1 = X1 + F(X2), Y2 = X2 + G(Y1): dX1 = dY1 + G'(Y1)^T dY2 and dX2 = dY2 + F'(X2)^T dX1."""
    # G: fresh graph from a detached Y1 (nothing of the stack above may leak into it)
    y1 = y1.detach().requires_grad_(True)
    with _restored_rng(rng_g, device):
        g = blk.g(_non_leaf(y1))
    g_params = [p for p in blk.g_parameters() if p.requires_grad]
    dg = _grad(g, [y1, *g_params], dy2)
    with torch.no_grad():
        x2 = y2 - g  # bit-identical recomputation of G, so this is forward's X2 up to one fp32 rounding
        dx1 = dy1 + dg[0] if dg[0] is not None else dy1
    del g
    for p, d in zip(g_params, dg[1:]):
        if d is not None:
            grads[id(p)] = d

    # F: from the rebuilt X2 (detached: a leaf of the local graph)
    x2 = x2.detach().requires_grad_(need_dx2)
    with _restored_rng(rng_f, device):
        f = blk.f(_non_leaf(x2) if need_dx2 else x2)
    f_params = [p for p in blk.f_parameters() if p.requires_grad]
    df = _grad(f, ([x2] if need_dx2 else []) + f_params, dx1)
    with torch.no_grad():
        x1 = y1 - f if rebuild_x1 else None  # the bottom block's X1 is not needed by anyone
        d_in = df[0] if need_dx2 else None
        dx2 = dy2 + d_in if d_in is not None else dy2
    del f
    for p, d in zip(f_params, df[1:] if need_dx2 else df):
        if d is not None:
            grads[id(p)] = d
    return (None if x1 is None else x1.detach()), x2.detach(), dx1, dx2


# ---------------------------------------------------------------------------------------------------------- model
class ZooRevViT(nn.Module):
    """Reversible ViT with timm's interface.

    Training with gradients enabled runs the blocks through ``RevStackFunction`` (activation memory independent of
    depth); with gradients disabled (eval, inference) or ``use_vanilla_backward=True`` the same blocks run as a plain
    loop under ordinary autograd (the reference the tests compare against). ``no_grad_prefix`` (set by
    ``zoo.training.freezing``) works as in ``ZooViT``: the stem and that many leading blocks run without a graph.
    """

    supports_growth = False  # see the module docstring
    supports_routing = False

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
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
        weight_init: str = "",
        use_vanilla_backward: bool = False,
    ):
        """Build the model.

        Args:
            img_size: Input resolution (square; a square (h, w) pair, as timm's builder passes, is stored as int).
            patch_size: Patch size of the stem.
            in_chans: Input channels.
            num_classes: Classes of the linear head; 0 for no head (pooled features).
            global_pool: 'token' (class token) or 'avg' (mean of the patch tokens).
            embed_dim: Width of both streams.
            depth: Number of reversible blocks.
            num_heads: Attention heads.
            head_dim: Per-head width (default ``embed_dim // num_heads``).
            mlp_ratio: MLP hidden width as a multiple of ``embed_dim`` (unless ``mlp_hidden``).
            mlp_hidden: Explicit MLP hidden width.
            qkv_bias: Bias on the qkv projection.
            class_token: Prepend a class token.
            reg_tokens: Number of register tokens.
            init_values: LayerScale init (None: no LayerScale).
            drop_rate: Dropout after the position embedding and before the head.
            proj_drop_rate: Dropout after the attention projection and in the MLP.
            attn_drop_rate: Attention-probability dropout.
            drop_path_rate: Stochastic depth, linearly increasing over the blocks.
            weight_init: '' for timm's default ViT init, 'skip' to leave modules' own init.
            use_vanilla_backward: Run the blocks under ordinary autograd (per-block activations kept). A runtime
                memory/compute switch, not architecture: it is an attribute, not part of ``model_args``.
        """
        super().__init__()
        # timm's builder passes the cfg's fixed input size as a pair, (224, 224): keep the zoo's int convention
        # (model_args stays JSON round-trip equal, and zoo.hub / evaluate read img_size as one side)
        if isinstance(img_size, (tuple, list)):
            if len(img_size) != 2 or img_size[0] != img_size[1]:
                raise ValueError(f"img_size must be an int or a square (h, w) pair, got {img_size!r}")
            img_size = int(img_size[0])
        check_global_pool(global_pool, class_token)
        self.model_args: dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, global_pool=global_pool,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, head_dim=head_dim, mlp_ratio=mlp_ratio,
            mlp_hidden=mlp_hidden, qkv_bias=qkv_bias, class_token=class_token, reg_tokens=reg_tokens,
            init_values=init_values, drop_rate=drop_rate, proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
        )  # fmt: skip
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.grad_checkpointing = False  # never on: see set_grad_checkpointing
        self.use_vanilla_backward = use_vanilla_backward
        self.no_grad_prefix = -1

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([self.make_block(i) for i in range(depth)])  # two-stream: not a Sequential
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = self.make_feature_info()
        if weight_init != "skip":
            self.init_weights()

    # ----------------------------------------------------------------------------------------------- construction
    def make_block(self, index: int) -> RevBlock:
        """Build block ``index`` from the current ``model_args``."""
        a = self.model_args
        return RevBlock(
            dim=a["embed_dim"], num_heads=a["num_heads"], head_dim=a["head_dim"], mlp_ratio=a["mlp_ratio"],
            mlp_hidden=a["mlp_hidden"], qkv_bias=a["qkv_bias"], init_values=a["init_values"],
            proj_drop=a["proj_drop_rate"], attn_drop=a["attn_drop_rate"],
            drop_path=drop_path_rates(a["drop_path_rate"], a["depth"])[index],
        )  # fmt: skip

    def make_feature_info(self) -> list[dict]:
        """One entry per block (the mean of the two streams after it), for timm's feature API."""
        r = self.patch_embed.patch_size[0]
        return [dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=r) for i in range(len(self.blocks))]

    def init_weights(self) -> None:
        """timm's default ('') ViT init: trunc-normal(0.02) linears and position embedding, tiny class token."""
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        init_linears(self)

    def train(self, mode: bool = True) -> ZooRevViT:
        """Frozen leading blocks stay in eval mode, as in ``ZooViT``: a frozen prefix is a fixed feature extractor."""
        super().train(mode)
        if mode:
            keep_frozen_prefix_eval(self)
        return self

    # ------------------------------------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay."""
        return {"pos_embed", "cls_token", "reg_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups exactly as ``ZooViT``'s, so group indices (``zoo.training.freezing``, layer decay) mean the
        same in
        both families: stem, one per block (timm's ``(99999,)`` joins the final norm to the last block), and the
        head, left unmatched, as the top group."""
        return dict(
            stem=r"^cls_token|^reg_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, every: int = 1, policy: str = "full") -> None:
        """No-op (same signature as ``ZooViT``'s, so recipes can call it on any zoo model).

        Reversibility already makes activation memory independent of depth during training: the backward pass
        rebuilds every block's inputs from its outputs, which is what checkpointing would buy (and more).
        """
        if policy not in ("full", "selective"):
            raise ValueError(f"checkpoint policy must be 'full' or 'selective', got {policy!r}")
        if every < 1:
            raise ValueError(f"checkpoint every must be >= 1, got {every}")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New (re-initialised) head for ``num_classes`` (0: none) and optionally a new pooling."""
        self.num_classes = num_classes
        if global_pool is not None:
            check_global_pool(global_pool, self.cls_token is not None)
            self.global_pool = self.model_args["global_pool"] = global_pool
        self.head = new_head(self.embed_dim, num_classes)

    # ---------------------------------------------------------------------------------------------------- forward
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(add_prefix_tokens(x, self.cls_token, self.reg_token) + self.pos_embed)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, prefix tokens and position embedding: the tokens both streams start from."""
        return self._pos_embed(self.patch_embed(x))

    def run_blocks(
        self, blocks: Sequence[RevBlock], x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both streams through ``blocks``: reversible backward when a graph is needed, a plain loop otherwise."""
        params = [p for blk in blocks for p in blk.parameters() if p.requires_grad]
        # len(), not bool(): torch.export in torch 2.5 cannot trace bool() of a list
        needs_graph = torch.is_grad_enabled() and (len(params) > 0 or x1.requires_grad or x2.requires_grad)
        if needs_graph and len(blocks) and not self.use_vanilla_backward:
            return RevStackFunction.apply(x1, x2, blocks, *params)
        # no graph (eval/inference: cheaper, no RNG bookkeeping) or the vanilla reference: ordinary autograd
        for blk in blocks:
            x1, x2 = blk(x1, x2)
        return x1, x2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the blocks (streams averaged) and the final norm: B, N, embed_dim."""
        # a frozen prefix runs without a graph: backward stops at the first trainable block (the speedup of freezing)
        start = max(self.no_grad_prefix, 0)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.no_grad_prefix < 0):
            x = self.stem(x)
            x1, x2 = self.run_blocks(self.blocks[:start], x, x)
        x1, x2 = self.run_blocks(self.blocks[start:], x1, x2)
        return self.norm((x1 + x2) / 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (class token or mean of patch tokens), dropout, head."""
        x = self.head_drop(pool_tokens(x, self.global_pool, self.num_prefix_tokens))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or pooled features without a head)."""
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
        """timm's feature-extraction API: the mean of the two streams after the chosen blocks (last n if ``indices``
        is an int). Runs as a plain loop (ordinary autograd): intermediates are kept anyway."""
        n = len(self.blocks)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i if i >= 0 else n + i for i in indices]
        H, W = self.patch_embed.grid_size
        x1 = x2 = self.stem(x)
        feats = []
        last = max(take) if stop_early else n - 1
        for i, blk in enumerate(self.blocks[: last + 1]):
            x1, x2 = blk(x1, x2)
            if i in take:
                y = (x1 + x2) / 2
                y = self.norm(y) if norm else y
                y = y[:, self.num_prefix_tokens :]
                if output_fmt == "NCHW":
                    y = y.reshape(y.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous()
                feats.append(y)
        if intermediates_only:
            return feats
        return self.norm((x1 + x2) / 2), feats

    # ---------------------------------------------------------------------------------------------- input size
    def set_input_size(self, img_size: int) -> None:
        """Change the input resolution, resampling the position embedding."""
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size)
        new_grid = self.patch_embed.grid_size
        if new_grid != old_grid:
            with torch.no_grad():
                pe = resample_abs_pos_embed(
                    self.pos_embed.data, new_size=new_grid, old_size=old_grid,
                    num_prefix_tokens=self.num_prefix_tokens, verbose=False,
                )  # fmt: skip
            self.pos_embed = nn.Parameter(pe)
        self.model_args["img_size"] = img_size


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ZooRevViT:
    # features through forward_intermediates ('getter'): blocks take and return two streams, so timm's hook- and
    # module-list-based extractors, which expect one tensor per module, do not fit
    return build_model_with_cfg(
        ZooRevViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,  # position-embedding resampling; router filling never applies
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        "zoo_revvit_small_p16": vit_cfg(),
        "zoo_revvit_micro_p4": fmnist_cfg(),
        "zoo_revvit_mini_p4": fmnist_cfg(),
    }
)


@register_model
def zoo_revvit_small_p16(pretrained: bool = False, **kwargs: Any) -> ZooRevViT:
    """Rev-ViT-S/16 at 224 px (the paper's Rev-ViT-S shape: width 384, 12 blocks, 6 heads)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("zoo_revvit_small_p16", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_revvit_micro_p4(pretrained: bool = False, **kwargs: Any) -> ZooRevViT:
    """CPU-sized reversible ViT for 28x28 grey images: patch 4 (49 tokens), width 96, 6 blocks."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=3)
    return _create("zoo_revvit_micro_p4", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_revvit_mini_p4(pretrained: bool = False, **kwargs: Any) -> ZooRevViT:
    """CPU-sized reversible ViT for 28x28 grey images: patch 4 (49 tokens), width 192, 12 blocks."""
    model_args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=12, num_heads=3)
    return _create("zoo_revvit_mini_p4", pretrained=pretrained, **dict(model_args, **kwargs))
