"""The one training loop, on Hugging Face Accelerate.

Numbers (LR, routing capacity) are recomputed from the step every step; structure (trainable groups, later growth)
changes only at stage boundaries, on the unwrapped model, followed by an optimizer rebuild and a fresh ``prepare``.
Everything a resumed run needs is either in the checkpoint (weights, optimizer, RNG, EMA) or a pure function of the
recipe and the step (stage, LR, data order and augmentation), which is what makes resume bitwise exact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model
from tqdm.auto import tqdm

from zoo import checkpoint as ckpt
from zoo.data import build_datasets
from zoo.freezing import set_group_lrs
from zoo.hub import save_model_folder, weights_hash
from zoo.manifest import collect_manifest, recipe_hash, write_json_atomic
from zoo.pipeline import make_loader, normalize, random_crop_flip
from zoo.recipe import Recipe, RecipeError, dump_recipe
from zoo.schedule import lr_factor
from zoo.stages import StagePlan, apply_structure, build_model, build_optimizer, set_numbers

RUN_FILES = ("recipe.yaml", "manifest.json", "metrics.jsonl", "result.json", "precision.json")


@dataclass
class RunResult:
    out_dir: Path
    final_acc: float
    final_loss: float
    steps: int
    wall_clock_s: float
    img_per_s: float


def prepare_out_dir(out: Path, recipe: Recipe, resume: bool, force: bool) -> bool:
    """Decide whether this run resumes; refuse to mix runs in one folder. Returns True when resuming."""
    if not (out / "recipe.yaml").exists():
        return False  # a fresh folder (--resume on it simply starts)
    if force:
        for name in (*RUN_FILES, "checkpoints", "model"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return False
    saved = (out / "manifest.json").read_text() if (out / "manifest.json").exists() else "{}"
    same = json.loads(saved).get("recipe_hash") == recipe_hash(recipe.to_dict())
    if not resume:
        raise RecipeError(
            str(out), "--out", "already holds a run; pass --resume to continue it or --force to replace it"
        )
    if not same:
        raise RecipeError(str(out), "--out", "holds a run of a different recipe; refusing to resume it with this one")
    return True


def make_accelerator(recipe: Recipe, out: Path, precision: str) -> Accelerator:
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise RecipeError("recipe", "train.precision", "fp16 needs a CUDA GPU (Accelerate ignores it on CPU); use bf16")
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # Accelerate keeps one process-wide AcceleratorState and refuses a second Accelerator with another precision;
    # a process may train several runs (bench, tests), so start each from a fresh state (the process group stays)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    dl_cfg = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.train.seed)
    acc = Accelerator(
        mixed_precision=mp,
        cpu=not cuda,
        dataloader_config=dl_cfg,
        log_with=recipe.train.tracker,
        project_dir=str(out),
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
    record = out / "precision.json"
    if resuming and record.exists():
        return json.loads(record.read_text())["precision"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RecipeError("recipe", "train.precision", "auto is measured in a single process; set fp32 or bf16")
    from zoo.precision import choose_precision
    from zoo.stages import build_model

    set_seed(recipe.train.seed)
    micro = recipe.data.batch_size // recipe.train.accumulation
    choice, ratio = choose_precision(build_model(recipe, bundle), micro)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"precision": choice, "measured_bf16_speedup": ratio, "micro_batch": micro})
    print(f"precision auto: bf16 step {ratio:.2f}x fp32 at micro-batch {micro} -> {choice}")
    return choice


class MetricsLog:
    """``metrics.jsonl`` written by the main process; on resume, entries after the checkpoint step are dropped so
    each step appears exactly once."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator, mean, std) -> tuple[float, float]:
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    size = getattr(model, "module", model).model_args["img_size"]
    for x, y in loader:
        logits = model(fit_resolution(normalize(x, mean, std), size))
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        preds, ys, losses = accelerator.gather_for_metrics((logits.argmax(-1), y, loss.reshape(1)))
        correct += (preds == ys).sum().item()
        total += ys.numel()
        loss_sum += losses.sum().item()
    model.train()
    return correct / max(total, 1), loss_sum / max(total, 1)


def fit_resolution(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a normalized batch to the model's current input size (resolution growth trains small images first)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def augment_generator(seed: int, epoch: int, micro_step: int, rank: int) -> torch.Generator:
    """Augmentation randomness as a pure function of position, so resume reproduces it exactly."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + micro_step) * 131 + rank)


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
    out = Path(out)
    resuming = prepare_out_dir(out, recipe, resume, force)
    if resuming and (out / "result.json").exists():
        # a finished run of this recipe: nothing to train, and its result must not be rewritten. Decided before any
        # Accelerate or tracker state exists; every rank reads the same file, written in an earlier session.
        done = json.loads((out / "result.json").read_text())
        return RunResult(
            out, done["final_acc"], done["final_loss"], done["steps"], done["wall_clock_s"], done["img_per_s"]
        )
    d = recipe.data
    bundle = build_datasets(
        d.name,
        path=d.path,
        classes=d.classes,
        train_subset=d.train_subset,
        test_subset=d.test_subset,
        img_size=d.img_size,
        in_chans=d.in_chans,
    )
    precision = resolve_precision(recipe, bundle, out, resuming)
    acc = make_accelerator(recipe, out, precision)
    main = acc.is_main_process
    set_seed(recipe.train.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    micro = d.batch_size // (acc.num_processes * recipe.train.accumulation)
    if micro < 1 or d.batch_size % (acc.num_processes * recipe.train.accumulation):
        raise RecipeError("recipe", "data.batch_size", f"{d.batch_size} must be divisible by processes x accumulation")
    train_loader = acc.prepare(
        make_loader(
            bundle.train_x,
            bundle.train_y,
            micro,
            shuffle=True,
            seed=recipe.train.seed,
            drop_last=True,
            num_workers=d.num_workers,
        )
    )
    eval_loader = acc.prepare(
        make_loader(bundle.test_x, bundle.test_y, d.eval_batch_size, shuffle=False, seed=0, drop_last=False)
    )
    steps_per_epoch = len(train_loader) // recipe.train.accumulation
    if steps_per_epoch < 1:
        raise RecipeError("recipe", "data.batch_size", "larger than the training set")
    total = recipe.schedule.steps or int(math.ceil(recipe.schedule.epochs * steps_per_epoch))
    model = build_model(recipe, bundle)
    growth_at = None
    g = recipe.growth
    if g is not None and (g.budget_flops is not None or g.budget_seconds is not None):
        from zoo.budget import budget_boundaries

        growth_at = budget_boundaries(model, recipe, total, acc.num_processes, out)
        set_seed(recipe.train.seed)  # measuring consumed random numbers; the run starts from the seed as usual
        model = build_model(recipe, bundle)
    plan = StagePlan.from_recipe(recipe, total, growth_at)
    plan.validate(model)
    start_step = 0
    state = None
    ckpt_dir = out / "checkpoints"
    if resuming:
        folder = ckpt.latest_valid(ckpt_dir)
        if folder is not None:
            state = ckpt.read_state(folder)
            start_step = int(state["step"])
    apply_structure(model, plan, start_step)
    ema = None
    if recipe.train.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=recipe.train.ema)
    optimizer = build_optimizer(model, recipe)
    model, optimizer = acc.prepare(model, optimizer)
    if state is not None:
        acc.load_state(str(folder))
        if ema is not None:
            load_safetensors_model(ema.module, str(folder / "ema.safetensors"))

    out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out / "metrics.jsonl", main)
    if main:
        (out / "recipe.yaml").write_text(dump_recipe(recipe))
        manifest = collect_manifest(
            recipe.to_dict(), seed=recipe.train.seed, extra={"num_processes": acc.num_processes, "total_steps": total}
        )
        if not resuming:
            write_json_atomic(out / "manifest.json", manifest)
        log.truncate_after(start_step)
    if recipe.train.tracker:
        acc.init_trackers(out.name, config={"recipe_hash": recipe_hash(recipe.to_dict())})

    warmup = int(recipe.schedule.warmup * total)
    rewarm = int(recipe.schedule.rewarmup * total)
    mean, std = bundle.mean, bundle.std
    acc_steps = recipe.train.accumulation
    bar = tqdm(total=total, initial=start_step, disable=not (progress and main), desc=out.name, dynamic_ncols=True)
    step = start_step
    # wall-clock spans sessions: a resumed run continues the clock of its checkpoint
    prior_s = float(state.get("elapsed_s", 0.0)) if state is not None else 0.0
    t0 = time.perf_counter() - prior_s
    seen = 0
    last = {"eval_acc": float("nan"), "eval_loss": float("nan")}
    eval_every = max(1, int(round(recipe.train.eval_every * steps_per_epoch)))
    ckpt_every = recipe.train.checkpoint_every or steps_per_epoch
    skipped_nonfinite = 0
    after_event = plan.changes_at(start_step)  # resumed right after a boundary: its "loss after" is still due
    if start_step >= total:  # stopped between the last checkpoint and the result: evaluate the final weights again
        a, lo = evaluate(ema.module if ema is not None else model, eval_loader, acc, mean, std)
        last = {"eval_acc": a, "eval_loss": lo}
    model.train()
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        train_loader.set_epoch(epoch)
        loader = acc.skip_first_batches(train_loader, in_epoch * acc_steps) if in_epoch else train_loader
        it = iter(loader)
        for _ in range(in_epoch, steps_per_epoch):
            set_numbers(acc.unwrap_model(model), plan, step)
            factor = lr_factor(step, total, warmup, recipe.schedule.min_lr_ratio, plan.rewarm_steps(), rewarm)
            set_group_lrs(optimizer, recipe.optim.lr * factor)
            loss_sum = 0.0
            for m in range(acc_steps):
                x, y = next(it)
                gen = augment_generator(recipe.train.seed, epoch, in_epoch * acc_steps + m, acc.process_index)
                x = normalize(random_crop_flip(x, gen, d.crop_pad, d.flip), mean, std)
                x = fit_resolution(x, acc.unwrap_model(model).model_args["img_size"])
                sync = acc.no_sync(model) if m < acc_steps - 1 else contextlib.nullcontext()
                with sync:
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.train.label_smoothing)
                    acc.backward(loss / acc_steps)
                loss_sum += loss.detach().float() / acc_steps
                seen += x.shape[0] * acc.num_processes
            # clipping returns the total norm, which doubles as the non-finite check (max_norm inf = no clipping)
            norm = acc.clip_grad_norm_(model.parameters(), recipe.optim.clip_grad or float("inf"))
            if not _finite_everywhere(acc, loss_sum, norm):
                if recipe.train.nonfinite == "stop":
                    bar.close()
                    raise FloatingPointError(
                        f"non-finite loss or gradient at step {step}: stopping; the last good checkpoint in "
                        f"{ckpt_dir} is kept (resume with --resume, or set train.nonfinite: skip)"
                    )
                skipped_nonfinite += 1
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(acc.unwrap_model(model), step=step)
            step += 1
            in_epoch += 1
            bar.update(1)
            # structure changes between steps, before the checkpoint of this step, so a checkpoint always holds the
            # structure (and optimizer layout) of the step it resumes at
            if plan.changes_at(step) and step < total:
                model, optimizer, ema = plan.restructure(acc, model, optimizer, ema, step, recipe)
                check_ranks_identical(acc, acc.unwrap_model(model), f"stage boundary at step {step}")
                log.write({"step": step, "event": plan.describe(step), "loss_before": float(loss_sum)})
                after_event = True
            elif after_event:
                log.write({"step": step, "loss_after_event": float(loss_sum)})
                after_event = False
            if step % recipe.train.log_every == 0 or step == total:
                loss_val = acc.gather(loss_sum.reshape(1)).mean().item()
                ips = seen / max(time.perf_counter() - t0 - prior_s, 1e-9)
                rec = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "loss": loss_val,
                    "lr": recipe.optim.lr * factor,
                    "img_per_s": ips,
                    "time_s": time.perf_counter() - t0,
                    "skipped_nonfinite": skipped_nonfinite,
                }
                log.write(rec)
                bar.set_postfix(loss=f"{loss_val:.3f}", acc=f"{last['eval_acc']:.3f}", ips=f"{ips:.0f}")
                if recipe.train.tracker:
                    acc.log(rec, step=step)
            if step % eval_every == 0 or step == total:
                eval_model = ema.module if ema is not None else model
                a, lo = evaluate(eval_model, eval_loader, acc, mean, std)
                last = {"eval_acc": a, "eval_loss": lo}
                log.write({"step": step, "epoch": step / steps_per_epoch, **last, "time_s": time.perf_counter() - t0})
                bar.set_postfix(acc=f"{a:.4f}")
            stopping = stop_after is not None and step >= stop_after
            if step % ckpt_every == 0 or step == total or stopping:
                save_checkpoint(acc, model, ema, ckpt_dir, step, plan, recipe, time.perf_counter() - t0)
            if stopping and step < total:
                bar.close()
                return RunResult(
                    out,
                    last["eval_acc"],
                    last["eval_loss"],
                    step,
                    time.perf_counter() - t0,
                    seen / max(time.perf_counter() - t0 - prior_s, 1e-9),
                )
            if step >= total:
                break
    bar.close()
    check_ranks_identical(acc, acc.unwrap_model(model), "end of training")
    wall = time.perf_counter() - t0
    final_model = ema.module if ema is not None else acc.unwrap_model(model)
    # the exported folder carries the data's normalisation and labels, so it is usable without the recipe
    final_model.pretrained_cfg = {
        **getattr(final_model, "pretrained_cfg", {}),
        "mean": tuple(mean),
        "std": tuple(std),
        "num_classes": bundle.num_classes,
        "label_names": list(bundle.class_names or []),
    }
    if main:
        save_model_folder(final_model, out / "model", metadata={"recipe_hash": recipe_hash(recipe.to_dict())})
        summary = {
            "final_acc": last["eval_acc"],
            "final_loss": last["eval_loss"],
            "steps": total,
            "wall_clock_s": wall,
            # this session's images over this session's time (a resumed run's clock includes earlier sessions);
            # None when this session trained nothing (it only re-evaluated): no throughput was measured
            "img_per_s": seen / max(wall - prior_s, 1e-9) if seen else None,
            "resumed_from": start_step,
            "precision": precision,
            "test_images": len(bundle.test_y),
            "num_processes": acc.num_processes,
            **peak_memory(),
        }
        write_json_atomic(out / "result.json", summary)
    acc.wait_for_everyone()
    if recipe.train.tracker:
        acc.end_training()
    return RunResult(out, last["eval_acc"], last["eval_loss"], total, wall, seen / max(wall - prior_s, 1e-9))


def save_checkpoint(
    acc: Accelerator, model, ema, ckpt_dir: Path, step: int, plan: StagePlan, recipe: Recipe, elapsed_s: float
) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.temp_folder(ckpt_dir, step) if acc.is_main_process else ckpt_dir / f".tmp-{ckpt.checkpoint_name(step)}"
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every rank's random_states_<rank>.pkl is in tmp before the main process renames it
    if acc.is_main_process:
        if ema is not None:
            save_safetensors_model(ema.module, str(tmp / "ema.safetensors"))
        state = {"step": step, "stage": plan.describe(step), "recipe_hash": recipe_hash(recipe.to_dict()),
                 "elapsed_s": elapsed_s}  # fmt: skip
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
