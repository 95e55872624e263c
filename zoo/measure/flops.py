"""FLOP counting for zoo models: ``FlopCounterMode`` with the CPU attention kernels filled in, plus analytical counts.

Convention (the same as ``torch.utils.flop_counter``): only matrix products count, at 2*M*N*K per matmul; norms,
activations, softmax, adds, top-k, gather/scatter and the optimizer step are not counted. The AdamW step costs
about ten elementwise FLOPs per parameter, under 0.1% of a ViT training step at any useful batch size, so "training
step FLOPs" here means forward + backward.

Why the extra formulas: on CPU, ``F.scaled_dot_product_attention`` dispatches
``aten._scaled_dot_product_flash_attention_for_cpu`` (and its ``_backward``), which torch's registry does not
know, so attention counts as zero. ``SDPA_CPU_FLOP_MAPPING`` registers them with exactly the formulas torch uses
for ``_scaled_dot_product_flash_attention``: forward = QK^T + AV = 4*B*H*Nq*Nk*Dh; backward = 5 such bmm-sized
products (recompute QK^T, dV, dP, dQ, dK) = 2.5x the forward, because flash backward recomputes the scores from
the saved logsumexp instead of storing the N x N attention map.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.measure.steps import random_batch
from zoo.nn.attention import resolve_attn_args, window_grid
from zoo.nn.routing import capacity_to_k

__all__ = [
    "SDPA_CPU_FLOP_MAPPING",
    "analytical_routed_vit_flops",
    "analytical_vit_flops",
    "attention_block_flops",
    "attention_flops",
    "count_flops",
    "sdpa_cpu_backward_flop",
    "sdpa_cpu_flop",
    "vit_block_flops",
]


def sdpa_cpu_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """Forward FLOPs of ``_scaled_dot_product_flash_attention_for_cpu``: QK^T plus AV, 2*M*N*K each.

    Shapes are (B, H, N, D); key/value may have fewer heads (GQA), which are broadcast to the query heads, as in
    torch's ``sdpa_flop_count``. The causal mask is not discounted, as in torch.
    """
    b, h, nq, dq = query_shape
    nk, dv = key_shape[2], value_shape[3]
    return 2 * b * h * nq * nk * dq + 2 * b * h * nq * nk * dv


def sdpa_cpu_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any
) -> int:
    """Backward FLOPs of ``_scaled_dot_product_flash_attention_for_cpu_backward`` (torch's ``sdpa_backward_flop``).

    Recompute scores (Nq x Dq x Nk), dP = dO V^T (Nq x Dv x Nk), dV = P^T dO (Nk x Nq x Dv), dQ = dS K (Nq x Nk x Dq),
    dK = dS^T Q (Nk x Nq x Dq): 2.5x the forward when Dq == Dv.
    """
    b, h, nq, dq = query_shape
    nk, dv = key_shape[2], value_shape[3]
    return 2 * b * h * nq * nk * (dq + dv + dv + dq + dq)


def _sdpa_mapping() -> dict:
    aten = torch.ops.aten
    mapping = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", sdpa_cpu_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", sdpa_cpu_backward_flop),
    ):
        # an op missing from some build must not break counting the rest (it would just count as zero again)
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = fn
    return mapping


#: ``custom_mapping`` for ``FlopCounterMode``: keys are op overload packets, as in torch's own registry.
SDPA_CPU_FLOP_MAPPING: dict = _sdpa_mapping()


def _module_totals(counts: dict[str, dict[Any, int]], root: nn.Module) -> dict[str, int]:
    """Per-module totals keyed by the module's path in ``root`` ('' = whole model), from ``get_flop_counts()``.

    ``FlopCounterMode`` names modules ``<RootClass>.<path>`` and keeps a 'Global' entry; both are normalised here.
    """
    prefix = type(root).__name__
    out: dict[str, int] = {}
    for key, per_op in counts.items():
        if key == "Global":
            continue
        if key == prefix:
            name = ""
        elif key.startswith(prefix + "."):
            name = key[len(prefix) + 1 :]
        else:  # a module that is not under root (should not happen); keep it under its own name
            name = key
        out[name] = sum(per_op.values())
    return out


def count_flops(
    model: nn.Module,
    inputs: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[int, dict[str, int]]:
    """Count FLOPs of one forward (``loss_fn`` None, under no_grad) or one forward + backward of ``loss_fn(model(x))``.

    Args:
        model: the model, in whatever train/eval mode the caller wants counted.
        inputs: a batch; counts are for the whole batch.
        loss_fn: maps the model output to a scalar loss; when given, the backward pass is counted too. The
            gradients it leaves in ``.grad`` are cleared (set to None) before returning.
        autocast: optional autocast context for the forward (FLOPs do not depend on dtype; this only keeps the
            counted kernels the same as the timed ones).

    Returns:
        (total FLOPs, per-module FLOPs keyed by module path, '' for the whole model). Backward FLOPs are attributed
        to modules through torch's module tracker, which is reliable for modules with parameters (blocks, patch
        embedding, head) but over-attributes backward work to parameter-free pass-through modules (Identity,
        Dropout) whose backward hooks cannot close.
    """
    from torch.utils.flop_counter import FlopCounterMode  # lazy: keeps ``import zoo.measure.flops`` cheap

    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOP_MAPPING)
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    try:
        with counter:
            if loss_fn is None:
                with torch.no_grad(), ctx:
                    model(inputs)
            else:
                with ctx:
                    loss = loss_fn(model(inputs))
                loss.backward()
    finally:
        if loss_fn is not None:
            model.zero_grad(set_to_none=True)
    return counter.get_total_flops(), _module_totals(counter.get_flop_counts(), model)


# ----------------------------------------------------------------------------------------------------- analytical
def vit_block_flops(
    tokens: int, dim: int, mlp_hidden: int, kv_tokens: int | None = None, attn_dim: int | None = None
) -> int:
    """Forward matmul FLOPs of one pre-norm ViT block for one image.

    ``tokens`` queries attend to ``kv_tokens`` keys/values (default: the same tokens). Counts qkv (q over the
    queries, k and v over the keys), QK^T and AV (summed over heads), the output projection, fc1 and fc2.
    ``attn_dim`` = num_heads * head_dim, the attention width (default ``dim``; differs after head growth).
    """
    t, m = tokens, tokens if kv_tokens is None else kv_tokens
    a = dim if attn_dim is None else attn_dim
    qkv = 2 * t * dim * a + 2 * m * dim * 2 * a
    attn = 2 * t * m * a + 2 * t * m * a  # QK^T and AV
    proj = 2 * t * a * dim
    mlp = 2 * t * dim * mlp_hidden + 2 * t * mlp_hidden * dim
    return qkv + attn + proj + mlp


def _stem_and_head_flops(dim: int, num_patches: int, num_classes: int, patch_size: int, in_chans: int) -> int:
    patch_embed = 2 * num_patches * (in_chans * patch_size * patch_size) * dim  # the conv is a per-patch matmul
    head = 2 * dim * num_classes  # on the pooled (CLS or mean) feature only
    return patch_embed + head


def analytical_vit_flops(
    depth: int,
    dim: int,
    tokens: int,
    mlp_hidden: int,
    num_classes: int,
    patch_size: int,
    in_chans: int,
    batch: int,
    num_prefix_tokens: int = 1,
    attn_dim: int | None = None,
) -> int:
    """Forward matmul FLOPs (2*M*N*K per matmul) of a dense timm-style ViT for a whole batch.

    Args:
        depth: number of blocks.
        dim: embedding width.
        tokens: sequence length inside the blocks, prefix tokens included (197 for a /16 ViT at 224 with a CLS token).
        mlp_hidden: hidden width of the MLP (4 * dim by default).
        num_classes: head outputs (0 for no head).
        patch_size: square patch side; the patch embedding is a stride-``patch_size`` conv, i.e. one matmul per patch.
        in_chans: input channels.
        batch: images per batch.
        num_prefix_tokens: CLS + register tokens, which do not come from the patch embedding.
        attn_dim: attention width num_heads * head_dim when it differs from ``dim`` (models with ``head_dim``).

    Returns:
        FLOPs of patch embedding + depth * (qkv, QK^T, AV, proj, fc1, fc2) + head.
    """
    num_patches = tokens - num_prefix_tokens
    per_image = _stem_and_head_flops(dim, num_patches, num_classes, patch_size, in_chans)
    per_image += depth * vit_block_flops(tokens, dim, mlp_hidden, attn_dim=attn_dim)
    return batch * per_image


def analytical_routed_vit_flops(
    depth: int,
    dim: int,
    tokens: int,
    mlp_hidden: int,
    num_classes: int,
    patch_size: int,
    in_chans: int,
    batch: int,
    capacity: float,
    routed_blocks: Iterable[int],
    num_prefix_tokens: int = 1,
    linear_router: bool = True,
    context: str = "selected",
    attn_dim: int | None = None,
) -> int:
    """Forward matmul FLOPs of a token-routed ViT (``zoo.nn.routing.RoutedBlock``) for a whole batch.

    A routed block processes the prefix tokens plus k = ``capacity_to_k(num_patches, capacity)`` patch tokens
    (ceil(capacity * num_patches), at least 1). With ``context='all'`` those queries attend to all tokens. The
    learned (linear) router adds a dim -> 1 projection over every patch token. The parameter-free ``cls_attn``
    router is not modelled (pass ``linear_router=False`` and expect its small q/k cost to be missing).
    """

    if context not in ("selected", "all"):
        raise ValueError(f"context must be 'selected' or 'all', got {context!r}")
    num_patches = tokens - num_prefix_tokens
    k = capacity_to_k(num_patches, capacity)
    routed = set(routed_blocks)
    per_image = _stem_and_head_flops(dim, num_patches, num_classes, patch_size, in_chans)
    for i in range(depth):
        if i in routed:
            sel = num_prefix_tokens + k
            kv = tokens if context == "all" else None
            per_image += vit_block_flops(sel, dim, mlp_hidden, kv_tokens=kv, attn_dim=attn_dim)
            if linear_router:
                per_image += 2 * num_patches * dim
        else:
            per_image += vit_block_flops(tokens, dim, mlp_hidden, attn_dim=attn_dim)
    return batch * per_image


def attention_flops(
    attn_type: str,
    grid_size: tuple[int, int],
    num_prefix_tokens: int,
    dim: int,
    attn_dim: int | None = None,
    attn_args: dict | None = None,
) -> int:
    """Forward matmul FLOPs of one ``zoo.nn.attention`` module (projections + attention) for one image.

    With P prefix tokens, an Hg x Wg grid, N = P + Hg*Wg and A = ``attn_dim`` (default ``dim``):
      - dense: qkv 2*N*dim*3A, QK^T + AV 4*N*N*A, proj 2*N*A*dim;
      - window (ws): prefix queries over all N keys, and every padded window's ws^2 queries (padding included, it
        is computed and dropped) over P + ws^2 keys: 4*A*(P*N + nW*ws^2*(P + ws^2)), nW = ceil(Hg/ws)*ceil(Wg/ws);
      - spatial_reduction (r): q over N tokens, k/v over M = P + ceil(Hg/r)*ceil(Wg/r): 2*N*dim*A + 2*M*dim*2A,
        attention 4*N*M*A (pooling is not a matmul);
      - lowrank (k_len): dense qkv, E K and F V 2 * 2*k_len*N*A, attention 4*N*k_len*A;
      - shared_qk: qkv 2*N*dim*2A (one projection for q and k), attention as dense (the self-mask is not discounted).
    """

    opts = resolve_attn_args(attn_type, attn_args)
    a = dim if attn_dim is None else attn_dim
    P, hw = num_prefix_tokens, grid_size[0] * grid_size[1]
    n = P + hw
    proj = 2 * n * a * dim
    if attn_type == "dense":
        return 2 * n * dim * 3 * a + 4 * n * n * a + proj
    if attn_type == "window":
        ws = opts["window_size"]
        nh, nw = window_grid(grid_size, ws)
        return 2 * n * dim * 3 * a + 4 * a * (P * n + nh * nw * ws * ws * (P + ws * ws)) + proj
    if attn_type == "spatial_reduction":
        r = opts["sr_ratio"]
        m = P + math.ceil(grid_size[0] / r) * math.ceil(grid_size[1] / r)
        return 2 * n * dim * a + 2 * m * dim * 2 * a + 4 * n * m * a + proj
    if attn_type == "lowrank":
        k = opts["k_len"]
        return 2 * n * dim * 3 * a + 2 * 2 * k * n * a + 4 * n * k * a + proj
    if attn_type == "shared_qk":
        return 2 * n * dim * 2 * a + 4 * n * n * a + proj
    raise ValueError(f"no FLOP formula for attn_type {attn_type!r}")


def attention_block_flops(
    attn_type: str,
    grid_size: tuple[int, int],
    num_prefix_tokens: int,
    dim: int,
    mlp_hidden: int,
    attn_dim: int | None = None,
    attn_args: dict | None = None,
) -> int:
    """Forward matmul FLOPs of one ZooViT block with ``attn_type`` attention (``attention_flops`` + fc1 + fc2)."""
    n = num_prefix_tokens + grid_size[0] * grid_size[1]
    mlp = 2 * n * dim * mlp_hidden + 2 * n * mlp_hidden * dim
    return attention_flops(attn_type, grid_size, num_prefix_tokens, dim, attn_dim, attn_args) + mlp


def step_flops(model: nn.Module, batch: int, train: bool = True) -> int:
    """Counted FLOPs of one step on a seeded random batch: a training step (forward and backward of cross-entropy) or
    an inference forward. The one training-FLOPs count of the benchmarks and the growth budget solver."""
    x, y = random_batch(model, batch)
    loss_fn = (lambda out: F.cross_entropy(out, y)) if train else None
    return count_flops(model.train() if train else model.eval(), x, loss_fn=loss_fn)[0]
