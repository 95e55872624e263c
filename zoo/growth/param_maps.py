"""Parameter maps for growth: how every parameter of a grown model derives from one of the old model.

A ``ParamMap`` is pure data (index maps, scales, masks), so the same description moves the weights, an EMA copy,
a checkpoint and the optimizer moments, all keyed by parameter *name* (torch keys optimizer state by parameter object,
which growth replaces). Maps compose, so several growth operators applied in a row still map ORIGINAL names to FINAL
names in one step.

Masks and scales are stored compactly: they are broadcastable to the new shape (size 1 along dimensions the map does
not touch), which keeps them valid after a later resampling of another dimension (the position embedding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

STATE_MODES = ("zero", "copy")


@dataclass(eq=False)  # tensor fields: compare explicitly, never with ==
class ParamMap:
    """How one parameter of the grown model derives from one parameter of the old model.

    The value is ``resample(gather(old) * value_scale)``; optimizer moments use the same gather and resample but never
    ``value_scale`` (a Net2Net duplicate receives the same gradient as its original, so its moments are the
    original's, unscaled).

    Attributes:
        new: Name of the parameter in the grown model.
        old: Name of the parameter it derives from, or None for a brand-new parameter (fresh init, no optimizer state).
        gather: Per dimension ``(dim, index)``: for every new position along ``dim``, the old position it copies.
        value_scale: Multiplier for values only, broadcastable to the new shape (e.g. Net2Net's 1 / replica count).
        new_mask: Bool, broadcastable to the new shape: True where the entry did not exist before (duplicates).
        resample: Maps a tensor to the new shape (position embedding at a new grid); used for values and moments.
    """

    new: str
    old: str | None
    gather: tuple[tuple[int, torch.Tensor], ...] = ()
    value_scale: torch.Tensor | None = None
    new_mask: torch.Tensor | None = None
    resample: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def is_identity(self) -> bool:
        """True when the parameter is carried over unchanged (same name or renamed, same tensor)."""
        return not self.gather and self.value_scale is None and self.new_mask is None and self.resample is None

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        for dim, idx in self.gather:
            t = t.index_select(dim, idx.to(t.device))
        return t

    def map_value(self, old_t: torch.Tensor) -> torch.Tensor:
        """The grown parameter's value from the old parameter's value (a new tensor; ``old_t`` is not modified)."""
        if self.old is None:
            raise ValueError(f"{self.new} is a new parameter: it has no old value to map")
        t = self._gather(old_t)
        if self.value_scale is not None:
            # multiply in (at least) float32, then cast: 1/3 rounded to bf16 would break the Net2Net sum
            t = (t * self.value_scale.to(t.device)).to(old_t.dtype)
        if self.resample is not None:
            t = self.resample(t)
        return t.clone() if t is old_t else t

    def map_state(self, old_t: torch.Tensor, mode: str = "zero", nonnegative: bool = False) -> torch.Tensor:
        """An optimizer moment of the grown parameter from the old parameter's moment.

        Args:
            old_t: The old moment (same shape as the old parameter).
            mode: "zero": entries marked in ``new_mask`` start at 0, existing ones keep their moments (MSG);
                "copy": duplicates copy their source's moments.
            nonnegative: Clamp at 0 after resampling (bicubic interpolation of ``exp_avg_sq`` can undershoot).

        Returns:
            The moment for the new parameter (a new tensor).
        """
        if mode not in STATE_MODES:
            raise ValueError(f"optimizer state mode must be one of {STATE_MODES}, got {mode!r}")
        if self.old is None:
            raise ValueError(f"{self.new} is a new parameter: it has no old optimizer state")
        t = self._gather(old_t)
        if self.resample is not None:
            t = self.resample(t)
            if nonnegative:
                t = t.clamp_min(0)
        if mode == "zero" and self.new_mask is not None:
            t = t.masked_fill(self.new_mask.to(t.device), 0)
        return t.clone() if t is old_t else t


# ------------------------------------------------------------------------------------- building blocks for operators
def broadcast_along(v: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """A vector viewed along ``dim`` of an ``ndim`` tensor (size 1 elsewhere): compact, broadcastable masks/scales."""
    shape = [1] * ndim
    shape[dim] = -1
    return v.reshape(shape)


def net2net_index(old: int, new: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index map for Net2Net widening: originals first, then duplicates (round-robin, or random permutations of the
    originals when a generator is given, so replica counts differ by at most one), and the replica counts."""
    extra = new - old
    if generator is None:
        dup = torch.arange(extra) % old
    else:
        dup = torch.cat([torch.randperm(old, generator=generator) for _ in range(math.ceil(extra / old))])[:extra]
    idx = torch.cat([torch.arange(old), dup])
    return idx, torch.bincount(idx, minlength=old)


def relative_noise(
    shape: tuple[int, ...], dup: torch.Tensor, dim: int, noise: float, generator: torch.Generator | None
) -> torch.Tensor | None:
    """Relative (multiplicative) noise ``1 + noise * N(0, 1)`` on duplicated slices along ``dim``, 1 elsewhere.

    Multiplicative noise is expressible as a ``value_scale``, so the maps alone reproduce the grown weights."""
    if noise <= 0 or not dup.any():
        return None
    eps = torch.randn(shape, generator=generator)
    return 1 + noise * eps * broadcast_along(dup, dim, len(shape)).float()


def mul_optional(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Product of two optional (broadcastable) scales; None means 1."""
    return b if a is None else a if b is None else a * b


def gather_map(
    name: str,
    dim: int,
    idx: torch.Tensor,
    ndim: int,
    scale: torch.Tensor | None = None,
    dup: torch.Tensor | None = None,
) -> ParamMap:
    """Map of a parameter widened along one dimension (same name before and after).

    Args:
        name: Parameter name.
        dim: The widened dimension.
        idx: Old position for every new position along ``dim``.
        ndim: Number of dimensions of the parameter (masks and scales are stored compactly, see module doc).
        scale: Optional ``value_scale`` (already broadcastable).
        dup: Bool per new position, True for copies; default: every position that does not keep its own index.
    """
    if dup is None:
        dup = torch.arange(len(idx)) != idx  # originals sit at their own position, everything else is a copy
    mask = broadcast_along(dup, dim, ndim) if dup.any() else None
    return ParamMap(new=name, old=name, gather=((dim, idx),), value_scale=scale, new_mask=mask)


def identity_maps(model: nn.Module) -> list[ParamMap]:
    """One unchanged map per parameter: the neutral element of ``compose_maps``."""
    return [ParamMap(new=n, old=n) for n, _ in model.named_parameters()]


def _gather_broadcast(t: torch.Tensor | None, gather: tuple[tuple[int, torch.Tensor], ...]) -> torch.Tensor | None:
    # compact (broadcastable) tensors are not indexed along dimensions where they have size 1
    if t is None:
        return None
    for dim, idx in gather:
        if t.shape[dim] != 1:
            t = t.index_select(dim, idx.to(t.device))
    return t


def _compose_one(m1: ParamMap, m2: ParamMap) -> ParamMap:
    if m1.old is None:
        return ParamMap(new=m2.new, old=None)
    if m1.resample is not None and not m2.is_identity:
        # resample then gather has no closed form in these fields; ``grow`` applies img_size last, so never needed
        raise NotImplementedError(f"{m2.new}: a resampling map can only be followed by an unchanged one")
    g1, g2 = dict(m1.gather), dict(m2.gather)
    gather = []
    for d in sorted(set(g1) | set(g2)):
        if d in g1 and d in g2:
            gather.append((d, g1[d][g2[d]]))
        else:
            gather.append((d, g1[d] if d in g1 else g2[d]))
    scale = mul_optional(_gather_broadcast(m1.value_scale, m2.gather), m2.value_scale)
    # an entry is new if it is new in the second step, or copies an entry that was new in the first
    mask = _gather_broadcast(m1.new_mask, m2.gather)
    if m2.new_mask is not None:
        mask = m2.new_mask if mask is None else mask | m2.new_mask
    return ParamMap(m2.new, m1.old, tuple(gather), scale, mask, m1.resample or m2.resample)


def compose_maps(first: list[ParamMap], second: list[ParamMap]) -> list[ParamMap]:
    """Maps from the names before ``first`` to the names after ``second``.

    Args:
        first: Maps of the earlier growth step.
        second: Maps of the later growth step (their ``old`` names are ``first``'s ``new`` names).

    Returns:
        One map per parameter after ``second``.

    Raises:
        KeyError: If a map of ``second`` refers to a parameter ``first`` does not produce.
    """
    by_new = {m.new: m for m in first}
    out = []
    for m2 in second:
        if m2.old is None:
            out.append(m2)
        elif m2.old not in by_new:
            raise KeyError(f"{m2.new}: derives from {m2.old!r}, which the earlier maps do not produce")
        else:
            out.append(_compose_one(by_new[m2.old], m2))
    return out


def remap_tensors(
    state_dict_old: Mapping[str, torch.Tensor],
    maps: list[ParamMap],
    defaults: Mapping[str, torch.Tensor] | None = None,
    strict: bool = True,
) -> dict[str, torch.Tensor]:
    """Move parameter values keyed by old name (EMA weights, a checkpoint) to the grown names and shapes.

    Args:
        state_dict_old: Tensors keyed by old parameter name.
        maps: The growth maps.
        defaults: Values for brand-new parameters (``old is None``), e.g. the grown model's own state dict, so an EMA
            starts them at the model's initialisation; without it they are left out.
        strict: Raise if a mapped old name is missing from ``state_dict_old`` (else skip it).

    Returns:
        Tensors keyed by new parameter name.
    """
    out: dict[str, torch.Tensor] = {}
    for m in maps:
        if m.old is None:
            if defaults is not None and m.new in defaults:
                out[m.new] = defaults[m.new].detach().clone()
        elif m.old in state_dict_old:
            out[m.new] = m.map_value(state_dict_old[m.old].detach())
        elif strict:
            raise KeyError(f"{m.new}: old tensor {m.old!r} not in the given state dict")
    return out


def remap_optimizer(
    optimizer_old_state: Mapping[str, Mapping], maps: list[ParamMap], mode: str = "zero"
) -> dict[str, dict]:
    """Move per-parameter optimizer state (AdamW: step, exp_avg, exp_avg_sq) to the grown parameters.

    Tensors with one or more dimensions are mapped with ``ParamMap.map_state`` (keys ending in ``_sq`` are clamped
    non-negative after resampling); scalars such as ``step`` are kept (MSG: the step count carries over, so bias
    correction does not restart). Brand-new parameters (``old is None``) get no state: the optimizer initialises them
    fresh. Caveat of mode "zero": a zeroed entry with a large kept step makes Adam's first update about
    ``(1 - beta1) / sqrt(1 - beta2)`` (~3.2 for the defaults) times the LR in size; "copy" avoids that.

    Args:
        optimizer_old_state: State keyed by old parameter name (see ``optimizer_state_by_name``).
        maps: The growth maps.
        mode: "zero" or "copy", see ``ParamMap.map_state``.

    Returns:
        State keyed by new parameter name.
    """
    if mode not in STATE_MODES:
        raise ValueError(f"optimizer state mode must be one of {STATE_MODES}, got {mode!r}")
    out: dict[str, dict] = {}
    for m in maps:
        if m.old is None or m.old not in optimizer_old_state:
            continue
        st = {}
        for k, v in optimizer_old_state[m.old].items():
            if torch.is_tensor(v) and v.dim() > 0:
                st[k] = m.map_state(v, mode, nonnegative=k.endswith("_sq"))
            else:
                st[k] = v.clone() if torch.is_tensor(v) else v
        out[m.new] = st
    return out


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, dict]:
    """The optimizer's per-parameter state keyed by the parameter's name in ``model`` (parameters without state or
    outside ``model`` are left out)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in names and s}


def load_state_by_name(
    optimizer: torch.optim.Optimizer, model: nn.Module, state_by_name: Mapping[str, Mapping]
) -> list[str]:
    """Install per-parameter state keyed by name into ``optimizer`` (built over ``model``'s current parameters).

    Parameters the optimizer does not hold (e.g. frozen ones left out of it) are skipped. Moments are moved to the
    parameter's device and dtype; scalars (``step``) are kept as they are (torch keeps ``step`` on the CPU).

    Returns:
        The names whose state was installed.

    Raises:
        KeyError: If a name is not a parameter of ``model``.
        ValueError: If a moment's shape differs from its parameter's.
    """
    params = dict(model.named_parameters())
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    loaded = []
    for name, st in state_by_name.items():
        if name not in params:
            raise KeyError(f"optimizer state for {name!r}, which is not a parameter of the model")
        p = params[name]
        if id(p) not in held:
            continue
        new_st = {}
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                if v.shape != p.shape:
                    raise ValueError(f"{name}.{k}: state shape {tuple(v.shape)} vs parameter {tuple(p.shape)}")
                v = v.to(device=p.device, dtype=p.dtype)
            new_st[k] = v
        optimizer.state[p] = new_st
        loaded.append(name)
    return loaded
