"""The one training loop, on Hugging Face Accelerate: ``Trainer.fit`` reads as its plan.

Numbers (LR, routing capacity) are recomputed from the step every step; structure (trainable groups, later growth)
changes only at stage boundaries, on the unwrapped model, followed by an optimizer rebuild and a fresh ``prepare``.
Everything a resumed run needs is either in the checkpoint (weights, optimizer, RNG, EMA) or a pure function of the
recipe and the step (stage, LR, data order and augmentation), which is what makes resume bitwise exact.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from zoo.data.pipeline import draw_mirror, normalize, random_crop_flip
from zoo.hub import save_model_folder, weights_hash
from zoo.measure.machine import gemm_peaks_gflops
from zoo.training import run_checkpoints as ckpt
from zoo.training.adaptive_freezing import PlasticityMonitor, check_steps
from zoo.training.budget import budget_boundaries
from zoo.training.distillation import Distiller, load_teachers
from zoo.training.evaluation import evaluate, evaluate_shards, fit_resolution
from zoo.training.freezing import set_group_lrs
from zoo.training.interrupt import StoppedBySignal, stop_on_signals
from zoo.training.prefix_cache import PrefixCache, check_cacheable_model, prefix_input
from zoo.training.progress import freezeout_lr_factors, lr_factor
from zoo.training.recipe import SCHEMA_VERSION, Recipe, RecipeError
from zoo.training.run_folder import RunFolder
from zoo.training.run_setup import flat_hparams, make_accelerator, resolve_precision, run_datasets, run_loaders
from zoo.training.stage_plan import (
    StagePlan,
    apply_structure,
    build_model,
    build_optimizer,
    set_step_values,
    unwrapped,
)
from zoo.utils.manifest import collect_manifest, cpu_capability, recipe_hash

# Mixup / CutMix targets are distributions: timm's loss for them (the one its train script pairs with Mixup)
SOFT_TARGET_LOSS = SoftTargetCrossEntropy()

# pretrained_cfg keys that locate the weights a model was loaded from, not the weights a run trains
PARENT_WEIGHT_KEYS = ("tag", "hf_hub_id", "hf_hub_filename", "url", "file", "source")


@dataclass
class RunResult:
    out_dir: Path
    final_acc: float
    final_loss: float
    steps: int
    wall_clock_s: float
    img_per_s: float
    total_steps: int = 0  # the run's length: steps < total_steps after a session stopped early (--stop-after)


def train(
    recipe: Recipe,
    out: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Run (or resume) a recipe into ``out``. Returns the final evaluation.

    ``stop_after`` ends the session after that many optimizer steps in total (with a checkpoint), for time-boxed
    sessions; ``--resume`` continues it. It is not part of the recipe, so it does not change the run's identity.
    """
    return Trainer(recipe, out, resume=resume, force=force, progress=progress, stop_after=stop_after).fit()


class Trainer:
    """One run of a recipe into a run folder. ``fit`` is the plan; each step of it is a method below."""

    def __init__(
        self,
        recipe: Recipe,
        out: str | Path,
        resume: bool = False,
        force: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
    ):
        self.recipe, self.folder = recipe, RunFolder(out)
        self.out = self.folder.path
        self.resume, self.force, self.progress, self.stop_after = resume, force, progress, stop_after

    # ------------------------------------------------------------------------------------------------- the plan
    def fit(self) -> RunResult:
        with self.folder.lock():
            return self._fit()

    def _fit(self) -> RunResult:
        self.resuming = self.folder.prepare(self.recipe, self.resume, self.force)
        if self.resume and not self.resuming:
            print(f"note: {self.out}: --resume: no run there yet; starting a new one from step 0")
        if self.resuming and (done := self.folder.finished_result()) is not None:
            # a finished run of this recipe: nothing to train, and its result must not be rewritten. Decided before
            # any Accelerate or tracker state exists; every rank reads the same file, written in an earlier session.
            keys = ("final_acc", "final_loss", "steps", "wall_clock_s", "img_per_s")
            return RunResult(self.out, *(done[k] for k in keys), done["steps"])
        try:
            self.set_up_data()
            self.set_up_model()
        except BaseException:  # a forced rerun that cannot start gives the old run back
            self.folder.restore_set_aside()
            raise
        self.folder.discard_set_aside()
        self.open_run_files()
        self.start_clock()
        with stop_on_signals() as signalled:
            while self.step < self.total:
                for micro_batches in self.epoch_batches():
                    self.train_step(micro_batches)
                    self.change_structure_or_log_event()
                    self.log_progress()
                    self.evaluate_if_due()
                    stopping = self.stop_after is not None and self.step >= self.stop_after
                    self.checkpoint_if_due(force=stopping or bool(signalled))
                    if signalled and self.step < self.total:
                        self.bar.close()
                        raise StoppedBySignal(signalled.signum, self.step, str(self.out))
                    if stopping and self.step < self.total:
                        self.bar.close()
                        return RunResult(self.out, *self.last, self.step, self.elapsed(), self.img_per_s(), self.total)
                    if self.step >= self.total:
                        break
        return self.finish()

    # ------------------------------------------------------------------------------------------------- set-up
    def set_up_data(self) -> None:
        """Data, precision, the Accelerator, both loaders and the run length."""
        recipe = self.recipe
        self.bundle = run_datasets(recipe, progress=self.progress and os.environ.get("RANK", "0") == "0")
        self.precision = resolve_precision(recipe, self.bundle, self.out, self.resuming)
        self.acc = make_accelerator(recipe, self.out, self.precision)
        set_seed(recipe.train.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        loaders = run_loaders(recipe, self.bundle, self.acc)
        self.train_loader, self.eval_loader, self.streaming = loaders.train, loaders.eval, loaders.streaming
        self.batch_augment = loaders.batch_augment
        self.steps_per_epoch = len(self.train_loader) // recipe.train.accumulation
        if self.steps_per_epoch < 1:
            raise RecipeError("recipe", "data.batch_size", "larger than the training set")
        self.total = recipe.schedule.steps or int(math.ceil(recipe.schedule.epochs * self.steps_per_epoch))

    def set_up_model(self) -> None:
        """Model, stage plan, the checkpoint to resume from, EMA and optimizer, prepared by Accelerate."""
        recipe, acc = self.recipe, self.acc
        model = build_model(recipe, self.bundle)
        growth_at = None
        g = recipe.growth
        if g is not None and (g.budget_flops is not None or g.budget_seconds is not None):
            growth_at = budget_boundaries(model, recipe, self.total, acc.num_processes, self.out)
            set_seed(recipe.train.seed)  # measuring consumed random numbers; the run starts from the seed as usual
            model = build_model(recipe, self.bundle)
        self.plan = StagePlan.from_recipe(recipe, self.total, growth_at)
        self.plan.validate(model)
        self.start_step, self.state, folder = 0, None, None
        if self.resuming:
            folder = ckpt.latest_valid(self.folder.checkpoints)
            if folder is not None:
                self.state = ckpt.read_state(folder)
                self.start_step = int(self.state["step"])
            else:  # same recipe, same seed: the run from step 0 is the run that was interrupted, just longer
                print(f"note: {self.folder.checkpoints}: no intact checkpoint to resume from; starting from step 0")
        u = recipe.unfreeze
        self.monitor = PlasticityMonitor(u.threshold) if u is not None and u.mode == "adaptive" else None
        if self.state is not None:
            self.plan.adaptive_freezes = list(self.state.get("adaptive_freezes", []))
            if self.monitor is not None:
                self.monitor.load(folder)
        apply_structure(model, self.plan, self.start_step)
        t = recipe.train
        # the EMA copy lives on the device the model trains on: made here, before prepare() moves the model, it would
        # stay on the CPU and its first update would mix devices (a CUDA run with `train.ema` failed so)
        self.ema = ModelEmaV3(model, decay=t.ema, use_warmup=t.ema_warmup, device=acc.device) if t.ema else None
        self.distiller = None
        if recipe.distill is not None:  # a fixed teacher: nothing of it is trained or checkpointed
            teachers = load_teachers(recipe, self.bundle.num_classes, acc.device)
            self.distiller = Distiller(recipe.distill, teachers, self.bundle.mean, self.bundle.std, acc.device)
        optimizer = build_optimizer(model, recipe)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if self.state is not None:
            acc.load_state(str(folder))
            if self.ema is not None:
                load_safetensors_model(self.ema.module, str(folder / "ema.safetensors"))
        self.prefix_cache = None
        u, b = recipe.unfreeze, self.bundle
        if u is not None and u.cache_prefix:  # derived data, not checkpointed: a resumed run rebuilds it (bitwise)
            max_bytes = int(u.cache_max_mb * 2**20)
            check_cacheable_model(unwrapped(acc, self.model), b, recipe.data.flip, max_bytes)
            show = self.progress and acc.is_main_process
            self.prefix_cache = PrefixCache(b.train, b.mean, b.std, recipe.data.flip, max_bytes, progress=show)

    def open_run_files(self) -> None:
        """``recipe.yaml``, ``manifest.json``, the metrics log (cut back to the checkpoint) and the tracker."""
        recipe, acc = self.recipe, self.acc
        self.main = acc.is_main_process
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.folder.metrics_log(self.main)
        if self.main:
            extra = {
                "num_processes": acc.num_processes,
                "total_steps": self.total,
                "recipe_schema": SCHEMA_VERSION,
                "gemm_peak_gflops": gemm_peaks_gflops(),
            }
            manifest = collect_manifest(recipe.identity(), seed=recipe.train.seed, extra=extra)
            self.folder.write_start(recipe, manifest, self.resuming)
            self.log.truncate_after(self.start_step)
        if recipe.train.tracker:  # the resolved recipe as hyperparameters, so runs can be compared in the tracker
            config = {"recipe_hash": recipe_hash(recipe.identity()), **flat_hparams(recipe.to_dict())}
            acc.init_trackers(self.out.name, config=config)

    def start_clock(self) -> None:
        """Step counters, the progress bar, and the wall-clock (a resumed run continues its checkpoint's clock)."""
        recipe = self.recipe
        self.warmup = int(recipe.schedule.warmup * self.total)
        self.rewarm = int(recipe.schedule.rewarmup * self.total)
        self.hold = int(recipe.schedule.hold * self.total)
        self.step = self.start_step
        show = self.progress and self.main
        self.bar = tqdm(total=self.total, initial=self.step, disable=not show, desc=self.out.name, dynamic_ncols=True)
        self.prior_s = float(self.state.get("elapsed_s", 0.0)) if self.state is not None else 0.0
        self.t0 = time.perf_counter() - self.prior_s
        self.seen = 0
        self.skipped_nonfinite = 0
        self.last = (float("nan"), float("nan"))  # eval accuracy, eval loss
        self.eval_every = max(1, int(round(recipe.train.eval_every * self.steps_per_epoch)))
        self.ckpt_every = recipe.train.checkpoint_every or self.steps_per_epoch
        self.after_event = self.plan.changes_at(self.step)  # resumed right after a boundary: its "loss after" is due
        self.check_at = set(check_steps(self.total, recipe.unfreeze.check_every)) if self.monitor else set()
        if self.step >= self.total:  # stopped between the last checkpoint and the result: evaluate the final weights
            self.last = self.run_evaluation()
        self.model.train()

    # ------------------------------------------------------------------------------------------------- steps
    def epoch_batches(self):
        """The rest of the current epoch: per optimizer step, its micro-batches ``[(x, y, augmentation generator)]``.

        The data order is a pure function of (seed, epoch) and the augmentation draws of (seed, epoch, position,
        rank), so a run resumed mid-epoch skips to the same batch and draws the same crops and flips."""
        acc, recipe = self.acc, self.recipe
        acc_steps = recipe.train.accumulation
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        if self.streaming:  # the stream passes over the batches already trained on without decoding them
            self.train_loader.dataset.set_epoch(epoch)
            self.train_loader.dataset.skip_batches(in_epoch * acc_steps)
            it = ((x.to(acc.device), y.to(acc.device)) for x, y in self.train_loader)
        else:
            self.train_loader.set_epoch(epoch)
            self.train_loader.dataset.set_epoch(epoch)  # its per-image augmentation draws (Accelerate: the sampler's)
            loader = acc.skip_first_batches(self.train_loader, in_epoch * acc_steps) if in_epoch else self.train_loader
            it = iter(loader)
        for position in range(in_epoch, self.steps_per_epoch):
            micro = []
            for m in range(acc_steps):
                x, y, *index = next(it)  # the images' indices when a cached frozen prefix looks them up
                gen = augment_generator(recipe.train.seed, epoch, position * acc_steps + m, acc.process_index)
                micro.append((x, y, gen, index[0] if index else None))
            yield micro

    def train_step(self, micro_batches: list) -> None:
        """Forward and backward of every micro-batch, clipping, the non-finite check, the optimizer and EMA update."""
        recipe, acc, model = self.recipe, self.acc, self.model
        set_step_values(unwrapped(acc, model), self.plan, self.step)
        if self.ema is not None:  # the EMA copy is what is evaluated and exported: the same capacity as the model
            set_step_values(self.ema.module, self.plan, self.step)
        sch = recipe.schedule
        self.lr = recipe.optim.lr * lr_factor(
            self.step, self.total, self.warmup, sch.min_lr_ratio, self.plan.rewarm_steps(), self.rewarm, sch.decay,
            self.hold,
        )  # fmt: skip
        freeze_at = self.plan.annealed_freeze_steps()
        scale = self.total if recipe.unfreeze is not None and recipe.unfreeze.scale_lr else None
        factors = freezeout_lr_factors(self.step, freeze_at, self.warmup, sch.decay, scale) if freeze_at else {}
        set_group_lrs(self.optimizer, self.lr, {g: recipe.optim.lr * f for g, f in factors.items()})
        n = len(micro_batches)
        loss_sum = 0.0
        cached = self.sync_prefix_cache()
        for m, (images, y, gen, index) in enumerate(micro_batches):
            x, target = self.step_inputs(images, y, gen, index, cached)
            sync = acc.no_sync(model) if m < n - 1 else contextlib.nullcontext()
            with sync, prefix_input(unwrapped(acc, model), cached):
                logits = model(x)
                if self.batch_augment.soft_targets:  # the targets already carry the label smoothing
                    loss = SOFT_TARGET_LOSS(logits.float(), target)
                else:
                    loss = F.cross_entropy(logits.float(), target, label_smoothing=recipe.train.label_smoothing)
                if self.distiller is not None:
                    loss = self.distiller.mix(loss, logits, x)
                acc.backward(loss / n)
            loss_sum += loss.detach().float() / n
            self.seen += images.shape[0] * acc.num_processes
        self.loss = loss_sum
        # clipping returns the total norm, which doubles as the non-finite check (max_norm inf = no clipping)
        norm = acc.clip_grad_norm_(model.parameters(), recipe.optim.clip_grad or float("inf"))
        if not _finite_everywhere(acc, loss_sum, norm):
            if recipe.train.nonfinite == "stop":
                self.bar.close()
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {self.step}: stopping; the last good checkpoint in "
                    f"{self.folder.checkpoints} is kept (resume with --resume, or set train.nonfinite: skip)"
                )
            self.skipped_nonfinite += 1
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(unwrapped(acc, model), step=self.step)
        self.step += 1
        self.bar.update(1)

    def step_inputs(self, images, y, gen, index, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """What the model takes for a micro-batch and its targets: the images cropped, flipped, normalised, erased and
        mixed as the recipe says; or, with a cached frozen prefix, the prefix's cached outputs for the views the same
        flip draws choose."""
        d = self.recipe.data
        if cached:  # flips are the only augmentation a cache allows (recipe_checks): the same draws, the same views
            mirrored = draw_mirror(len(images), gen) if d.flip else None
            return self.prefix_cache.lookup(index, mirrored).to(self.acc.device), y
        x = normalize(random_crop_flip(images, gen, d.crop_pad, d.flip), self.bundle.mean, self.bundle.std)
        x, target = self.batch_augment(x, y, gen)  # random erasing, Mixup / CutMix (soft targets) when set
        return fit_resolution(x, unwrapped(self.acc, self.model).model_args["img_size"]), target

    def sync_prefix_cache(self) -> bool:
        """``unfreeze.cache_prefix``: hold the outputs of the current frozen prefix, (re)built when it changed, in the
        training clock and under the training precision; whether this step reads them."""
        if self.prefix_cache is None:
            return False
        net = unwrapped(self.acc, self.model)
        t0 = time.perf_counter()
        with self.acc.autocast():
            built = self.prefix_cache.sync(net, net.no_grad_prefix, self.acc.device)
        if built and self.main:
            self.log.write({"step": self.step, "prefix_cache_blocks": net.no_grad_prefix,
                            "prefix_cache_s": time.perf_counter() - t0})  # fmt: skip
        return net.no_grad_prefix >= 0

    # -------------------------------------------------------------------------------------------- after a step
    def change_structure_or_log_event(self) -> None:
        """Structure changes between steps, before the checkpoint of this step, so a checkpoint always holds the
        structure (and optimizer layout) of the step it resumes at; the loss right after a change is logged too."""
        step = self.step
        if step in self.check_at:  # adaptive freezing: the lowest trainable group, if it stopped changing
            group = self.plan.trainable_from(step, self.plan.groups)
            if self.monitor.should_freeze(unwrapped(self.acc, self.model), group):
                self.plan.adaptive_freezes.append(step)
        if self.plan.changes_at(step) and step < self.total:
            self.model, self.optimizer, self.ema = self.plan.restructure(
                self.acc, self.model, self.optimizer, self.ema, step, self.recipe
            )
            check_ranks_identical(self.acc, unwrapped(self.acc, self.model), f"stage boundary at step {step}")
            self.log.write({"step": step, "event": self.plan.describe(step), "loss_before": float(self.loss)})
            self.after_event = True
        elif self.after_event:
            self.log.write({"step": step, "loss_after_event": float(self.loss)})
            self.after_event = False

    def log_progress(self) -> None:
        step = self.step
        if step % self.recipe.train.log_every and step != self.total:
            return
        loss_val = self.acc.gather(self.loss.reshape(1)).mean().item()
        ips = self.img_per_s()
        rec = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": loss_val,
            "lr": self.lr,
            "img_per_s": ips,
            "time_s": time.perf_counter() - self.t0,
            "skipped_nonfinite": self.skipped_nonfinite,
        }
        self.log.write(rec)
        self.bar.set_postfix(loss=f"{loss_val:.3f}", acc=f"{self.last[0]:.3f}", ips=f"{ips:.0f}")
        if self.recipe.train.tracker:
            self.acc.log(rec, step=step)

    def evaluate_if_due(self) -> None:
        step = self.step
        if step % self.eval_every and step != self.total:
            return
        self.last = self.run_evaluation()
        rec = {"eval_acc": self.last[0], "eval_loss": self.last[1]}
        self.log.write({"step": step, "epoch": step / self.steps_per_epoch, **rec, "time_s": self.elapsed()})
        self.bar.set_postfix(acc=f"{self.last[0]:.4f}")
        if self.recipe.train.tracker:
            self.acc.log(rec, step=step)

    def run_evaluation(self) -> tuple[float, float]:
        """Accuracy and loss of the evaluated model (the EMA when the recipe keeps one) on the eval split."""
        model = self.ema.module if self.ema is not None else self.model
        acc, b = self.acc, self.bundle
        if self.streaming:  # each process holds a disjoint share of the stream (unequal by at most one batch): sum them
            batches = ((x.to(acc.device), y.to(acc.device)) for x, y in self.eval_loader)
            # the module itself, not the DDP wrapper, whose forward broadcasts buffers (a conv stem's BatchNorm)
            # on every call: a process with one batch more would wait for the others
            res = evaluate_shards(unwrapped(acc, model), batches, b.mean, b.std,
                                  lambda t: acc.reduce(t.to(acc.device), "sum").cpu())  # fmt: skip
        else:
            res = evaluate(model, self.eval_loader, b.mean, b.std, gather=acc.gather_for_metrics)
        self.model.train()
        return res["acc"], res["loss"]

    def checkpoint_if_due(self, force: bool = False) -> None:
        if self.step % self.ckpt_every == 0 or self.step == self.total or force:
            save_checkpoint(
                self.acc, self.model, self.ema, self.folder.checkpoints, self.step, self.plan, self.recipe,
                self.elapsed(), self.monitor,
            )  # fmt: skip

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def img_per_s(self) -> float:
        """This session's images over this session's time (a resumed run's clock includes earlier sessions)."""
        return self.seen / max(self.elapsed() - self.prior_s, 1e-9)

    # ------------------------------------------------------------------------------------------------- finish
    def finish(self) -> RunResult:
        """The evaluated weights as a hub folder (carrying the data's normalisation and labels) and ``result.json``."""
        acc, recipe, bundle = self.acc, self.recipe, self.bundle
        self.bar.close()
        check_ranks_identical(acc, unwrapped(acc, self.model), "end of training")
        wall = self.elapsed()
        final_model = self.ema.module if self.ema is not None else unwrapped(acc, self.model)
        # The trained weights are new weights: what named the weights it started from (a published tag, hub id or
        # URL) no longer describes them, and the input is the data's.
        inherited = {k: v for k, v in getattr(final_model, "pretrained_cfg", {}).items() if k not in PARENT_WEIGHT_KEYS}
        size = getattr(final_model, "model_args", {}).get("img_size", bundle.img_size)
        final_model.pretrained_cfg = {
            **inherited,
            "input_size": (bundle.in_chans, size, size),
            "mean": tuple(bundle.mean),
            "std": tuple(bundle.std),
            "num_classes": bundle.num_classes,
            "label_names": list(bundle.class_names or []),
        }
        if self.main:
            save_model_folder(final_model, self.folder.model, metadata={"recipe_hash": recipe_hash(recipe.identity())})
            self.folder.write_result(
                {
                    "final_acc": self.last[0],
                    "final_loss": self.last[1],
                    "steps": self.total,
                    "wall_clock_s": wall,
                    # None when this session trained nothing (it only re-evaluated): no throughput was measured
                    "img_per_s": self.img_per_s() if self.seen else None,
                    "resumed_from": self.start_step,
                    "precision": self.precision,
                    "test_images": len(bundle.test),
                    "eval_split": bundle.eval_split,  # "val" when the recipe held out data.val_split images
                    "num_processes": acc.num_processes,
                    "cpu_capability": cpu_capability(),
                    "gemm_peak_gflops": gemm_peaks_gflops(),
                    **peak_memory(),
                }
            )
        acc.wait_for_everyone()
        if recipe.train.tracker:
            acc.end_training()
        ips = self.seen / max(wall - self.prior_s, 1e-9)
        return RunResult(self.out, *self.last, self.total, wall, ips, self.total)


# ------------------------------------------------------------------------------------------------- the pieces
def augment_generator(seed: int, epoch: int, micro_step: int, rank: int) -> torch.Generator:
    """Augmentation randomness as a pure function of position, so resume reproduces it exactly."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + micro_step) * 131 + rank)


def save_checkpoint(
    acc: Accelerator,
    model,
    ema,
    ckpt_dir: Path,
    step: int,
    plan: StagePlan,
    recipe: Recipe,
    elapsed_s: float,
    monitor: PlasticityMonitor | None = None,
) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.temp_folder(ckpt_dir, step) if acc.is_main_process else ckpt_dir / f".tmp-{ckpt.checkpoint_name(step)}"
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every rank's random_states_<rank>.pkl is in tmp before the main process renames it
    if acc.is_main_process:
        if ema is not None:
            save_safetensors_model(ema.module, str(tmp / "ema.safetensors"))
        state = {"step": step, "stage": plan.describe(step), "recipe_hash": recipe_hash(recipe.identity()),
                 "elapsed_s": elapsed_s}  # fmt: skip
        if monitor is not None:  # adaptive freezing: its decisions so far and the reference of the next one
            state["adaptive_freezes"] = list(plan.adaptive_freezes)
            monitor.save(tmp)
        ckpt.finalize(tmp, ckpt_dir, step, state, recipe.train.keep_checkpoints)
    acc.wait_for_everyone()


def check_ranks_identical(acc: Accelerator, model, where: str) -> None:
    """All processes hold bitwise-identical parameters (checked at structure changes and at the end)."""
    if acc.num_processes == 1:
        return
    digest = torch.tensor([float(int(weights_hash(model)[:12], 16))], dtype=torch.float64, device=acc.device)
    digests = acc.gather(digest)
    if not torch.all(digests == digests[0]):
        raise RuntimeError(f"{where}: parameters differ between processes (digests {digests.tolist()})")


def peak_memory() -> dict:
    """This process's peak memory: CUDA peak allocated, and on Linux the RSS high-water mark (VmHWM), which an exec
    resets (unlike ``ru_maxrss``, which a child inherits from the process that forked it)."""
    res = {}
    if torch.cuda.is_available():
        res["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    try:
        with open("/proc/self/status") as f:
            res["peak_rss_bytes"] = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return res


def _finite_everywhere(acc: Accelerator, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Loss and gradient norm finite on every process (one all-reduce, so all ranks take the same branch)."""
    bad = (~torch.isfinite(loss.detach().float())).float() + (~torch.isfinite(grad_norm.detach().float())).float()
    return acc.reduce(bad.reshape(1), reduction="sum").item() == 0
