"""Knowledge distillation from a fixed teacher (the recipe's ``distill`` section).

The teacher is a zoo/timm model loaded through the same safetensors + JSON loader as ``model.pretrained`` and wrapped
in timm's ``DistillationTeacher`` (eval mode; it re-normalises the student's input when the two were trained with
different statistics). The loss is timm's logit distillation (``LogitDistillationTask``): the KL divergence of the
temperature-softened distributions times T^2, here mixed as ``(1 - weight) * task + weight * distillation``. timm's
task object wraps the student's forward and loss as one module; the trainer keeps its own forward (Accelerate,
accumulation, Mixup targets), so only the teacher wrapper is reused and the loss is the one line below.

The usual use is a conversion fine-tune: the dense model a routed or merged one came from is its teacher
(``teacher: pretrained``), as DynamicViT and DeiT distil from the model they compress. A list of teachers is an
ensemble (Hinton et al.'s original use of distillation: an ensemble's knowledge in one model): its members'
temperature-softened distributions are averaged, so a model can learn from a teacher more accurate than any one
published model. timm's distillation task takes one teacher, so the averaging is written here (``ensemble_logits``).
"""

from __future__ import annotations

import math

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


def ensemble_logits(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """One teacher's logits from several: ``T * log(mean_i softmax(z_i / T))``, whose softmax at temperature ``T`` is
    exactly the members' average softened distribution (so ``distillation_loss`` needs no ensemble case, and its
    top class is the ensemble's vote by probability). One member's logits come back unchanged."""
    if len(logits) == 1:
        return logits[0]
    t = temperature
    log_p = torch.stack([F.log_softmax(z / t, dim=-1) for z in logits])
    return t * (torch.logsumexp(log_p, dim=0) - math.log(len(logits)))


def load_teachers(recipe: Recipe, num_classes: int, device: torch.device) -> list[DistillationTeacher]:
    """The recipe's teacher (each member of an ensemble), frozen, in eval mode, on ``device``; a RecipeError names
    ``distill.teacher`` when one cannot be loaded or predicts a different number of classes than the data has."""
    return [_load_member(src, num_classes, device) for src in recipe.distill.sources(recipe.model.pretrained)]


def _load_member(src: str, num_classes: int, device: torch.device) -> DistillationTeacher:
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
    """The teacher (one model or an ensemble) and the loss mix, applied to one micro-batch in the trainer's step."""

    def __init__(
        self, config: DistillConfig, teachers: list[DistillationTeacher], mean, std, device: torch.device
    ) -> None:
        self.config, self.teachers = config, teachers
        self.student_mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.student_std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's (normalised, augmented) batch ``x``: each member sees it in its own
        normalisation and input size; an ensemble's are combined by ``ensemble_logits``."""
        logits = []
        for teacher in self.teachers:
            size = getattr(teacher.model, "model_args", {}).get("img_size")
            xt = teacher.normalize_input(x, self.student_mean, self.student_std)
            logits.append(teacher(fit_resolution(xt, size)).float())
        return ensemble_logits(logits, self.config.temperature)

    def mix(self, task_loss: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        kd = distillation_loss(student_logits.float(), self.teacher_logits(x), c.kind, c.temperature)
        return (1.0 - c.weight) * task_loss + c.weight * kd
