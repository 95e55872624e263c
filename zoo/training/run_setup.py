"""A run's set-up outside the training loop: its datasets, the Accelerator (precision, compile backend, tracker,
process group checks) and its data loaders. Wiring only; the loop is ``zoo.training.trainer.Trainer``."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed

from zoo.data.augment import BatchAugment, ImageAugment
from zoo.data.datasets import build_datasets
from zoo.data.pipeline import default_workers, make_loader
from zoo.data.streaming import StreamSource, make_stream_loader
from zoo.training.precision import choose_precision
from zoo.training.recipe import Recipe, RecipeError, flatten_dotted
from zoo.training.run_folder import PRECISION_FILE
from zoo.training.stage_plan import build_model, model_input_shape
from zoo.utils.manifest import write_json_atomic


def run_datasets(recipe: Recipe, progress: bool):
    """The recipe's training and evaluation sets; folders and HF datasets are resized to the model's input unless
    the recipe says otherwise."""
    d = recipe.data
    in_chans, img_size = d.in_chans, d.img_size
    if d.name != "fashion-mnist" and (in_chans is None or img_size is None):
        model_chans, model_size = model_input_shape(recipe)
        in_chans, img_size = in_chans or model_chans, img_size or model_size
    return build_datasets(
        d.name,
        path=d.path,
        classes=d.classes,
        train_subset=d.train_subset,
        test_subset=d.test_subset,
        img_size=img_size,
        in_chans=in_chans,
        val_split=d.val_split,
        cache=d.cache,
        cache_max_mb=d.cache_max_mb,
        image_column=d.image_column,
        label_column=d.label_column,
        progress=progress,
        streaming=d.streaming,
    )


@dataclass
class RunLoaders:
    train: object  # a DataLoader prepared by Accelerate, or a stream loader (sharded by itself)
    eval: object
    streaming: bool
    batch_augment: BatchAugment  # label smoothing, erasing and mixing, applied per micro-batch in the step


def run_loaders(recipe: Recipe, bundle, acc: Accelerator) -> RunLoaders:
    """Training and evaluation loaders at the per-process micro-batch (``data.batch_size`` split over processes and
    accumulation steps)."""
    d = recipe.data
    per_step = acc.num_processes * recipe.train.accumulation
    micro = d.batch_size // per_step
    if micro < 1 or d.batch_size % per_step:
        raise RecipeError("recipe", "data.batch_size", f"{d.batch_size} must be divisible by processes x accumulation")
    b = bundle
    streaming = isinstance(b.train, StreamSource)
    workers = 1 if streaming else default_workers(b.train, d.num_workers)
    if acc.is_main_process:
        shown = f"; {workers} DataLoader worker{'s' if workers > 1 else ''}" if workers else ""
        print(f"data: {d.name}: {len(b.train)} train / {len(b.test)} {b.eval_split} images, {b.storage}{shown}")
    augment = ImageAugment(d.auto_augment, b.img_size, b.mean) if d.auto_augment else None
    batch_augment = BatchAugment(
        b.num_classes, recipe.train.label_smoothing, d.reprob, d.remode, d.mixup, d.cutmix, d.mix_prob,
        d.mix_switch_prob,
    )  # fmt: skip
    if streaming:  # sharded by the stream itself, not by Accelerate (zoo.data.streaming says why)
        shard = dict(rank=acc.process_index, world=acc.num_processes)
        train = make_stream_loader(b.train, micro, shuffle=True, seed=recipe.train.seed, drop_last=True,
                                   augment=augment, buffer=d.shuffle_buffer, **shard)  # fmt: skip
        evaluation = make_stream_loader(b.test, d.eval_batch_size, shuffle=False, seed=0, drop_last=False, **shard)
        return RunLoaders(train, evaluation, True, batch_augment)
    caching = recipe.unfreeze is not None and recipe.unfreeze.cache_prefix  # batches carry image indices
    train = make_loader(b.train, None, micro, shuffle=True, seed=recipe.train.seed, drop_last=True,
                        num_workers=workers, augment=augment, with_index=caching)  # fmt: skip
    evaluation = make_loader(b.test, None, d.eval_batch_size, shuffle=False, seed=0, drop_last=False,
                             num_workers=default_workers(b.test, d.num_workers))  # fmt: skip
    return RunLoaders(acc.prepare(train), acc.prepare(evaluation), False, batch_augment)


def flat_hparams(d: dict) -> dict:
    """A nested recipe as ``section.key -> value`` with the scalar types every tracker accepts (others as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten_dotted(d).items()}


def make_accelerator(recipe: Recipe, out: Path, precision: str) -> Accelerator:
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise RecipeError("recipe", "train.precision", "fp16 needs a CUDA GPU (Accelerate ignores it on CPU); use bf16")
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # what `accelerate launch --mixed_precision` sets
    if launched and launched != mp:  # the recipe is the run's identity (hashed, in the card): it decides, loudly
        warnings.warn(
            f"accelerate launch --mixed_precision {launched} is overridden by the recipe's train.precision "
            f"({precision}); use --set train.precision=... to change it",
            stacklevel=2,
        )
    backend = (recipe.train.compile or "no").upper()
    launched = os.environ.get("ACCELERATE_DYNAMO_BACKEND")  # what `accelerate launch --dynamo_backend` sets
    if launched and launched.upper() != backend:  # the same rule: the recipe decides, and says so
        warnings.warn(
            f"accelerate launch --dynamo_backend {launched} is overridden by the recipe's train.compile "
            f"({recipe.train.compile}); use --set train.compile=... to change it",
            stacklevel=2,
        )
    # Accelerate keeps one process-wide AcceleratorState and refuses a second Accelerator with another precision;
    # a process may train several runs (bench, tests), so start each from a fresh state (the process group stays)
    AcceleratorState._reset_state()
    dl_cfg = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.train.seed)
    acc = Accelerator(
        mixed_precision=mp,
        cpu=not cuda,
        dataloader_config=dl_cfg,
        log_with=recipe.train.tracker,
        project_dir=str(out),
        # Accelerate compiles in `prepare`, so every re-prepare after a stage boundary compiles the new structure
        dynamo_backend=backend,
    )
    if recipe.train.tracker and not acc.log_with:  # Accelerate drops a tracker that is not installed with a warning
        raise RecipeError(
            "recipe", "train.tracker", f"{recipe.train.tracker!r} is not installed or not a tracker Accelerate knows"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes != world:
        # an Accelerator that does not join torchrun's group would train independent copies without any error
        # (seen with Accelerator() lacking cpu=True on a GPU-less machine); we pass cpu=True there, this guards the rest
        raise RuntimeError(
            f"launched with WORLD_SIZE={world} but Accelerate sees {acc.num_processes} process(es): on CPU launch with "
            "`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m zoo.cli train ...` so the processes form one group"
        )
    return acc


def resolve_precision(recipe: Recipe, bundle, out: Path, resuming: bool) -> str:
    """The recipe's precision; for ``auto``, measured once and recorded so a resumed run keeps the same choice."""
    if recipe.train.precision != "auto":
        return recipe.train.precision
    record = out / PRECISION_FILE
    if resuming and record.exists():
        return json.loads(record.read_text())["precision"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RecipeError("recipe", "train.precision", "auto is measured in a single process; set fp32 or bf16")

    set_seed(recipe.train.seed)
    micro = recipe.data.batch_size // recipe.train.accumulation
    choice, ratio = choose_precision(build_model(recipe, bundle), micro)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"precision": choice, "measured_bf16_speedup": ratio, "micro_batch": micro})
    print(f"precision auto: bf16 step {ratio:.2f}x fp32 at micro-batch {micro} -> {choice}")
    return choice
