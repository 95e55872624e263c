"""Activation-checkpointing policies for zoo blocks.

'full' recomputes the whole block in backward. 'selective' saves the outputs of matmuls and attention (the expensive
ops) and recomputes only the cheap ones (norms, GELU, adds), through torch's selective checkpoint contexts.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_aten = torch.ops.aten
# ops whose outputs are kept under the selective policy: the matmuls and the attention kernels
SAVE_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention.default,
}


def _selective_policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _noop_contexts():
    return contextlib.nullcontext(), contextlib.nullcontext()


def checkpoint_context_fn(policy: str):
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint`` implementing a named policy."""
    if policy == "full":
        return _noop_contexts
    if policy == "selective":
        return partial(create_selective_checkpoint_contexts, _selective_policy)
    raise ValueError(f"checkpoint policy must be 'full' or 'selective', got {policy!r}")
