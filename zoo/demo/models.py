"""What ``zoo demo`` makes from the published base: the models, the recipes that make them, and where the measured
from-scratch cost of a bigger model is kept."""

from __future__ import annotations

from dataclasses import dataclass

#: the published tuned baseline the demo starts from, loaded as a user loads it: its hub folder (the bundled copy
#: under model_cards/ stands in for hf-hub:growzoo/zoo_vit_micro_conv16_p4.fmnist). The lighter-stem baseline: its
#: transformer blocks carry most of its FLOPs, so routing tokens past them can make it faster (README, "The zoo").
BASE = "local-dir:model_cards/zoo_vit_micro_conv16_p4.fmnist"


@dataclass(frozen=True)
class DemoModel:
    """One model the demo makes from the base.

    ``role``: what it is for (``better``: more accurate; ``faster``: more images per second); ``name``: its hub-ready
    folder's name, the model's name in the table and JSON; ``recipe``: the recipe in
    schedules/ that makes it (its ``model.pretrained`` is set to the base); ``how``: what the recipe does, in a few
    words. ``scratch_suite``: the ``zoo bench`` suite whose kept runs (``results/SUITE``) trained, as arm
    ``scratch``, the same final architecture from scratch: the demo quotes that cost instead of paying it again."""

    role: str
    name: str
    recipe: str
    how: str
    scratch_suite: str | None = None


DEMO_MODELS = (
    DemoModel(
        role="better",
        name="zoo_vit_micro_conv16_p4_d8.fmnist_grown_distilled",
        recipe="fmnist_conv16_grown_distilled",
        how="grown 4 -> 8 blocks while fine-tuning, distilled from the base + zoo_vit_micro_conv_p4.fmnist",
        scratch_suite="grow-pretrained-conv16",
    ),
    DemoModel(
        role="faster",
        name="zoo_vit_micro_conv16_p4_r20.fmnist_routed",
        recipe="fmnist_baseline_to_routed",
        how="routed blocks (capacity 0.2, class-attention router), distilled from the base",
    ),
)

#: what each role must show against the base (the main-job issue's goals): ``better`` at least ``acc_gain_pt`` points
#: more accurate; ``faster`` at least ``speedup`` x the base's inference img/s within ``acc_loss_pt`` points of it.
#: The demo reports each as measured, met or not, so its table never claims more than the numbers do.
ROLE_GOALS = {
    "better": {"acc_gain_pt": 0.5},
    "faster": {"speedup": 1.4, "acc_loss_pt": 0.5},
}
