"""The recipe's sections as pydantic v2 models: field types, defaults and ranges, declared once.

Strict mode (no silent coercion: ``"5"`` is not an integer, ``1`` not a boolean), unknown keys forbidden (a typo
must never fall back to a default), every float finite. The one coercion kept is YAML 1.1's: PyYAML reads ``1e-3``
(no dot) as a string, which is a number to whoever wrote it (``Float``). Checks that relate several fields (stage
order, growth sizes, what a mode needs) live in ``zoo.training.recipe_checks``; turning pydantic's errors into
messages that name the file and field is ``zoo.training.recipe``'s job.

Field order and defaults are part of every recipe hash (``Recipe.identity``): append new fields, never reorder.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# a decimal number in any of the spellings people write (1e-3, 1E3, .5, -2., +4e+2), which YAML 1.1 partly misses
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml_number(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


Float = Annotated[float, BeforeValidator(_yaml_number)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]  # a share of training: [0, 1)
Positive = Annotated[Float, Field(gt=0)]
Probability = Annotated[Float, Field(ge=0, le=1)]
Capacity = Annotated[Float, Field(gt=0, le=1)]  # a routed share of tokens: (0, 1]
Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ModelConfig(Section):
    name: str = "zoo_vit_micro_p4"
    args: dict[str, Any] = Field(default_factory=dict)
    # local-dir:FOLDER, hf-hub:ORG/NAME, or a .safetensors file of a timm/zoo ViT; None trains from scratch
    pretrained: str | None = None
    # reset the classifier to the data's class count when it differs from the pretrained one
    reset_head: bool = True


class DataConfig(Section):
    # fashion-mnist | imagefolder:PATH | hf:NAME (a hub dataset, a save_to_disk folder or a folder of data files)
    name: str = "fashion-mnist"
    path: str | None = None
    img_size: Count | None = None  # imagefolder / hf: resize to this (default: the model's)
    in_chans: Literal[1, 3] | None = None  # imagefolder / hf: 1 (grey) or 3 (RGB) (default: the model's)
    # imagefolder / hf: true = decode into memory at start-up, false = decode on the fly in DataLoader workers,
    # auto = in memory when the decoded splits fit cache_max_mb
    cache: bool | Literal["auto"] = "auto"
    cache_max_mb: Annotated[Float, Field(ge=0)] = 1024.0
    # hf: stream the dataset (read in order from the hub or local data files, never downloaded or held whole) instead
    # of reading it as memory-mapped Arrow files; shuffled by shard order and a buffer of shuffle_buffer examples
    streaming: bool = False
    shuffle_buffer: Count = 10_000
    image_column: str | None = None  # hf: the image column (default: the first Image feature)
    label_column: str | None = None  # hf: the label column (default: the first ClassLabel feature)
    classes: list[int] | None = None
    train_subset: Count | None = None
    test_subset: Count | None = None
    # hold out this many training images (a stratified, seed-independent split) and evaluate on them instead of the
    # test split: every choice of setting is made on it, the test split only reports
    val_split: Count | None = None
    batch_size: Count = 128
    eval_batch_size: Count = 512
    crop_pad: NonNegative = 2
    flip: bool = True
    # timm's per-image policy (rand-m9-mstd0.5, augmix-m5-w4-d2, original, ...) or trivialaugment
    auto_augment: str | None = None
    reprob: Probability = 0.0  # random erasing probability per image (timm RandomErasing)
    remode: Literal["pixel", "rand", "const"] = "pixel"  # random erasing fill
    mixup: Annotated[Float, Field(ge=0)] = 0.0  # Mixup alpha (timm Mixup; 0 = off)
    cutmix: Annotated[Float, Field(ge=0)] = 0.0  # CutMix alpha (0 = off)
    mix_prob: Probability = 1.0  # probability of mixing a batch
    mix_switch_prob: Probability = 0.5  # with both on: probability of CutMix instead of Mixup
    # DataLoader workers building batches ahead of the step; 0 = in the training process for data in memory, one per
    # core (up to 4) for data decoded on the fly
    num_workers: NonNegative = 0


class OptimConfig(Section):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: Positive = 1e-3
    weight_decay: Annotated[Float, Field(ge=0)] = 0.05
    betas: Annotated[list[Annotated[Float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.9, 0.999]
    )
    eps: Positive = 1e-8
    # layer-wise LR decay: group g of G gets lr * layer_decay ** (G - 1 - g); None disables
    layer_decay: Annotated[Float, Field(gt=0, le=1)] | None = None
    # extra LR multipliers by parameter-name substring, e.g. {router: 10.0}
    lr_mult: dict[str, Positive] = Field(default_factory=dict)
    # clip_grad_norm_ with a negative max_norm flips every gradient: the run diverges and exits 0
    clip_grad: Positive | None = 1.0


class ScheduleConfig(Section):
    epochs: Positive = 10.0
    steps: Count | None = None  # overrides epochs when set
    warmup: Fraction = 0.05  # fraction of total steps
    min_lr_ratio: Probability = 0.0
    decay: Literal["cosine", "linear"] = "cosine"  # the shape of the decay from the peak LR to min_lr_ratio
    hold: Fraction = 0.0  # fraction of total steps held at the peak LR after warmup (warmup-stable-decay when > 0)
    rewarmup: Fraction = 0.0  # fraction of total steps re-warmed after each growth


class TrainConfig(Section):
    seed: NonNegative = 0
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    accumulation: Count = 1
    label_smoothing: Fraction = 0.1
    ema: Annotated[Float, Field(gt=0, lt=1)] | None = None  # EMA decay, e.g. 0.999; evaluated and exported when set
    # EMA decay warm-up (timm ModelEmaV3: decay 1 - (1 + step)^-2/3, capped at `ema`), so it does not lag a short run
    ema_warmup: bool = False
    eval_every: Positive = 1.0  # epochs
    log_every: Count = 50  # steps
    checkpoint_every: Count | None = None  # steps; None = end of each epoch
    keep_checkpoints: Count = 2
    nonfinite: Literal["stop", "skip"] = "stop"
    tracker: str | None = None  # tensorboard | wandb | trackio | ...
    grad_checkpointing: Literal["full", "selective"] | None = None
    checkpoint_every_k_blocks: Count = 1
    # torch.compile the model through Accelerate's TorchDynamo plugin with this backend (inductor: fused kernels;
    # aot_eager: the graph capture without code generation, for debugging); None: eager
    compile: Literal["inductor", "aot_eager", "eager"] | None = None


class RoutingConfig(Section):
    """Routed blocks and a capacity schedule: from ``start`` to ``capacity`` over the first ``anneal`` of training."""

    capacity: Capacity | list[Capacity | None] = 0.5
    layers: Literal["every_other", "all"] | list[int] = "every_other"
    router: Literal["linear", "cls_attn"] = "linear"
    context: Literal["selected", "all"] = "selected"
    start: Capacity | None = None
    anneal: Fraction = 0.0
    # a learned router's token weight: sigmoid (MoD, processed tokens) | tanh (p-MoD: 1 + weight_scale * tanh(score)
    # on processed and skipped tokens, so the router learns from both)
    weight: Literal["sigmoid", "tanh"] = "sigmoid"
    weight_scale: Annotated[Float, Field(gt=0, lt=1)] = 0.5


class GrowthStage(Section):
    # where this stage starts: exactly one of `at` (fraction of training) or `step` (optimizer step)
    at: Float | None = None
    step: int | None = None
    depth: Count | None = None
    depth_op: Literal["zero", "stack", "interpolate"] = "zero"
    embed_dim: Count | None = None
    num_heads: Count | None = None
    mlp_hidden: Count | None = None
    img_size: Count | None = None
    noise: Annotated[Float, Field(ge=0)] = 0.0


class GrowthConfig(Section):
    stages: list[GrowthStage] = Field(default_factory=list)
    from_ema: bool = False
    # fit the stage lengths to a budget (total training FLOPs, or seconds measured on this machine)
    budget_flops: Positive | None = None
    budget_seconds: Positive | None = None
    # zero (new entries' moments 0, MSG) | copy (duplicates copy moments) | reset
    optimizer_state: Literal["zero", "copy", "reset"] = "zero"


class UnfreezeStage(Section):
    # where this stage starts: exactly one of `at` (fraction of training) or `step` (optimizer step)
    at: Float | None = None
    step: int | None = None
    trainable_from: int  # first trainable layer group (0 = stem: everything trainable)


class UnfreezeConfig(Section):
    # gradual (top-down unfreezing) | stages | freezeout (bottom-up freezing on a schedule) | adaptive (bottom-up,
    # when the lowest trainable group stops changing)
    mode: Literal["gradual", "stages", "freezeout", "adaptive"] = "gradual"
    every: Annotated[Float, Field(gt=0, lt=1)] = 0.1  # gradual / freezeout: one more group every this fraction
    # freezeout: the fraction of training at which the lowest group (the stem) freezes, FreezeOut's t_0; the next
    # groups follow every `every`. Unset: `every` (the first group freezes one step of the schedule in)
    start: Annotated[Float, Field(gt=0, lt=1)] | None = None
    start_groups: Count = 1  # gradual: groups trainable at the start, from the top (1 = head + final norm)
    stages: list[UnfreezeStage] = Field(default_factory=list)
    # freezeout: each group's LR decays to zero (the schedule's decay shape) at the step it freezes (FreezeOut)
    anneal_lr: bool = False
    # with anneal_lr: each group's peak LR is the run's divided by the fraction of training it trains for
    # (FreezeOut's scaled variant, alpha_i = alpha / t_i), so a group that freezes at half-way gets about the LR
    # integral of the full schedule
    scale_lr: bool = False
    # adaptive: every check_every of training, the lowest trainable group freezes when its relative weight change
    # since the previous check is below threshold
    check_every: Annotated[Float, Field(gt=0, lt=1)] = 0.05
    threshold: Positive = 0.01
    # compute the frozen prefix's output once per training image (and flip view) and reuse it while the prefix stays
    # frozen (zoo.training.prefix_cache); needs flip-only augmentation; the cached outputs must fit cache_max_mb
    cache_prefix: bool = False
    cache_max_mb: Annotated[Float, Field(gt=0)] = 4096.0


class MergingConfig(Section):
    """Token merging (ToMe, ``zoo.nn.merging``): ``r`` tokens merged per block (one number for the chosen ``layers``,
    or one per block). Training-free, so it also converts a pretrained model as it loads."""

    r: NonNegative | list[NonNegative] = 4
    layers: Literal["all"] | list[int] = "all"


class DistillConfig(Section):
    """Knowledge distillation from a fixed teacher: loss = (1 - weight) * task loss + weight * distillation loss."""

    # a model source (local-dir:, hf-hub:, a published tag, a folder), or `pretrained`: the model this run starts from
    # (model.pretrained), the usual teacher of a conversion fine-tune; or a list of them: an ensemble teacher (its
    # members' temperature-softened distributions averaged), stronger than any one of them
    teacher: str | Annotated[list[str], Field(min_length=1)] = "pretrained"
    weight: Annotated[Float, Field(gt=0, le=1)] = 0.5
    # soft: KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et al.);
    # hard: cross-entropy on the teacher's top class (DeiT's hard distillation)
    kind: Literal["soft", "hard"] = "soft"
    temperature: Positive = 1.0

    def sources(self, pretrained: str | None) -> list[str]:
        """The teacher's members as model sources, one for a single teacher (``pretrained`` read as the run's
        ``model.pretrained``, passed here; None where that is not set)."""
        teachers = [self.teacher] if isinstance(self.teacher, str) else self.teacher
        return [pretrained if t == "pretrained" else t for t in teachers]


class RecipeSchema(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    routing: RoutingConfig | None = None
    growth: GrowthConfig | None = None
    unfreeze: UnfreezeConfig | None = None
    distill: DistillConfig | None = None
    merging: MergingConfig | None = None
