"""Knowledge distillation from a fixed teacher (the recipe's ``distill`` section).

The teacher is a zoo/timm model loaded through the same safetensors + JSON loader as ``model.pretrained`` and wrapped
in timm's ``DistillationTeacher`` (eval mode; it re-normalises the student's input when the two were trained with
different statistics). The loss is timm's logit distillation (``LogitDistillationTask``): the KL divergence of the
temperature-softened distributions times T^2, here mixed as ``(1 - weight) * task + weight * distillation``. timm's
task object wraps the student's forward and loss as one module; the trainer keeps its own forward (Accelerate,
accumulation, Mixup targets), so only the teacher wrapper is reused and the loss is the one line below.

The usual use is a conversion fine-tune: the dense model a routed or merged one came from is its teacher
(``teacher: pretrained``), as DynamicViT and DeiT distil from the model they compress.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.task.distillation import DistillationTeacher

from zoo.hub import load_model
from zoo.hub.folders import ModelLoadError
from zoo.models.pretrained import resolve_local_dir
from zoo.training.evaluation import fit_resolution
from zoo.training.recipe import DistillConfig, Recipe, RecipeError


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """``soft``: KL(teacher || student) of the logits softened by ``temperature``, times T^2 (so the gradient scale
    does not shrink with T); ``hard``: cross-entropy on the teacher's top class."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    t = temperature
    log_s = F.log_softmax(student / t, dim=-1)
    log_t = F.log_softmax(teacher / t, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def teacher_source(recipe: Recipe) -> str:
    d = recipe.distill
    return recipe.model.pretrained if d.teacher == "pretrained" else d.teacher


def load_teacher(recipe: Recipe, num_classes: int, device: torch.device) -> DistillationTeacher:
    """The recipe's teacher, frozen, in eval mode, on ``device``; a RecipeError names ``distill.teacher`` when it
    cannot be loaded or predicts a different number of classes than the data has."""
    src = teacher_source(recipe)
    if src.endswith(".safetensors"):  # a bare weights file has no config to build the teacher from
        raise RecipeError("recipe", "distill.teacher", f"needs a model folder or hub id, not a weights file: {src}")
    try:
        model = load_model(resolve_local_dir(src))
    except ModelLoadError as e:
        raise RecipeError("recipe", "distill.teacher", str(e)) from None
    if model.num_classes != num_classes:
        msg = f"{src} predicts {model.num_classes} classes, the data has {num_classes}"
        raise RecipeError("recipe", "distill.teacher", msg)
    teacher = DistillationTeacher(model, device=device)
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


class Distiller:
    """The teacher and the loss mix, applied to one micro-batch in the trainer's step."""

    def __init__(self, config: DistillConfig, teacher: DistillationTeacher, mean, std, device: torch.device):
        self.config, self.teacher = config, teacher
        self.student_mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.student_std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.teacher_size = teacher.model.model_args.get("img_size") if hasattr(teacher.model, "model_args") else None

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's (normalised, augmented) batch ``x``."""
        x = self.teacher.normalize_input(x, self.student_mean, self.student_std)
        return self.teacher(fit_resolution(x, self.teacher_size)).float()

    def mix(self, task_loss: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        kd = distillation_loss(student_logits.float(), self.teacher_logits(x), c.kind, c.temperature)
        return (1.0 - c.weight) * task_loss + c.weight * kd
