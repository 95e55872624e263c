"""Recipe checks that relate several fields (what a single field's type and range cannot express): stage order and
kinds, growth sizes and budgets, what a mode or section needs from the rest of the recipe. Each raises the
``RecipeError`` built by ``err(field, message)``, so the message names the file and the field."""

from __future__ import annotations

from zoo.training.recipe_schema import (
    DataConfig,
    GrowthConfig,
    RecipeSchema,
    ScheduleConfig,
    TrainConfig,
    UnfreezeConfig,
)


def check_recipe(recipe: RecipeSchema, err) -> None:
    """Every cross-field check, section by section; the first problem raises."""
    _check_schedule(recipe.schedule, err)
    _check_data(recipe.data, recipe.train, err)
    if recipe.merging is not None:
        _check_merging(recipe, err)
    if recipe.growth is not None:
        _check_growth(recipe.growth, recipe.schedule.steps, err)
    if recipe.unfreeze is not None:
        _check_unfreeze(recipe.unfreeze, recipe.schedule.steps, recipe.schedule.warmup, err)
        if recipe.unfreeze.cache_prefix:
            _check_prefix_cache(recipe, err)
    r = recipe.routing
    if r is not None and r.weight != "sigmoid" and r.router != "linear":
        raise err("routing.weight", f"weights tokens by a learned router's score: needs router linear, not {r.router}")
    if recipe.distill is not None:
        _check_teachers(recipe, err)


def _check_teachers(recipe: RecipeSchema, err) -> None:
    resolved = recipe.distill.sources(recipe.model.pretrained)
    if None in resolved:
        raise err("distill.teacher", "'pretrained' names model.pretrained, which is not set: give a model source")
    twice = sorted({t for t in resolved if resolved.count(t) > 1})
    if twice:  # an ensemble member listed twice would silently weigh double
        raise err("distill.teacher", f"lists {twice[0]} more than once")


def _check_schedule(s: ScheduleConfig, err) -> None:
    if s.warmup + s.hold >= 1:
        raise err("schedule.hold", f"must leave room to decay: warmup + hold < 1, got {s.warmup} + {s.hold}")


def _check_data(d: DataConfig, t: TrainConfig, err) -> None:
    if d.auto_augment is not None:
        from zoo.data.augment import ImageAugment

        try:  # timm parses the policy string: a typo fails here, before anything is written
            ImageAugment(d.auto_augment, 32, (0.5, 0.5, 0.5))
        except ValueError as e:
            raise err("data.auto_augment", str(e)) from e
    if (d.mixup > 0 or d.cutmix > 0) and (d.batch_size // t.accumulation) % 2:
        raise err("data.mixup", "Mixup / CutMix pair images within a batch: data.batch_size per step must be even")
    if d.batch_size % t.accumulation:
        raise err("train.accumulation", f"must divide data.batch_size ({d.batch_size})")
    if d.streaming:  # zoo.data.streaming: a Hugging Face stream, whose labels are read with its images
        if not d.name.startswith("hf:"):
            raise err("data.streaming", f"streams Hugging Face datasets (data.name: hf:NAME), not {d.name!r}")
        if d.classes is not None:
            raise err("data.classes", "not available with data.streaming (no labels in memory to filter on)")
        if d.cache is True:
            raise err("data.cache", "true decodes the dataset into memory, data.streaming never does: set one")


def _check_merging(recipe: RecipeSchema, err) -> None:
    if recipe.routing is not None:  # both decide which tokens a block sees
        raise err("merging", "cannot be combined with routing: set one of them")
    if recipe.growth is not None and any(st.depth is not None for st in recipe.growth.stages):
        raise err("merging", "cannot be combined with depth growth (the merge plan is per block of a fixed depth)")


def _check_stage_starts(section: str, stages: list, first_step: int, total: int | None, err) -> None:
    """Each stage starts at exactly one of ``at`` / ``step``, one kind per list, strictly increasing, and (when the
    run length is fixed by ``schedule.steps``, ``total``) inside the run; an epoch-based run checks steps at its start.
    """
    low = "(0, 1)" if first_step > 0 else "[0, 1)"
    prev_at, prev_step, kind = -1.0 if first_step == 0 else 0.0, first_step - 1, None
    for i, st in enumerate(stages):
        where = f"{section}.stages[{i}]"
        if st.at is None and st.step is None:
            raise err(f"{where}.at", "required: set `at` (fraction of training) or `step` (optimizer step)")
        if st.at is not None and st.step is not None:
            raise err(f"{where}.step", "set either `at` (fraction of training) or `step` (optimizer step), not both")
        this = "at" if st.at is not None else "step"
        if kind is not None and this != kind:
            msg = f"mixes `at` and `step` stages: the first stage uses `{kind}`; give every stage the same kind"
            raise err(f"{where}.{this}", msg)
        kind = this
        if st.at is not None:
            if not prev_at < st.at < 1:
                raise err(f"{where}.at", f"stages must be in increasing order within {low}, got {st.at}")
            prev_at = st.at
            continue
        if st.step <= prev_step:
            msg = f"stages must be in strictly increasing order from step {first_step}, got {st.step}"
            raise err(f"{where}.step", msg)
        if total is not None and st.step >= total:
            msg = f"step {st.step} is outside the run: schedule.steps is {total} (a stage must start before it)"
            raise err(f"{where}.step", msg)
        prev_step = st.step


def _check_growth(g: GrowthConfig, total: int | None, err) -> None:
    for key in ("budget_flops", "budget_seconds"):
        if getattr(g, key) is not None:
            for i, st in enumerate(g.stages):
                if st.step is not None:
                    msg = f"growth.{key} solves the stage boundaries: give each stage a nominal `at` fraction "
                    raise err(f"growth.stages[{i}].step", msg + "(the solver moves it to fit the budget), not a step")
    # a stage at step 0 grows the model as it is built (a loaded pretrained model before its first step)
    _check_stage_starts("growth", g.stages, 0, total, err)
    prev_depth = None
    for i, st in enumerate(g.stages):
        if all(v is None for v in (st.depth, st.embed_dim, st.num_heads, st.mlp_hidden, st.img_size)):
            raise err(f"growth.stages[{i}]", "grows nothing: set depth, embed_dim, num_heads, mlp_hidden or img_size")
        if st.depth is not None:
            if prev_depth is not None and st.depth <= prev_depth:
                msg = f"growth to a smaller or equal depth ({prev_depth} -> {st.depth})"
                raise err(f"growth.stages[{i}].depth", msg)
            prev_depth = st.depth
    if g.budget_flops is not None and g.budget_seconds is not None:
        raise err("growth.budget_seconds", "set either budget_flops or budget_seconds, not both")
    for key in ("budget_flops", "budget_seconds"):
        if getattr(g, key) is not None and not g.stages:
            raise err(f"growth.{key}", "needs growth stages (the solver fits their lengths to the budget)")


def _check_prefix_cache(recipe, err) -> None:
    """A cached prefix output is reusable only when the prefix's input repeats: flips only (two views per image),
    and a prefix that stays the same model (zoo.training.prefix_cache)."""
    d = recipe.data
    changes_input = {
        "data.crop_pad": d.crop_pad != 0,
        "data.auto_augment": d.auto_augment is not None,
        "data.reprob": d.reprob > 0,
        "data.mixup": d.mixup > 0,
        "data.cutmix": d.cutmix > 0,
    }
    for field, bad in changes_input.items():
        if bad:
            raise err(
                field,
                "changes each image's input at random, so the cached frozen prefix "
                "(unfreeze.cache_prefix) could not be reused; set it off (flips are cached: two views per image)",
            )
    if d.streaming:
        raise err("unfreeze.cache_prefix", "not available with data.streaming (a stream's images have no index)")
    for section in ("growth", "distill", "merging"):
        if getattr(recipe, section) is not None:
            why = {"growth": "growth changes the prefix", "distill": "the teacher needs the images",
                   "merging": "merged tokens carry per-batch sizes"}[section]  # fmt: skip
            raise err("unfreeze.cache_prefix", f"not available with a {section} section ({why})")


def _check_unfreeze(u: UnfreezeConfig, total: int | None, warmup: float, err) -> None:
    if u.anneal_lr and u.mode != "freezeout":
        msg = f"anneals each group's LR to its freeze step: needs mode freezeout, not {u.mode}"
        raise err("unfreeze.anneal_lr", msg)
    first_freeze = u.every if u.start is None else u.start
    if u.anneal_lr and u.mode == "freezeout" and first_freeze <= warmup:
        # the first group would freeze inside the warm-up: its LR would only ramp up and stop at its peak
        field = "unfreeze.start" if u.start is not None else "unfreeze.every"
        raise err(field, f"the first group freezes at {first_freeze:g}, inside schedule.warmup ({warmup:g}): with "
                         "anneal_lr its LR would never decay; freeze later or shorten the warm-up")  # fmt: skip
    if u.scale_lr and not u.anneal_lr:
        raise err("unfreeze.scale_lr", "scales each group's annealed LR: needs anneal_lr: true")
    if u.start is not None and u.mode != "freezeout":
        raise err("unfreeze.start", f"is when bottom-up freezing begins: needs mode freezeout, not {u.mode}")
    _check_stage_starts("unfreeze", u.stages, 0, total, err)
