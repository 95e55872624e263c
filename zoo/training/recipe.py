"""Recipes: typed dataclasses loaded from YAML, validated with errors that name the file and field.

A recipe is data, not code: it round-trips through ``to_dict`` so it can be saved with every run, hashed into the
manifest, and embedded in checkpoints and model cards. Unknown keys are errors (a typo must never silently fall back
to a default). ``--set a.b=value`` overrides parse ``value`` as YAML, so numbers, lists and null work.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from zoo.utils.strict_yaml import StrictYAMLError, load_strict_yaml

# The recipe schema's version, recorded in every run's manifest. Fields added after version 1, with the version that
# added them and their neutral value: the value that reproduces the behaviour from before the field existed. A field's
# neutral value never changes once released (it is part of the identity of every run recorded before it).
SCHEMA_VERSION = 4
ADDED_FIELDS: dict[str, tuple[int, Any]] = {
    "distill": (4, None),  # a whole section: its neutral value is its absence
    "merging": (4, None),
    "unfreeze.anneal_lr": (4, False),
    "unfreeze.check_every": (4, 0.05),
    "unfreeze.threshold": (4, 0.01),
    "data.val_split": (2, None),
    "data.cache": (3, "auto"),
    "data.cache_max_mb": (3, 1024.0),
    "data.image_column": (3, None),
    "data.label_column": (3, None),
    "data.auto_augment": (3, None),
    "data.reprob": (3, 0.0),
    "data.remode": (3, "pixel"),
    "data.mixup": (3, 0.0),
    "data.cutmix": (3, 0.0),
    "data.mix_prob": (3, 1.0),
    "data.mix_switch_prob": (3, 0.5),
    "schedule.decay": (2, "cosine"),
    "schedule.hold": (2, 0.0),
    "train.ema_warmup": (2, False),
}


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the dotted field."""

    def __init__(self, source: str, field_path: str, message: str):
        self.source, self.field_path = source, field_path
        super().__init__(f"{source}: {field_path}: {message}")


@dataclass
class ModelConfig:
    name: str = "zoo_vit_micro_p4"
    args: dict[str, Any] = field(default_factory=dict)
    # local-dir:FOLDER, hf-hub:ORG/NAME, or a .safetensors file of a timm/zoo ViT; None trains from scratch
    pretrained: str | None = None
    # reset the classifier to the data's class count when it differs from the pretrained one
    reset_head: bool = True


@dataclass
class DataConfig:
    # fashion-mnist | imagefolder:PATH | hf:NAME (a hub dataset, a save_to_disk folder or a folder of data files)
    name: str = "fashion-mnist"
    path: str | None = None
    img_size: int | None = None  # imagefolder / hf: resize to this (default: the model's)
    in_chans: int | None = None  # imagefolder / hf: 1 (grey) or 3 (RGB) (default: the model's)
    # imagefolder / hf: true = decode into memory at start-up, false = decode on the fly in DataLoader workers,
    # auto = in memory when the decoded splits fit cache_max_mb
    cache: bool | str = "auto"
    cache_max_mb: float = 1024.0
    image_column: str | None = None  # hf: the image column (default: the first Image feature)
    label_column: str | None = None  # hf: the label column (default: the first ClassLabel feature)
    classes: list[int] | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    # hold out this many training images (a stratified, seed-independent split) and evaluate on them instead of the
    # test split: every choice of setting is made on it, the test split only reports
    val_split: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 512
    crop_pad: int = 2
    flip: bool = True
    # timm's per-image policy (rand-m9-mstd0.5, augmix-m5-w4-d2, original, ...) or trivialaugment
    auto_augment: str | None = None
    reprob: float = 0.0  # random erasing probability per image (timm RandomErasing)
    remode: str = "pixel"  # random erasing fill: pixel | rand | const
    mixup: float = 0.0  # Mixup alpha (timm Mixup; 0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    mix_prob: float = 1.0  # probability of mixing a batch
    mix_switch_prob: float = 0.5  # with both on: probability of CutMix instead of Mixup
    # DataLoader workers building batches ahead of the step; 0 = in the training process for data in memory, one per
    # core (up to 4) for data decoded on the fly
    num_workers: int = 0


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # layer-wise LR decay: group g of G gets lr * layer_decay ** (G - 1 - g); None disables
    layer_decay: float | None = None
    # extra LR multipliers by parameter-name substring, e.g. {router: 10.0}
    lr_mult: dict[str, float] = field(default_factory=dict)
    clip_grad: float | None = 1.0


@dataclass
class ScheduleConfig:
    epochs: float = 10.0
    steps: int | None = None  # overrides epochs when set
    warmup: float = 0.05  # fraction of total steps
    min_lr_ratio: float = 0.0
    decay: str = "cosine"  # cosine | linear: the shape of the decay from the peak LR to min_lr_ratio
    hold: float = 0.0  # fraction of total steps held at the peak LR after warmup (warmup-stable-decay when > 0)
    rewarmup: float = 0.0  # fraction of total steps re-warmed after each growth


@dataclass
class TrainConfig:
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto
    accumulation: int = 1
    label_smoothing: float = 0.1
    ema: float | None = None  # EMA decay, e.g. 0.999; evaluated and exported when set
    # EMA decay warm-up (timm ModelEmaV3: decay 1 - (1 + step)^-2/3, capped at `ema`), so it does not lag a short run
    ema_warmup: bool = False
    eval_every: float = 1.0  # epochs
    log_every: int = 50  # steps
    checkpoint_every: int | None = None  # steps; None = end of each epoch
    keep_checkpoints: int = 2
    nonfinite: str = "stop"  # stop | skip
    tracker: str | None = None  # tensorboard | wandb | trackio | ...
    grad_checkpointing: str | None = None  # None | full | selective
    checkpoint_every_k_blocks: int = 1


@dataclass
class RoutingConfig:
    """Routed blocks and a capacity schedule: from ``start`` to ``capacity`` over the first ``anneal`` of training."""

    capacity: float | list[float | None] = 0.5
    layers: str | list[int] = "every_other"
    router: str = "linear"
    context: str = "selected"
    start: float | None = None
    anneal: float = 0.0


@dataclass
class MergingConfig:
    """Token merging (ToMe, ``zoo.nn.merging``): ``r`` tokens merged per block (one number for the chosen ``layers``,
    or one per block). Training-free, so it also converts a pretrained model as it loads."""

    r: int | list[int] = 4
    layers: str | list[int] = "all"


@dataclass
class GrowthStage:
    # where this stage starts: exactly one of `at` (fraction of training) or `step` (optimizer step)
    at: float | None = None
    step: int | None = None
    depth: int | None = None
    depth_op: str = "zero"  # zero | stack | interpolate
    embed_dim: int | None = None
    num_heads: int | None = None
    mlp_hidden: int | None = None
    img_size: int | None = None
    noise: float = 0.0


@dataclass
class GrowthConfig:
    stages: list[GrowthStage] = field(default_factory=list)
    from_ema: bool = False
    # fit the stage lengths to a budget (total training FLOPs, or seconds measured on this machine)
    budget_flops: float | None = None
    budget_seconds: float | None = None
    optimizer_state: str = "zero"  # zero (new entries' moments 0, MSG) | copy (duplicates copy moments) | reset


@dataclass(kw_only=True)
class UnfreezeStage:
    # where this stage starts: exactly one of `at` (fraction of training) or `step` (optimizer step)
    at: float | None = None
    step: int | None = None
    trainable_from: int  # first trainable layer group (0 = stem: everything trainable)


@dataclass
class UnfreezeConfig:
    # gradual (top-down unfreezing) | stages | freezeout (bottom-up freezing on a schedule) | adaptive (bottom-up,
    # when the lowest trainable group stops changing)
    mode: str = "gradual"
    every: float = 0.1  # gradual: one more group every this fraction of training
    start_groups: int = 1  # gradual: groups trainable at the start, from the top (1 = head + final norm)
    # freezeout: each group's LR decays to zero (the schedule's decay shape) at the step it freezes (FreezeOut)
    anneal_lr: bool = False
    # adaptive: every check_every of training, the lowest trainable group freezes when its relative weight change
    # since the previous check is below threshold
    check_every: float = 0.05
    threshold: float = 0.01
    stages: list[UnfreezeStage] = field(default_factory=list)


@dataclass
class DistillConfig:
    """Knowledge distillation from a fixed teacher: loss = (1 - weight) * task loss + weight * distillation loss."""

    # a model source (local-dir:, hf-hub:, a published tag, a folder), or `pretrained`: the model this run starts from
    # (model.pretrained), the usual teacher of a conversion fine-tune
    teacher: str = "pretrained"
    weight: float = 0.5
    # soft: KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et al.);
    # hard: cross-entropy on the teacher's top class (DeiT's hard distillation)
    kind: str = "soft"
    temperature: float = 1.0


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    routing: RoutingConfig | None = None
    merging: MergingConfig | None = None
    growth: GrowthConfig | None = None
    unfreeze: UnfreezeConfig | None = None
    distill: DistillConfig | None = None

    def to_dict(self) -> dict:
        """Plain data, every field (what ``recipe.yaml`` holds); a stage's unset ``at`` / ``step`` is left out, so
        recipes written before ``step`` existed keep their hash (manifests, checkpoints and model cards record it)."""
        data = dataclasses.asdict(self)
        for section in ("growth", "unfreeze"):
            for st in (data.get(section) or {}).get("stages") or []:
                for key in ("at", "step"):
                    if st.get(key) is None:
                        st.pop(key, None)
        return data

    def identity(self) -> dict:
        """What the recipe hash covers: ``to_dict`` without the fields added after the first schema that hold their
        neutral value (``ADDED_FIELDS``). Adding a field whose default reproduces the old behaviour therefore leaves
        every existing hash unchanged, while any other value of it, a changed default included, enters the hash
        (and every field of the first schema is always covered, defaults included)."""
        data = self.to_dict()
        for dotted, (_, neutral) in ADDED_FIELDS.items():
            if "." not in dotted:  # an added section
                if data.get(dotted) == neutral:
                    del data[dotted]
                continue
            section, key = dotted.split(".")
            values = data.get(section)
            if isinstance(values, dict) and key in values and values[key] == neutral:
                del values[key]
        return data


# ------------------------------------------------------------------------------------------------- typed building
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# a decimal number in any of the spellings people write (1e-3, 1E3, .5, -2., +4e+2), which YAML 1.1 partly misses
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build nested dataclasses; raise RecipeError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise RecipeError(source, where, f"must not be null (expected {_type_name(tp)})")
        real = [opt for opt in options if opt is not type(None)]
        if len(real) == 1:  # an optional value: report the inner error, which names the exact field (a.b[0].c)
            return _coerce(value, real[0], where, source)
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, where, source)
            except RecipeError as e:
                errors.append(e)
        raise RecipeError(source, where, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(source, where, f"expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, source, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(source, where, f"expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(source, where, f"expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}", source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads `1e-3` as a string; it is a number to whoever wrote it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(source, where, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise RecipeError(source, where, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(source, where, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(source, where, f"expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(source, where, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} at {where}")


def build_dataclass(cls: type, data: dict, source: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise RecipeError(source, where, f"unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], where, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            where = f"{prefix}.{f.name}" if prefix else f.name
            raise RecipeError(source, where, "required field is missing")
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------------------ overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], yaml-parsed value)."""
    if "=" not in text:
        raise RecipeError("--set", text, "expected key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise RecipeError("--set", key, f"value is not valid YAML: {e}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides to a raw recipe mapping (validation happens after, on the merged result)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError("--set", ".".join(path[: i + 1]), "is not a mapping")
            node = nxt
        node[path[-1]] = value
    return data


# ----------------------------------------------------------------------------------------------------- validation
def validate(recipe: Recipe, source: str) -> Recipe:
    """Cross-field checks the type system cannot express, section by section; the first problem raises."""

    def err(where: str, msg: str) -> RecipeError:
        return RecipeError(source, where, msg)

    _check_optim(recipe.optim, err)
    _check_schedule(recipe.schedule, err)
    _check_train(recipe.train, err)
    _check_data(recipe.data, recipe.train, err)
    if recipe.routing is not None:
        _check_routing(recipe.routing, err)
    if recipe.merging is not None:
        _check_merging(recipe, err)
    if recipe.growth is not None:
        _check_growth(recipe.growth, recipe.schedule.steps, err)
    if recipe.unfreeze is not None:
        _check_unfreeze(recipe.unfreeze, recipe.schedule.steps, err)
    if recipe.distill is not None:
        _check_distill(recipe.distill, recipe.model, err)
    return recipe


def _check_optim(o: OptimConfig, err) -> None:
    if o.name not in ("adamw", "sgd"):
        raise err("optim.name", f"must be 'adamw' or 'sgd', got {o.name!r}")
    if o.lr <= 0:
        raise err("optim.lr", f"must be > 0, got {o.lr}")
    if o.layer_decay is not None and not 0 < o.layer_decay <= 1:
        raise err("optim.layer_decay", f"must be in (0, 1], got {o.layer_decay}")
    if len(o.betas) != 2:
        raise err("optim.betas", "must have two entries")
    for i, b in enumerate(o.betas):
        if not 0 <= b < 1:
            raise err(f"optim.betas[{i}]", f"must be in [0, 1), got {b}")
    if o.weight_decay < 0:
        raise err("optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    if o.eps <= 0:
        raise err("optim.eps", f"must be > 0, got {o.eps}")
    # clip_grad_norm_ with a negative max_norm flips every gradient: the run diverges and exits 0
    if o.clip_grad is not None and o.clip_grad <= 0:
        raise err("optim.clip_grad", f"must be > 0 (or null for no clipping), got {o.clip_grad}")
    for key, mult in o.lr_mult.items():
        if mult <= 0:
            raise err(f"optim.lr_mult.{key}", f"must be > 0, got {mult}")


def _check_schedule(s: ScheduleConfig, err) -> None:
    if s.steps is None and s.epochs <= 0:
        raise err("schedule.epochs", f"must be > 0, got {s.epochs}")
    if s.steps is not None and s.steps <= 0:
        raise err("schedule.steps", f"must be > 0, got {s.steps}")
    if not 0 <= s.warmup < 1:
        raise err("schedule.warmup", f"must be a fraction in [0, 1), got {s.warmup}")
    if s.decay not in ("cosine", "linear"):
        raise err("schedule.decay", f"must be 'cosine' or 'linear', got {s.decay!r}")
    if not 0 <= s.hold < 1 or s.warmup + s.hold >= 1:
        raise err("schedule.hold", f"must be a fraction in [0, 1) with warmup + hold < 1, got {s.hold}")
    if not 0 <= s.min_lr_ratio <= 1:
        raise err("schedule.min_lr_ratio", f"must be in [0, 1], got {s.min_lr_ratio}")
    if not 0 <= s.rewarmup < 1:
        raise err("schedule.rewarmup", f"must be a fraction in [0, 1), got {s.rewarmup}")


def _check_train(t: TrainConfig, err) -> None:
    if t.precision not in ("fp32", "bf16", "fp16", "auto"):
        raise err("train.precision", f"must be fp32, bf16, fp16 or auto, got {t.precision!r}")
    if t.accumulation < 1:
        raise err("train.accumulation", f"must be >= 1, got {t.accumulation}")
    if t.nonfinite not in ("stop", "skip"):
        raise err("train.nonfinite", f"must be 'stop' or 'skip', got {t.nonfinite!r}")
    if t.keep_checkpoints < 1:
        raise err("train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    if t.ema is not None and not 0 < t.ema < 1:
        raise err("train.ema", f"must be in (0, 1), got {t.ema}")
    if t.grad_checkpointing not in (None, "full", "selective"):
        raise err("train.grad_checkpointing", f"must be null, 'full' or 'selective', got {t.grad_checkpointing!r}")
    if t.seed < 0:
        raise err("train.seed", f"must be >= 0, got {t.seed}")
    if not 0 <= t.label_smoothing < 1:
        raise err("train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
    if t.eval_every <= 0:
        raise err("train.eval_every", f"must be > 0 (epochs), got {t.eval_every}")
    for key in ("log_every", "checkpoint_every", "checkpoint_every_k_blocks"):
        value = getattr(t, key)
        if value is not None and value < 1:
            raise err(f"train.{key}", f"must be >= 1, got {value}")


def _check_data(d: DataConfig, t: TrainConfig, err) -> None:
    if d.batch_size < 1:
        raise err("data.batch_size", f"must be >= 1, got {d.batch_size}")
    for key in ("eval_batch_size", "train_subset", "test_subset", "img_size"):
        value = getattr(d, key)
        if value is not None and value < 1:
            raise err(f"data.{key}", f"must be >= 1, got {value}")
    for key in ("crop_pad", "num_workers"):
        if getattr(d, key) < 0:
            raise err(f"data.{key}", f"must be >= 0, got {getattr(d, key)}")
    if d.in_chans not in (None, 1, 3):
        raise err("data.in_chans", f"must be 1 (grey) or 3 (RGB), got {d.in_chans}")
    if d.cache not in (True, False, "auto"):
        raise err("data.cache", f"must be true, false or auto, got {d.cache!r}")
    if not d.cache_max_mb >= 0:
        raise err("data.cache_max_mb", f"must be >= 0 (MB), got {d.cache_max_mb}")
    for key in ("reprob", "mix_prob", "mix_switch_prob"):
        if not 0 <= getattr(d, key) <= 1:
            raise err(f"data.{key}", f"must be a probability in [0, 1], got {getattr(d, key)}")
    for key in ("mixup", "cutmix"):
        if getattr(d, key) < 0:
            raise err(f"data.{key}", f"must be >= 0 (a Beta alpha; 0 = off), got {getattr(d, key)}")
    if d.remode not in ("pixel", "rand", "const"):
        raise err("data.remode", f"must be pixel, rand or const, got {d.remode!r}")
    if d.auto_augment is not None:
        from zoo.data.augment import ImageAugment

        try:  # timm parses the policy string: a typo fails here, before anything is written
            ImageAugment(d.auto_augment, 32, (0.5, 0.5, 0.5))
        except ValueError as e:
            raise err("data.auto_augment", str(e)) from e
    if (d.mixup > 0 or d.cutmix > 0) and (d.batch_size // t.accumulation) % 2:
        raise err("data.mixup", "Mixup / CutMix pair images within a batch: data.batch_size per step must be even")
    if d.val_split is not None and d.val_split < 1:
        raise err("data.val_split", f"must be >= 1 (images held out of the training set), got {d.val_split}")
    if d.batch_size % t.accumulation:
        raise err("train.accumulation", f"must divide data.batch_size ({d.batch_size})")


def _check_routing(r: RoutingConfig, err) -> None:
    caps = r.capacity if isinstance(r.capacity, list) else [r.capacity]
    for i, c in enumerate(caps):
        if c is not None and not 0 < c <= 1:
            where = f"routing.capacity[{i}]" if isinstance(r.capacity, list) else "routing.capacity"
            raise err(where, f"must be in (0, 1], got {c}")
    if r.start is not None and not 0 < r.start <= 1:
        raise err("routing.start", f"must be in (0, 1], got {r.start}")
    if r.router not in ("linear", "cls_attn"):
        raise err("routing.router", f"must be 'linear' or 'cls_attn', got {r.router!r}")
    if r.context not in ("selected", "all"):
        raise err("routing.context", f"must be 'selected' or 'all', got {r.context!r}")
    if isinstance(r.layers, str) and r.layers not in ("every_other", "all"):
        raise err("routing.layers", f"must be 'every_other', 'all' or a list of block indices, got {r.layers!r}")
    if not 0 <= r.anneal < 1:
        raise err("routing.anneal", f"must be a fraction in [0, 1), got {r.anneal}")


def _check_merging(recipe: Recipe, err) -> None:
    m = recipe.merging
    rs = m.r if isinstance(m.r, list) else [m.r]
    for i, v in enumerate(rs):
        if v < 0:
            where = f"merging.r[{i}]" if isinstance(m.r, list) else "merging.r"
            raise err(where, f"must be >= 0 tokens per block, got {v}")
    if isinstance(m.layers, str) and m.layers != "all":
        raise err("merging.layers", f"must be 'all' or a list of block indices, got {m.layers!r}")
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
    _check_stage_starts("growth", g.stages, 1, total, err)
    prev_depth = None
    for i, st in enumerate(g.stages):
        if all(v is None for v in (st.depth, st.embed_dim, st.num_heads, st.mlp_hidden, st.img_size)):
            raise err(f"growth.stages[{i}]", "grows nothing: set depth, embed_dim, num_heads, mlp_hidden or img_size")
        if st.depth is not None:
            if prev_depth is not None and st.depth <= prev_depth:
                msg = f"growth to a smaller or equal depth ({prev_depth} -> {st.depth})"
                raise err(f"growth.stages[{i}].depth", msg)
            prev_depth = st.depth
        for key in ("depth", "embed_dim", "num_heads", "mlp_hidden", "img_size"):
            value = getattr(st, key)
            if value is not None and value < 1:
                raise err(f"growth.stages[{i}].{key}", f"must be >= 1, got {value}")
        if st.noise < 0:
            raise err(f"growth.stages[{i}].noise", f"must be >= 0, got {st.noise}")
        if st.depth_op not in ("zero", "stack", "interpolate"):
            raise err(f"growth.stages[{i}].depth_op", f"must be zero, stack or interpolate, got {st.depth_op!r}")
    if g.budget_flops is not None and g.budget_seconds is not None:
        raise err("growth.budget_seconds", "set either budget_flops or budget_seconds, not both")
    for key in ("budget_flops", "budget_seconds"):
        value = getattr(g, key)
        if value is not None and (value <= 0 or not g.stages):
            raise err(f"growth.{key}", "must be > 0 and needs growth stages")
    if g.optimizer_state not in ("zero", "copy", "reset"):
        raise err("growth.optimizer_state", f"must be 'zero', 'copy' or 'reset', got {g.optimizer_state!r}")


def _check_unfreeze(u: UnfreezeConfig, total: int | None, err) -> None:
    if u.mode not in ("gradual", "stages", "freezeout", "adaptive"):
        raise err("unfreeze.mode", f"must be gradual, stages, freezeout or adaptive, got {u.mode!r}")
    if not 0 < u.check_every < 1:
        raise err("unfreeze.check_every", f"must be a fraction in (0, 1), got {u.check_every}")
    if u.threshold <= 0:
        raise err("unfreeze.threshold", f"must be > 0 (relative weight change), got {u.threshold}")
    if u.mode == "gradual" and not 0 < u.every < 1:
        raise err("unfreeze.every", f"must be a fraction in (0, 1), got {u.every}")
    if u.start_groups < 1:
        raise err("unfreeze.start_groups", f"must be >= 1, got {u.start_groups}")
    if u.anneal_lr and u.mode != "freezeout":
        msg = f"anneals each group's LR to its freeze step: needs mode freezeout, not {u.mode}"
        raise err("unfreeze.anneal_lr", msg)
    if u.mode == "freezeout" and not 0 < u.every < 1:
        raise err("unfreeze.every", f"must be a fraction in (0, 1), got {u.every}")
    _check_stage_starts("unfreeze", u.stages, 0, total, err)


def _check_distill(d: DistillConfig, m: ModelConfig, err) -> None:
    if not 0 < d.weight <= 1:
        raise err("distill.weight", f"must be in (0, 1] (the distillation share of the loss), got {d.weight}")
    if d.temperature <= 0:
        raise err("distill.temperature", f"must be > 0, got {d.temperature}")
    if d.kind not in ("soft", "hard"):
        raise err("distill.kind", f"must be 'soft' or 'hard', got {d.kind!r}")
    if d.teacher == "pretrained" and m.pretrained is None:
        raise err("distill.teacher", "'pretrained' names model.pretrained, which is not set: give a model source")


def recipe_from_dict(data: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(source, "<root>", f"expected a mapping at the top level, got {type(data).__name__}")
    return validate(build_dataclass(Recipe, data, source), source)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, "<file>", "recipe file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(source, "<file>", f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise RecipeError(source, "<file>", f"cannot be read: {e.strerror or e}") from None
    try:
        data = load_strict_yaml(text)
    except StrictYAMLError as e:
        raise RecipeError(source, "<file>", str(e)) from None
    except yaml.YAMLError as e:
        raise RecipeError(source, "<file>", f"not valid YAML: {e}") from None
    if data is None:  # an empty file would silently train every default for 10 epochs
        raise RecipeError(source, "<file>", "the recipe is empty; write at least `model:` and `data:`")
    if not isinstance(data, dict):
        raise RecipeError(source, "<root>", f"expected a mapping at the top level, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with --set)"
    return recipe_from_dict(data, source)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def flatten_dotted(d: dict, prefix: str = "") -> dict:
    """A nested recipe mapping as ``{"section.key": value}`` (empty mappings stay values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
