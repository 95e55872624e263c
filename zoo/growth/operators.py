"""Layer-wise growth of a ``ZooViT`` in place: depth, MLP width, heads, residual width and input resolution.

Every operator replaces modules/parameters under ``torch.no_grad``, keeps ``model.model_args`` current (so the grown
model saves and reloads as its new architecture), recomputes the drop-path rates of all blocks and
``model.feature_info``, and returns one ``ParamMap`` per parameter of the grown model (unchanged ones map to
themselves). The maps move EMA weights (``remap_tensors``) and AdamW state (``remap_optimizer``) by parameter name.

Function preservation (eval mode; in train mode dropout / drop-path draw different masks):
  - exact (up to float rounding): ``grow_depth(op="zero")``, ``grow_mlp``, ``grow_heads`` (``noise=0``),
    ``grow_embed_dim`` when ``new_dim`` is a multiple of the old width (``noise=0``), and any composition of these;
  - approximate: ``grow_embed_dim`` to a non-multiple (duplicated channels are counted unevenly by LayerNorm's mean
    and variance), any ``noise > 0``, and ``grow_resolution`` (bicubic resampling of the position embedding);
  - not preserved: ``grow_depth(op="stack" | "interpolate")`` (copied blocks are applied twice: expect a loss spike).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from timm.layers import DropPath, LayerScale, resample_abs_pos_embed, to_2tuple, trunc_normal_
from torch import nn

from zoo.growth.param_maps import (
    ParamMap,
    broadcast_along,
    compose_maps,
    gather_map,
    identity_maps,
    mul_optional,
    net2net_index,
    relative_noise,
    remap_tensors,
)
from zoo.models.zoo_vit import ZooViT, drop_path_rates
from zoo.nn.routing import RoutedBlock, resolve_route_plan

DEPTH_OPS = ("zero", "stack", "interpolate")
GROW_KEYS = ("depth", "depth_op", "embed_dim", "num_heads", "mlp_hidden", "img_size", "noise")

# residual-width roles of parameters (by name suffix): writers gather rows, readers gather columns divided by the
# replica count, token parameters gather their last dimension, the rest do not touch the residual stream
_WRITERS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "norm1.weight", "norm1.bias", "norm2.weight",
            "norm2.bias", "ls1.gamma", "ls2.gamma", "attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight",
            "mlp.fc2.bias", "norm.weight", "norm.bias")  # fmt: skip
_READERS = ("attn.qkv.weight", "mlp.fc1.weight", "router.weight", "head.weight")
# attn.log_scale: LSA's learned temperature, a scalar that does not depend on the residual width
_UNTOUCHED = ("attn.qkv.bias", "mlp.fc1.bias", "router.bias", "head.bias", "attn.e_proj", "attn.f_proj",
              "attn.log_scale")  # fmt: skip
_TOKENS = ("cls_token", "reg_token", "pos_embed")


# ------------------------------------------------------------------------------------------------------- helpers
def _role(name: str) -> str:
    def hit(suffixes: tuple[str, ...]) -> bool:
        return any(name == s or name.endswith("." + s) for s in suffixes)

    for role, suffixes in (("token", _TOKENS), ("write", _WRITERS), ("read", _READERS), ("keep", _UNTOUCHED)):
        if hit(suffixes):
            return role
    if name.startswith("patch_embed."):
        return "keep"  # a stem's layers before its last conv (``proj``, a writer) work on pixels, not the stream
    # fail loudly: a new parameter kind needs a decision on how it widens
    raise NotImplementedError(f"grow_embed_dim: no widening rule for parameter {name!r}")


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    # references suffice: operators replace parameters, they never write into the old tensors
    params = dict(model.named_parameters())
    return {n: p.detach() for n, p in params.items()}, {n: p.requires_grad for n, p in params.items()}


def _refresh(model: ZooViT) -> None:
    """Drop-path rates (fixed at construction in timm) and feature_info follow the current depth."""
    rates = drop_path_rates(model.model_args["drop_path_rate"], len(model.blocks))
    for blk, rate in zip(model.blocks, rates):
        for attr in ("drop_path1", "drop_path2"):
            setattr(blk, attr, (DropPath(rate) if rate > 0 else nn.Identity()).train(blk.training))
    model.feature_info = model.make_feature_info()


def _finish(model: ZooViT, maps: list[ParamMap], lookup: dict[str, torch.Tensor], flags: dict[str, bool]) -> None:
    """Complete ``maps`` with unchanged parameters, load every mapped value, carry ``requires_grad`` over."""
    params = dict(model.named_parameters())
    covered = {m.new for m in maps}
    maps.extend(ParamMap(new=n, old=n) for n in params if n not in covered)
    if len(maps) != len(params) or {m.new for m in maps} != set(params):
        raise RuntimeError("growth maps do not cover the grown model's parameters exactly once")
    with torch.no_grad():
        for m in maps:
            if m.old is None:
                continue
            p, src = params[m.new], lookup[m.old]
            if not (m.is_identity and p.data_ptr() == src.data_ptr()):  # skip parameters that were kept as they are
                v = m.map_value(src)
                if v.shape != p.shape:
                    raise RuntimeError(f"{m.new}: mapped shape {tuple(v.shape)} vs parameter {tuple(p.shape)}")
                p.copy_(v)
            p.requires_grad_(flags.get(m.old, True))
    _refresh(model)


def _rebuild_blocks(model: ZooViT) -> None:
    """Rebuild every block from the (updated) ``model_args``, keeping each block's routing capacity and mode."""
    ref = model.pos_embed
    new = []
    for i, old in enumerate(model.blocks):
        blk = model.make_block(i, old.capacity if isinstance(old, RoutedBlock) else None)
        new.append(blk.to(device=ref.device, dtype=ref.dtype).train(old.training))
    model.blocks = nn.Sequential(*new)


def _init_zero_block(blk: nn.Module) -> None:
    """timm init, then a zero residual branch output, so the new block is the identity function."""
    for name, m in blk.named_modules():
        if isinstance(m, nn.Linear) and not name.endswith("router"):  # routers stay zero-init (gate 1)
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if isinstance(blk.ls1, LayerScale):
        # with LayerScale, gamma = 0 zeroes the branch while proj/fc2 keep a normal init (and receive gradient)
        blk.ls1.gamma.zero_()
        blk.ls2.gamma.zero_()
    else:
        for lin in (blk.attn.proj, blk.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()


# ----------------------------------------------------------------------------------------------------- operators
@torch.no_grad()
def grow_depth(
    model: ZooViT, new_depth: int, op: str = "zero", source: nn.Module | Mapping[str, torch.Tensor] | None = None
) -> list[ParamMap]:
    """Add transformer blocks (zero-init, stacked or interpolated), following the routing plan at the new depth.

    Args:
        model: The model, changed in place.
        new_depth: Number of blocks afterwards (> current depth).
        op: "zero": append fresh blocks whose residual branches output zero (exactly function-preserving);
            "stack": new block j copies old block ``j % D``; "interpolate": new block j copies old block
            ``floor(j * D / new_depth)`` (AutoProg: each block duplicated in place).
        source: For stack/interpolate, a module with the same structure (or its parameters by name), e.g. the EMA
            copy (MoGrow): every block of the new stack is copied from ``source``'s blocks instead of the model's.
            Ignored by "zero". Stem, final norm and head always stay the model's.

    Returns:
        Maps for every parameter. A block's first copy of an old block counts as that block (its optimizer moments
        are kept); further copies are marked new (``new_mask`` all True). Zero-op blocks and routers of blocks that
        became routed are brand-new (``old=None``).

    Raises:
        ValueError: If ``new_depth`` does not exceed the current depth or ``op`` is unknown.
    """
    if op not in DEPTH_OPS:
        raise ValueError(f"depth op must be one of {DEPTH_OPS}, got {op!r}")
    D, N = len(model.blocks), int(new_depth)
    if N <= D:
        raise ValueError(f"grow_depth: new depth {N} must exceed the current depth {D}")
    if op == "zero":
        src: list[int | None] = [*range(D), *[None] * (N - D)]
    elif op == "stack":
        src = [j % D for j in range(N)]
    else:
        src = [j * D // N for j in range(N)]
    first: dict[int, int] = {}
    for j, s in enumerate(src):
        if s is not None:
            first.setdefault(s, j)

    a = model.model_args
    routing = a.get("routing")
    if routing and isinstance(routing.get("capacity"), (list, tuple)):
        caps = list(routing["capacity"])  # per-layer capacities follow the copied block (zero op: the last entry)
        routing = {**routing, "capacity": [caps[-1] if s is None else caps[s] for s in src]}
    a["depth"], a["routing"] = N, routing
    plan = resolve_route_plan(N, routing)

    old, flags = _snapshot(model)
    lookup = dict(old)
    if source is not None and op != "zero":
        src_t = source if isinstance(source, Mapping) else {n: p.detach() for n, p in source.named_parameters()}
        lookup.update({k: v for k, v in src_t.items() if k.startswith("blocks.")})
    ref = model.pos_embed
    old_blocks, blocks, maps = list(model.blocks), [], []
    for j, (s, cap) in enumerate(zip(src, plan)):
        if op == "zero" and s is not None and isinstance(old_blocks[s], RoutedBlock) == (cap is not None):
            # kept as is (same parameter objects, current, possibly annealed, capacity): exactly the old function
            blk = old_blocks[s]
        else:
            blk = model.make_block(j, cap).to(device=ref.device, dtype=ref.dtype).train(model.training)
            if s is None:
                _init_zero_block(blk)
        blocks.append(blk)
        for rest, p in blk.named_parameters():
            name, old_name = f"blocks.{j}.{rest}", f"blocks.{s}.{rest}"
            if s is None or old_name not in old:  # fresh block, or router of a block that became routed
                maps.append(ParamMap(new=name, old=None))
            else:
                dup = torch.ones([1] * p.dim(), dtype=torch.bool) if first[s] != j else None
                maps.append(ParamMap(new=name, old=old_name, new_mask=dup))
    model.blocks = nn.Sequential(*blocks)
    _finish(model, maps, lookup, flags)
    return maps


@torch.no_grad()
def grow_mlp(
    model: ZooViT, new_hidden: int, noise: float = 0.0, generator: torch.Generator | None = None
) -> list[ParamMap]:
    """Net2Net widening of every block's MLP hidden layer.

    fc1 rows (and bias) are gathered by an index map (original units first, then duplicates: round-robin, or random
    with ``generator``); fc2 input columns are gathered and divided by each unit's replica count, so the output is
    exactly preserved with ``noise=0``. ``noise`` multiplies the duplicated fc1 weight rows by ``1 + noise * N(0, 1)``
    (relative std) to break the symmetry between a unit and its copies.

    Raises:
        ValueError: If ``new_hidden`` is smaller than the current hidden width.
    """
    hidden = model.blocks[0].mlp.fc1.out_features
    if new_hidden < hidden:
        raise ValueError(f"grow_mlp: new hidden width {new_hidden} is smaller than the current {hidden}")
    model.model_args["mlp_hidden"] = hidden  # explicit: mlp_ratio would otherwise re-derive it from the width
    old, flags = _snapshot(model)
    maps: list[ParamMap] = []
    if new_hidden > hidden:
        dim = model.embed_dim
        for i in range(len(model.blocks)):
            idx, counts = net2net_index(hidden, new_hidden, generator)
            pre = f"blocks.{i}.mlp."
            w1 = gather_map(pre + "fc1.weight", 0, idx, 2)
            w1.value_scale = relative_noise((new_hidden, dim), w1.new_mask.flatten(), 0, noise, generator)
            scale = broadcast_along(1.0 / counts[idx].float(), 1, 2)
            maps += [w1, gather_map(pre + "fc1.bias", 0, idx, 1), gather_map(pre + "fc2.weight", 1, idx, 2, scale)]
        model.model_args["mlp_hidden"] = new_hidden
        _rebuild_blocks(model)
    _finish(model, maps, old, flags)
    return maps


@torch.no_grad()
def grow_heads(
    model: ZooViT, new_heads: int, noise: float = 0.0, generator: torch.Generator | None = None
) -> list[ParamMap]:
    """Add attention heads at fixed ``head_dim`` by duplicating whole heads (Net2Net on heads).

    The fused qkv is handled as three blocks q, k, v (each ``num_heads * head_dim`` rows): head rows are duplicated in
    each, and proj's input columns are gathered by head and divided by the head's replica count, so attention output
    is exactly preserved with ``noise=0``. ``noise`` multiplies the duplicated heads' qkv weight rows by
    ``1 + noise * N(0, 1)``. Sets ``model_args['head_dim']`` explicitly (attention width no longer equals the
    residual width).

    Raises:
        ValueError: If ``new_heads`` is smaller than the current number of heads.
    """
    attn = model.blocks[0].attn
    H, Dh = attn.num_heads, attn.head_dim
    if new_heads < H:
        raise ValueError(f"grow_heads: {new_heads} heads is fewer than the current {H}")
    if attn.qkv.out_features != 3 * attn.num_heads * attn.head_dim:
        # shared-QK attention fuses [qk; v]: heads there would need their own map (not implemented)
        raise ValueError(
            f"grow_heads: needs a fused [q; k; v] projection, attn_type is {model.model_args.get('attn_type')!r}"
        )
    model.model_args["head_dim"] = Dh
    old, flags = _snapshot(model)
    maps: list[ParamMap] = []
    if new_heads > H:
        dim = model.embed_dim
        for i, blk in enumerate(model.blocks):
            hidx, counts = net2net_index(H, new_heads, generator)
            cols = (hidx[:, None] * Dh + torch.arange(Dh)).flatten()  # head-major positions inside q (or k, or v)
            rows = torch.cat([part * H * Dh + cols for part in range(3)])  # split q | k | v, duplicate, re-fuse
            col_dup = (torch.arange(new_heads) >= H).repeat_interleave(Dh)
            pre = f"blocks.{i}.attn."
            qkv = gather_map(pre + "qkv.weight", 0, rows, 2, dup=col_dup.repeat(3))
            qkv.value_scale = relative_noise((len(rows), dim), col_dup.repeat(3), 0, noise, generator)
            maps.append(qkv)
            if blk.attn.qkv.bias is not None:
                maps.append(gather_map(pre + "qkv.bias", 0, rows, 1, dup=col_dup.repeat(3)))
            scale = broadcast_along(1.0 / counts[hidx].float().repeat_interleave(Dh), 1, 2)
            maps.append(gather_map(pre + "proj.weight", 1, cols, 2, scale, dup=col_dup))
        model.model_args["num_heads"] = new_heads
        _rebuild_blocks(model)
    _finish(model, maps, old, flags)
    return maps


@torch.no_grad()
def grow_embed_dim(
    model: ZooViT, new_dim: int, noise: float = 0.0, generator: torch.Generator | None = None
) -> list[ParamMap]:
    """Net2Net widening of the residual stream with channel map ``j -> j % dim``.

    Parameters that write the residual stream (patch embedding, cls/reg tokens, position embedding, attn.proj and
    mlp.fc2 rows, LayerScale gammas, LayerNorm weight/bias) gather rows; parameters that read it (qkv, fc1, head,
    router) gather columns divided by the channel's replica count. ``head_dim`` and the MLP hidden width are fixed
    (written to ``model_args``), so attention and MLP widths do not change. Exactly function-preserving when
    ``new_dim`` is a multiple of the width (every channel replicated equally, so LayerNorm statistics are unchanged);
    otherwise approximate. ``noise`` multiplies the readers' duplicated columns by ``1 + noise * N(0, 1)``.

    Raises:
        ValueError: If ``new_dim`` is smaller than the current width.
    """
    D = model.embed_dim
    a = model.model_args
    if new_dim < D:
        raise ValueError(f"grow_embed_dim: new width {new_dim} is smaller than the current {D}")
    a["head_dim"], a["mlp_hidden"] = model.blocks[0].attn.head_dim, model.blocks[0].mlp.fc1.out_features
    old, flags = _snapshot(model)
    maps: list[ParamMap] = []
    if new_dim > D:
        idx = torch.arange(new_dim) % D
        inv = 1.0 / torch.bincount(idx, minlength=D)[idx].float()
        for name, t in old.items():
            role = _role(name)
            if role in ("write", "token"):
                maps.append(gather_map(name, 2 if role == "token" else 0, idx, t.dim()))
            elif role == "read":
                m = gather_map(name, 1, idx, t.dim())
                noisy = relative_noise((t.shape[0], new_dim), m.new_mask.flatten(), 1, noise, generator)
                m.value_scale = mul_optional(broadcast_along(inv, 1, t.dim()), noisy)
                maps.append(m)
        ref = model.pos_embed
        model.embed_dim = model.num_features = model.head_hidden_size = a["embed_dim"] = new_dim
        pe = model.patch_embed.proj
        model.patch_embed.proj = nn.Conv2d(
            pe.in_channels, new_dim, pe.kernel_size, pe.stride, pe.padding, bias=pe.bias is not None
        )
        for attr in _TOKENS:
            t = getattr(model, attr)
            if t is not None:
                setattr(model, attr, nn.Parameter(t.new_zeros(*t.shape[:2], new_dim)))
        model.norm = nn.LayerNorm(new_dim, eps=model.norm.eps)
        if isinstance(model.head, nn.Linear):
            model.head = nn.Linear(new_dim, model.head.out_features, bias=model.head.bias is not None)
        for mod in (model.patch_embed.proj, model.norm, model.head):
            mod.to(device=ref.device, dtype=ref.dtype)
        _rebuild_blocks(model)
    _finish(model, maps, old, flags)
    return maps


@torch.no_grad()
def grow_resolution(model: ZooViT, new_img_size: int) -> list[ParamMap]:
    """Raise the input resolution; the position embedding (and its optimizer moments) is resampled bicubically with
    timm's ``resample_abs_pos_embed``, prefix tokens untouched.

    Raises:
        ValueError: If ``new_img_size`` is smaller than the current input size.
    """
    cur = model.model_args["img_size"]
    if any(n < c for n, c in zip(to_2tuple(new_img_size), to_2tuple(cur))):
        raise ValueError(f"grow_resolution: new image size {new_img_size} is smaller than the current {cur}")
    old, flags = _snapshot(model)
    old_grid = tuple(model.patch_embed.grid_size)
    model.set_input_size(new_img_size)
    new_grid = tuple(model.patch_embed.grid_size)
    maps: list[ParamMap] = []
    if new_grid != old_grid:
        # the same call set_input_size made, so loading through the map reproduces its values exactly
        fn = functools.partial(resample_abs_pos_embed, new_size=list(new_grid), old_size=list(old_grid),
                               num_prefix_tokens=model.num_prefix_tokens, verbose=False)  # fmt: skip
        maps.append(ParamMap(new="pos_embed", old="pos_embed", resample=fn))
    _finish(model, maps, old, flags)
    return maps


# ----------------------------------------------------------------------------------------------------- dispatcher
@torch.no_grad()
def check_growable(model: nn.Module) -> None:
    """Raise NotImplementedError unless ``model`` is a family whose definition supports the growth operators (ZooViT:
    one residual width, a plain block list). Hierarchical (``zoo_msvit``) and reversible (``zoo_revvit``) models do
    not, and must fail clearly before anything changes rather than on some attribute halfway through."""
    if not getattr(model, "supports_growth", False):
        raise NotImplementedError(
            f"{type(model).__name__} does not support layer-wise growth (the operators need ZooViT's single "
            "residual width and plain block list); grow a zoo_vit_* model instead"
        )


def grow(
    model: ZooViT,
    spec: Mapping,
    source: nn.Module | Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> list[ParamMap]:
    """Apply one growth stage: keys depth, depth_op, embed_dim, num_heads, mlp_hidden, img_size, noise (None = unset).

    Operators run in the order embed_dim, num_heads, mlp_hidden, depth, img_size (widths first so copied blocks are
    already wide; resolution last because a resampling map can only be composed with what precedes it). Their maps
    are composed, so the result maps ORIGINAL parameter names to FINAL ones in one step. ``source`` (e.g. the EMA
    copy) is carried through the width steps with the same maps before it feeds a stack/interpolate depth step.
    ``noise`` applies to every width operator. Keys ``at`` and ``step`` (where the stage starts) are ignored.

    Raises:
        ValueError: On unknown keys or a shrinking size.
    """
    check_growable(model)
    unknown = set(spec) - set(GROW_KEYS) - {"at", "step"}
    if unknown:
        raise ValueError(f"unknown growth keys {sorted(unknown)}; expected {GROW_KEYS}")
    # validate every size before changing anything, so a bad stage leaves the model untouched
    blk = model.blocks[0]
    current = {"embed_dim": model.embed_dim, "num_heads": blk.attn.num_heads, "mlp_hidden": blk.mlp.fc1.out_features,
               "depth": len(model.blocks) + 1, "img_size": model.model_args["img_size"]}  # fmt: skip
    for key, now in current.items():
        if spec.get(key) is not None and any(n < c for n, c in zip(to_2tuple(spec[key]), to_2tuple(now))):
            raise ValueError(f"growth stage {key}={spec[key]} shrinks the model (current {now}, depth must increase)")
    if (spec.get("depth_op") or "zero") not in DEPTH_OPS:
        raise ValueError(f"depth op must be one of {DEPTH_OPS}, got {spec['depth_op']!r}")
    noise = spec.get("noise") or 0.0
    total = identity_maps(model)
    src = source if source is None or isinstance(source, Mapping) else dict(source.named_parameters())
    for key in ("embed_dim", "num_heads", "mlp_hidden", "depth", "img_size"):
        value = spec.get(key)
        if value is None:
            continue
        if key == "embed_dim":
            step = grow_embed_dim(model, value, noise, generator)
        elif key == "num_heads":
            step = grow_heads(model, value, noise, generator)
        elif key == "mlp_hidden":
            step = grow_mlp(model, value, noise, generator)
        elif key == "depth":
            widened = None if src is None else remap_tensors(src, total, strict=False)
            step = grow_depth(model, value, spec.get("depth_op") or "zero", source=widened)
        else:
            step = grow_resolution(model, value)
        total = compose_maps(total, step)
    return total
