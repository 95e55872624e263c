"""Wiring between a recipe and the model's structure over training: building the model and optimizer, the stage
plan (which groups train, routing capacity), and restructuring at stage boundaries.

The stage at a step is a pure function of the recipe and the step (``StagePlan.describe``), so a resumed run rebuilds
the right structure before loading a checkpoint, including one taken right after a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.utils import ModelEmaV3
from torch import nn

from zoo.growth.operators import grow
from zoo.growth.param_maps import load_state_by_name, optimizer_state_by_name, remap_optimizer, remap_tensors
from zoo.hub import load_model, load_timm_weights
from zoo.models.contract import check_supports, check_zoo_model
from zoo.models.pretrained import resolve_local_dir
from zoo.nn.routing import RoutedBlock, resolve_route_plan
from zoo.training.freezing import layer_groups, param_groups, set_trainable_from
from zoo.training.progress import anneal_value, boundary_steps, freezeout_steps, gradual_unfreeze_from
from zoo.training.recipe import Recipe, RecipeError


def routing_args(recipe: Recipe) -> dict | None:
    r = recipe.routing
    if r is None:
        return None
    args = {"capacity": r.capacity, "layers": r.layers, "router": r.router, "context": r.context}
    if r.weight != "sigmoid":  # only when set: the model args of runs from before the option stay as they were
        args.update(weight=r.weight, weight_scale=r.weight_scale)
    return args


def merging_args(recipe: Recipe) -> dict | None:
    m = recipe.merging
    return None if m is None else {"r": m.r, "layers": m.layers}


def token_reduction_args(recipe: Recipe) -> dict[str, dict]:
    """The model args of the recipe's routing / merging sections that are set (the recipe allows one of them)."""
    specs = {"routing": routing_args(recipe), "merging": merging_args(recipe)}
    return {k: v for k, v in specs.items() if v is not None}


def model_input_shape(recipe: Recipe) -> tuple[int | None, int | None]:
    """``(in_chans, img_size)`` the recipe's model takes, for data that is resized to fit it (image folders, Hugging
    Face datasets): the recipe's model args, else the pretrained model's, else the architecture's default input."""
    m = recipe.model
    args = m.args
    if "in_chans" in args and "img_size" in args:
        return args["in_chans"], args["img_size"]
    try:
        if m.pretrained is None or m.pretrained.endswith(".safetensors"):
            with torch.device("meta"):  # the shape only: no weights allocated
                model = timm.create_model(m.name, **args)
        else:
            model = load_model(resolve_local_dir(m.pretrained))
    except (RuntimeError, TypeError, ValueError):
        return args.get("in_chans"), args.get("img_size")  # build_model reports the problem with the model itself
    shape = getattr(model, "model_args", {})
    c, s = shape.get("in_chans"), shape.get("img_size")
    if c is None or s is None:  # a plain timm model: its pretrained config states the input
        c, h, _ = model.pretrained_cfg.get("input_size", (None, None, None))
        s = h
    return args.get("in_chans", c), args.get("img_size", s)


def unwrapped(acc, model: nn.Module) -> nn.Module:
    """The model itself, out of DDP and out of torch.compile's wrapper (whose parameter names carry ``_orig_mod.``:
    growth maps and optimizer state are keyed by the model's own names)."""
    model = acc.unwrap_model(model)  # Accelerate >= 1.4 keeps the compiled wrapper by default, earlier ones drop it
    return getattr(model, "_orig_mod", model)


def build_model(recipe: Recipe, bundle) -> nn.Module:
    """The recipe's model for the data in ``bundle``, with the recipe's activation-checkpointing policy applied."""
    model = _build_model(recipe, bundle)
    check_zoo_model(model)  # a contributed family missing a piece fails here, naming it
    t = recipe.train
    if t.grad_checkpointing is not None:
        model.set_grad_checkpointing(True, every=t.checkpoint_every_k_blocks, policy=t.grad_checkpointing)
    return model


def _build_model(recipe: Recipe, bundle) -> nn.Module:
    """From scratch, a model folder / hub id, or a timm weights file."""
    m = recipe.model
    data_args = {"num_classes": bundle.num_classes, "in_chans": bundle.in_chans, "img_size": bundle.img_size}
    src = m.pretrained
    if src is None or src.endswith(".safetensors"):
        kwargs = {**data_args, **m.args}
        for feature, spec in token_reduction_args(recipe).items():
            with torch.device("meta"):  # the family's declared capabilities, before building it with the feature
                check_supports(timm.create_model(m.name), feature, f"the recipe's {feature} section")
            kwargs[feature] = spec
        try:
            model = timm.create_model(m.name, **kwargs)
        except (RuntimeError, TypeError, ValueError) as e:
            raise RecipeError("recipe", "model", f"cannot build {m.name!r} with {kwargs}: {e}") from None
        if src is not None:
            if not Path(src).is_file():
                raise RecipeError("recipe", "model.pretrained", f"weights file not found: {src}")
            load_timm_weights(model, src)
        return model
    model = load_model(resolve_local_dir(src))  # a bundled model_cards/ folder also resolves from another cwd
    if m.reset_head and model.num_classes != bundle.num_classes:
        model.reset_classifier(bundle.num_classes)
    for feature, spec in token_reduction_args(recipe).items():  # the pretrained model converted as it loads
        check_supports(model, feature, f"the recipe's {feature} section")
        try:
            getattr(model, f"set_{feature}")(spec)
        except ValueError as e:
            raise RecipeError("recipe", feature, str(e)) from None
    return model


def build_optimizer(model: nn.Module, recipe: Recipe, previous: torch.optim.Optimizer | None = None):
    """AdamW (or SGD) over the trainable parameters with layer-decay scales; optimizer state of parameters that were
    already trained is carried over from ``previous`` (an unfreeze boundary keeps the moments of the top)."""
    o = recipe.optim
    groups = param_groups(model, o.weight_decay, o.layer_decay, o.lr_mult)
    if o.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    else:
        opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.betas[0], nesterov=True)
    if previous is not None:
        for p, s in previous.state.items():
            if any(p is q for g in opt.param_groups for q in g["params"]):
                opt.state[p] = s
    return opt


def stage_step(stage, total: int) -> int:
    """The optimizer step at which a growth or unfreeze stage takes effect in a run of ``total`` steps: its ``step``
    as given, or its ``at`` fraction rounded up to a step (``boundary_steps``). A pure function of the recipe and the
    run length, so a resumed run maps every stage to the same step."""
    if stage.step is not None:
        return int(stage.step)
    return boundary_steps([stage.at], total)[0]


def stage_steps(stages: list, total: int, section: str) -> list[int]:
    """``stage_step`` of each stage of ``{section}.stages``; a ``step`` that is not inside the run is a RecipeError
    naming the field."""
    out = []
    for i, st in enumerate(stages):
        step = stage_step(st, total)
        if st.step is not None and not 0 <= step < total:
            raise RecipeError(
                "recipe",
                f"{section}.stages[{i}].step",
                f"step {step} is outside the run: it has {total} optimizer steps (a stage must start before step "
                f"{total}; at {total} or later it would never take effect)",
            )
        out.append(step)
    return out


@dataclass
class StagePlan:
    """When the structure changes: unfreeze stages (first trainable group per step); routing capacity anneal."""

    total: int
    recipe: Recipe
    unfreeze_steps: list[tuple[int, int]] = field(default_factory=list)  # explicit (step, trainable_from)
    growth_steps: list[int] = field(default_factory=list)  # step at which each growth stage takes effect
    groups: int = 0  # layer-group count of the current model, set by apply_structure
    base_groups: int = 0  # layer-group count before any growth (gradual unfreezing counts in these), ditto
    grown: int = 0  # growth stages applied to the current model
    # unfreeze.mode adaptive: the steps at which a group froze (decided during the run, kept in checkpoints)
    adaptive_freezes: list[int] = field(default_factory=list)

    @classmethod
    def from_recipe(cls, recipe: Recipe, total: int, growth_at: list[float] | None = None) -> StagePlan:
        """``growth_at`` replaces the recipe's growth stage starts (a budget-solved schedule).

        Raises RecipeError naming the field when a stage given by ``step`` does not start inside the run of ``total``
        steps (an epoch-based recipe's length is only known here, at run start).
        """
        plan = cls(total=total, recipe=recipe)
        u = recipe.unfreeze
        if u is not None and u.mode == "stages":
            steps = stage_steps(u.stages, total, "unfreeze")
            plan.unfreeze_steps = [(st, s.trainable_from) for st, s in zip(steps, u.stages)]
        if recipe.growth is not None:
            if growth_at is not None:
                plan.growth_steps = boundary_steps(growth_at, total)
            else:
                plan.growth_steps = stage_steps(recipe.growth.stages, total, "growth")
        return plan

    def growth_stage(self, step: int) -> int:
        """Number of growth stages in effect at ``step``."""
        return sum(1 for st in self.growth_steps if step >= st)

    def num_groups(self, model: nn.Module) -> int:
        return len(layer_groups(model))

    def trainable_from(self, step: int, num_groups: int) -> int:
        """First trainable layer group at ``step`` (0 = everything trains)."""
        u = self.recipe.unfreeze
        if u is None:
            return 0
        progress = step / max(self.total, 1)
        if u.mode == "gradual":
            # counted in the groups the model had before growth: the frozen prefix then never grows back, and
            # groups that growth adds (zero-init blocks go on top) train from the moment they exist. Counted in
            # the grown model's groups, the new top blocks would take the trainable slots and re-freeze pretrained
            # blocks that were already training (dropping their optimizer moments).
            base = self.base_groups or num_groups
            return gradual_unfreeze_from(progress, base, u.start_groups, u.every)
        if u.mode == "adaptive":
            return min(num_groups - 1, sum(1 for s in self.adaptive_freezes if step >= s))
        if u.mode == "freezeout":
            # bottom-up: the stem freezes at `start`, one more group every `every` after; the top group always trains
            return sum(1 for s in freezeout_steps(self.total, num_groups, u.every, u.start).values() if step >= s)
        current = 0
        for st, g in self.unfreeze_steps:
            if step >= st:
                current = g if g >= 0 else num_groups + g
        return current

    def annealed_freeze_steps(self) -> dict[int, int]:
        """``unfreeze.anneal_lr`` (FreezeOut): each group's freeze step, where its own LR schedule ends; else {}."""
        u = self.recipe.unfreeze
        if u is None or u.mode != "freezeout" or not u.anneal_lr:
            return {}
        return freezeout_steps(self.total, self.groups, u.every, u.start)

    def validate(self, model: nn.Module) -> None:
        G = self.num_groups(model)
        u = self.recipe.unfreeze
        if u is not None:
            for i, s in enumerate(u.stages):
                if not -G <= s.trainable_from < G:
                    raise RecipeError(
                        "recipe",
                        f"unfreeze.stages[{i}].trainable_from",
                        f"{s.trainable_from} out of range: the model has {G} layer groups",
                    )
            if u.start_groups > G:
                raise RecipeError("recipe", "unfreeze.start_groups", f"{u.start_groups} > {G} layer groups")
        g = self.recipe.growth
        if g is not None:
            if not getattr(model, "supports_growth", False):
                raise RecipeError(
                    "recipe", "growth", f"{type(model).__name__} does not declare supports_growth (layer-wise growth)"
                )
            blk = model.blocks[0]
            now = {"depth": len(model.blocks), "embed_dim": model.embed_dim, "num_heads": blk.attn.num_heads,
                   "mlp_hidden": blk.mlp.fc1.out_features, "img_size": model.model_args["img_size"]}  # fmt: skip
            for i, st in enumerate(g.stages):
                for key, current in now.items():
                    value = getattr(st, key)
                    if value is None:
                        continue
                    if value < current or (key == "depth" and value == current):
                        raise RecipeError("recipe", f"growth.stages[{i}].{key}",
                                          f"growth to a smaller {key} ({current} -> {value})")  # fmt: skip
                    now[key] = value
            if g.stages and now["img_size"] % model.patch_embed.patch_size[0]:
                raise RecipeError(
                    "recipe", "growth.stages", f"img_size {now['img_size']} is not a multiple of the patch"
                )

    def describe(self, step: int) -> dict:
        return {"trainable_from": self.trainable_from(step, self.groups), "growth_stage": self.growth_stage(step)}

    def changes_at(self, step: int) -> bool:
        return step > 0 and self.describe(step) != self.describe(step - 1)

    def rewarm_steps(self) -> list[int]:
        return [s for s in self.growth_steps if s > 0]  # growth at step 0 happens before the initial warm-up

    def restructure(self, acc, model, optimizer, ema, step: int, recipe: Recipe):
        """Apply the stage boundary at ``step`` on the unwrapped model, rebuild the optimizer with the remapped state,
        and re-prepare (a new DDP wrapper: new or newly trainable parameters must be registered with it)."""

        raw = unwrapped(acc, model)
        old_opt = getattr(optimizer, "optimizer", optimizer)
        state = optimizer_state_by_name(old_opt, raw)
        if self.growth_stage(step) > self.grown:
            g = recipe.growth
            if g.from_ema and ema is not None:  # MoGrow: the grown network starts from the averaged weights
                raw.load_state_dict(ema.module.state_dict())
            ema_state = ema.module.state_dict() if ema is not None else None
            stage_maps = grow_to(raw, self, step)
            for maps in stage_maps:  # stage by stage: a resampling map does not compose with a later one
                state = remap_optimizer(state, maps, mode="copy" if g.optimizer_state == "copy" else "zero")
                if ema_state is not None:
                    ema_state = remap_tensors(ema_state, maps, strict=False)
            if g.optimizer_state == "reset":
                state = {}
            if ema is not None:
                fresh = raw.state_dict()
                ema = ModelEmaV3(raw, decay=ema.decay, use_warmup=ema.use_warmup, device=acc.device)
                ema.module.load_state_dict({**fresh, **ema_state})
        apply_structure(raw, self, step)
        acc.free_memory()  # drop Accelerate's references so prepare() wraps the changed model again
        new_opt = build_optimizer(raw, recipe)
        load_state_by_name(new_opt, raw, state)
        model, optimizer = acc.prepare(raw, new_opt)
        return model, optimizer, ema


def grow_to(model: nn.Module, plan: StagePlan, step: int) -> list[list]:
    """Apply the growth stages due at ``step`` that the model does not have yet; returns each stage's maps.

    New weights draw from a generator seeded by (seed, stage), inside a forked RNG: every process grows identically,
    a resumed run rebuilds the same structure, and the global random stream (drop-path, dropout) is not disturbed.
    """
    stage_maps = []
    target = plan.growth_stage(step)
    while plan.grown < target:
        spec = plan.recipe.growth.stages[plan.grown].model_dump()
        seed = plan.recipe.train.seed * 1_000_003 + plan.grown
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            try:
                stage_maps.append(grow(model, spec, generator=gen))
            except ValueError as e:
                raise RecipeError("recipe", f"growth.stages[{plan.grown}]", str(e)) from None
        plan.grown += 1
    return stage_maps


def apply_structure(model: nn.Module, plan: StagePlan, step: int) -> None:
    """Bring ``model`` to the structure of ``step`` (growth stages, trainable groups). Idempotent."""
    if plan.grown == 0:  # the recipe's own model (also on resume, before the due stages are re-applied)
        plan.base_groups = plan.num_groups(model)
    grow_to(model, plan, step)
    plan.groups = plan.num_groups(model)
    set_trainable_from(model, plan.trainable_from(step, plan.groups))


def set_step_values(model: nn.Module, plan: StagePlan, step: int) -> None:
    """Per-step values: routing capacity (annealed from ``routing.start`` to its target)."""
    r = plan.recipe.routing
    if r is None or r.start is None:
        return
    progress = step / max(plan.total, 1)
    targets = resolve_route_plan(len(model.blocks), model.model_args["routing"])
    for blk, target in zip(model.blocks, targets):
        if isinstance(blk, RoutedBlock) and target is not None:
            blk.capacity = anneal_value(progress, max(r.start, target), target, r.anneal)
