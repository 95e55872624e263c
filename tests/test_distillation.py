"""Knowledge distillation (the recipe's ``distill`` section): the loss, the recipe checks, and training with a teacher
on real Fashion-MNIST data (the student that equals its teacher has zero distillation loss; resume stays exact)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe
from test_train import assert_bitwise_equal, weights

from zoo.training.distillation import distillation_loss, ensemble_logits
from zoo.training.recipe import RecipeError, recipe_from_dict
from zoo.training.trainer import train

TEACHER = str(Path(__file__).resolve().parents[1] / "model_cards" / "zoo_vit_micro_p7.fmnist")
# a second published model (another stem, another input normalisation): an ensemble member beside TEACHER
OTHER = str(Path(__file__).resolve().parents[1] / "model_cards" / "zoo_vit_micro_conv16_p4.fmnist")


def test_soft_loss_is_the_kl_divergence_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    for temp in (1.0, 4.0):
        p_t = F.softmax(t / temp, -1)
        kl = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean()
        assert distillation_loss(s, t, "soft", temp) == pytest.approx(float(kl * temp * temp), rel=1e-5)
    assert distillation_loss(t, t, "soft", 2.0) == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(s, t, "hard", 1.0) == pytest.approx(float(F.cross_entropy(s, t.argmax(-1))))


def test_ensemble_logits_soften_to_the_members_average_distribution():
    torch.manual_seed(0)
    members = [torch.randn(5, 10) * 3 for _ in range(3)]
    for temp in (1.0, 2.5):
        mean_p = sum(F.softmax(z / temp, -1) for z in members) / 3
        torch.testing.assert_close(F.softmax(ensemble_logits(members, temp) / temp, -1), mean_p)
    assert ensemble_logits(members[:1], 2.0) is members[0], "one teacher: its own logits"
    # the loss against the ensemble is the KL to the averaged distribution (what Hinton et al. distil)
    s = torch.randn(5, 10)
    p_t = sum(F.softmax(z / 2.0, -1) for z in members) / 3
    kl = (p_t * (p_t.log() - F.log_softmax(s / 2.0, -1))).sum(-1).mean() * 4.0
    assert distillation_loss(s, ensemble_logits(members, 2.0), "soft", 2.0) == pytest.approx(float(kl), rel=1e-5)


def test_soft_loss_pulls_the_student_towards_the_teacher():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
    distillation_loss(s, t, "soft", 1.0).backward()
    with torch.no_grad():
        moved = s - 0.5 * s.grad
    assert distillation_loss(moved, t, "soft", 1.0) < distillation_loss(s.detach(), t, "soft", 1.0)


@pytest.mark.parametrize(
    "distill,field",
    [
        ({"weight": 0.0}, "distill.weight"),
        ({"weight": 1.5}, "distill.weight"),
        ({"temperature": 0.0}, "distill.temperature"),
        ({"kind": "feature"}, "distill.kind"),
        ({"teacher": "pretrained"}, "distill.teacher"),  # model.pretrained is not set in the tiny recipe
        ({"teacher": ["pretrained", "x"]}, "distill.teacher"),
        ({"teacher": []}, "distill.teacher"),
        ({"teacher": ["a", "b", "a"]}, "distill.teacher"),  # a member twice would weigh double
        ({"temprature": 2.0}, "distill.temprature"),
    ],
)
def test_bad_distill_settings_name_the_field(distill, field):
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(tiny_recipe(distill=distill), "r.yaml")
    assert e.value.field_path == field


def test_unloadable_or_mismatched_teacher_is_refused_before_training(tmp_path, fmnist):
    bad = recipe_from_dict(tiny_recipe(distill={"teacher": str(tmp_path / "missing")}))
    with pytest.raises(RecipeError, match="distill.teacher"):
        train(bad, tmp_path / "a", progress=False)
    five = recipe_from_dict(tiny_recipe(distill={"teacher": TEACHER}, data={"classes": [0, 1, 2, 3, 4]}))
    with pytest.raises(RecipeError, match="predicts 10 classes, the data has 5"):
        train(five, tmp_path / "b", progress=False)


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_student_equal_to_its_teacher_has_zero_distillation_loss(tmp_path, fmnist):
    """Fine-tuning the published model with itself as the teacher (weight 1, routing at capacity 1.0, which is
    function-preserving): the first logged loss is the distillation loss of identical logits, 0."""
    r = recipe_from_dict(
        tiny_recipe(
            model={"name": "zoo_vit_micro_p7", "pretrained": TEACHER, "args": {}},
            routing={"capacity": 1.0, "layers": "all"},
            distill={"teacher": "pretrained", "weight": 1.0},
            optim={"lr": 1e-3},
            train={"seed": 0, "log_every": 1, "eval_every": 100.0},
            schedule={"steps": 2, "warmup": 0.0},
        )
    )
    train(r, tmp_path / "run", progress=False)
    first = next(x for x in _log(tmp_path / "run") if "loss" in x)
    assert first["step"] == 1 and first["loss"] == pytest.approx(0.0, abs=1e-5)


def test_distilled_run_resumes_bitwise_exact(tmp_path, fmnist):
    recipe = recipe_from_dict(tiny_recipe(distill={"teacher": TEACHER, "weight": 0.7, "temperature": 2.0}))
    train(recipe, tmp_path / "full", progress=False)
    train(recipe, tmp_path / "part", progress=False, stop_after=3)
    train(recipe, tmp_path / "part", resume=True, progress=False)
    assert_bitwise_equal(weights(tmp_path / "full"), weights(tmp_path / "part"))
    plain = recipe_from_dict(tiny_recipe())
    train(plain, tmp_path / "plain", progress=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "plain")
    assert any(not torch.equal(a[k], b[k]) for k in a), "the teacher changed the training"


def test_an_ensemble_teacher_trains_resumes_exactly_and_differs_from_one_member(tmp_path, fmnist):
    ens = recipe_from_dict(tiny_recipe(distill={"teacher": [TEACHER, OTHER], "weight": 0.7, "temperature": 2.0}))
    train(ens, tmp_path / "full", progress=False)
    train(ens, tmp_path / "part", progress=False, stop_after=3)
    train(ens, tmp_path / "part", resume=True, progress=False)
    assert_bitwise_equal(weights(tmp_path / "full"), weights(tmp_path / "part"))
    one = recipe_from_dict(tiny_recipe(distill={"teacher": TEACHER, "weight": 0.7, "temperature": 2.0}))
    train(one, tmp_path / "one", progress=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "one")
    assert any(not torch.equal(a[k], b[k]) for k in a), "the second member changed the teacher"
    from zoo.publish.export import export_run

    card = (export_run(tmp_path / "full", tmp_path / "card", profile_iters=1) / "README.md").read_text()
    assert f"distilled from an ensemble of `{TEACHER}`, `{OTHER}`" in card and "- knowledge-distillation" in card
    assert "soft, weight 0.7, temperature 2" in card
    missing = recipe_from_dict(tiny_recipe(distill={"teacher": [TEACHER, str(tmp_path / "missing")]}))
    with pytest.raises(RecipeError, match="distill.teacher"):
        train(missing, tmp_path / "bad", progress=False)
