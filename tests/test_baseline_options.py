"""Recipe options for tuning on a validation split: the held-out split, the LR schedule's shape, EMA warm-up, the
early-convolution stem; and recipe identity surviving schema growth."""

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml

import zoo  # noqa: F401
from zoo.data.datasets import DataError, build_datasets
from zoo.growth.operators import grow_embed_dim, grow_resolution
from zoo.training.progress import lr_factor
from zoo.training.recipe import ADDED_FIELDS, RecipeError, load_recipe, recipe_from_dict
from zoo.training.recipe_lookup import schedules_dir
from zoo.utils.manifest import recipe_hash


def test_val_split_is_stratified_disjoint_and_seed_independent(fmnist):
    full = build_datasets("fashion-mnist")
    b = build_datasets("fashion-mnist", val_split=1000)
    assert b.eval_split == "val" and full.eval_split == "test"
    assert len(b.test_y) == 1000 and len(b.train_y) == len(full.train_y) - 1000
    assert torch.bincount(b.test_y).tolist() == [100] * 10  # class-balanced
    # disjoint and complete: held-out + kept images are exactly the training images
    keys = lambda x: {bytes(t.numpy().tobytes()) for t in x}  # noqa: E731
    assert not keys(b.test_x[:200]) & keys(b.train_x[:20000])
    assert sorted(b.test_y.tolist() + b.train_y.tolist()) == sorted(full.train_y.tolist())
    again = build_datasets("fashion-mnist", val_split=1000)
    assert torch.equal(again.test_x, b.test_x)
    # a train subset is taken from what is left; the eval split stays the held-out one
    sub = build_datasets("fashion-mnist", val_split=1000, train_subset=500)
    assert len(sub.train_y) == 500 and torch.equal(sub.test_x, b.test_x)


def test_val_split_errors_name_the_field(fmnist):
    with pytest.raises(DataError, match="data.val_split"):
        build_datasets("fashion-mnist", val_split=60000)
    with pytest.raises(RecipeError, match="data.val_split"):
        recipe_from_dict({"data": {"val_split": 0}})


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_lr_schedule_warmup_hold_decay(decay):
    total, warm, hold = 100, 10, 40
    f = [lr_factor(s, total, warm, 0.0, decay=decay, hold_steps=hold) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in f[10:51])  # the stable phase
    assert all(a >= b for a, b in zip(f[50:], f[51:])) and f[-1] < 0.05
    mid = lr_factor(75, total, warm, 0.0, decay=decay, hold_steps=hold)  # halfway through the decay
    assert mid == pytest.approx(0.5)
    # without hold the cosine schedule is the one recipes had before the option existed
    assert lr_factor(55, total, warm) == pytest.approx(0.5)
    assert lr_factor(55, total, warm, decay="linear") == pytest.approx(0.5)
    assert lr_factor(30, total, warm, decay="linear") == pytest.approx(1 - 20 / 90)


def test_schedule_options_are_validated():
    with pytest.raises(RecipeError, match="schedule.decay"):
        recipe_from_dict({"schedule": {"decay": "step"}})
    with pytest.raises(RecipeError, match="schedule.hold"):
        recipe_from_dict({"schedule": {"warmup": 0.5, "hold": 0.5}})


def test_early_stem_keeps_the_token_grid_and_records_its_width():
    m = timm.create_model("zoo_vit_micro_p4", stem="early", embed_dim=64, num_heads=2)
    assert m.model_args["stem"] == "early" and m.model_args["stem_width"] == 16  # embed_dim / 4, resolved
    assert m.patch_embed.grid_size == (7, 7) and m.patch_embed.proj.out_channels == 64
    out = m(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the recorded width rebuilds the same stem after the embedding width has changed (e.g. by growth)
    m2 = timm.create_model("zoo_vit_micro_p4", stem="early", embed_dim=128, num_heads=4, stem_width=16)
    assert [c.out_channels for c in m2.patch_embed.conv if isinstance(c, torch.nn.Conv2d)] == [16, 32, 64]
    with pytest.raises(ValueError, match="power-of-2"):
        timm.create_model("zoo_vit_micro_p7", stem="early")


def test_shifted_patch_stem_is_the_paper_tokenization():
    """SPT: [x, x shifted by (+-p/2, +-p/2)] on the channels, LayerNorm over each patch, one linear map per patch."""
    torch.manual_seed(0)
    m = timm.create_model("zoo_vit_micro_p4", stem="spt", embed_dim=64, num_heads=2)
    stem = m.patch_embed
    assert m.model_args["stem"] == "spt" and m.model_args["stem_width"] is None  # no width to record
    assert stem.grid_size == (7, 7) and stem.proj.in_channels == 5
    with torch.no_grad():
        stem.norm_weight.uniform_(0.5, 1.5)
        stem.norm_bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 1, 28, 28)
    p, s = 4, 2
    pad = F.pad(x, (s, s, s, s))
    # up-left, up-right, down-left, down-right: the image moved by half a patch, zeros where it left
    views = [x] + [pad[..., dy : dy + 28, dx : dx + 28] for dy, dx in ((0, 0), (0, 4), (4, 0), (4, 4))]
    assert torch.equal(views[1][..., s:, s:], x[..., :-s, :-s]) and torch.equal(views[4][..., :-s, :-s], x[..., s:, s:])
    stacked = torch.cat(views, dim=1)  # B, 5, 28, 28
    flat = stacked.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(2, 49, 5 * p * p)
    normed = F.layer_norm(flat, (5 * p * p,), stem.norm_weight.flatten(), stem.norm_bias.flatten(), eps=1e-6)
    expected = normed @ stem.proj.weight.flatten(1).T + stem.proj.bias
    torch.testing.assert_close(stem(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="patch_size >= 2"):
        timm.create_model("zoo_vit_micro_p4", stem="spt", patch_size=1)


def test_conv_stem_models_widen_and_resize_preserving_function():
    """Width growth keeps a stem's inner layers (they act on pixels); its last conv widens like timm's PatchEmbed."""
    for stem in ("early", "spt"):
        torch.manual_seed(0)
        m = timm.create_model("zoo_vit_micro_conv_p4", stem=stem, attn_type="lsa").eval()
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            ref = m(x)
            grow_embed_dim(m, 128)
            torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)
            grow_resolution(m, 32)
            assert m.patch_embed.grid_size == (8, 8) and torch.isfinite(m(torch.randn(2, 1, 32, 32))).all()


def test_existing_recipe_hashes_survive_the_added_fields():
    """Every bundled recipe hashes as its published card records (the fields added since hold their neutral value);
    setting an added field to anything else changes the hash."""
    for path in sorted(schedules_dir().glob("*.yaml")):
        r = load_recipe(path)
        ident, raw = r.identity(), yaml.safe_load(path.read_text())
        for dotted in ADDED_FIELDS:  # an added field enters the identity only where the recipe sets it
            if "." not in dotted:  # an added section
                assert (dotted in ident) == (dotted in raw), (path.name, dotted)
                continue
            section, key = dotted.split(".")
            in_file = key in (raw.get(section) or {})
            assert (key in (ident.get(section) or {})) <= in_file, (path.name, dotted)
    for dotted, (_, neutral) in ADDED_FIELDS.items():
        if "." not in dotted:  # an added section: present (any settings) vs absent
            changed = recipe_from_dict({"model": {"pretrained": "some-folder"}, dotted: {}})
            unset = recipe_from_dict({"model": {"pretrained": "some-folder"}})
            assert recipe_hash(changed.identity()) != recipe_hash(unset.identity()), dotted
            continue
        section, key = dotted.split(".")
        other = {
            "data.val_split": 5000, "schedule.decay": "linear", "schedule.hold": 0.5, "train.ema_warmup": True,
            "data.cache": False, "data.cache_max_mb": 64.0, "data.image_column": "img", "data.label_column": "y",
            "data.auto_augment": "rand-m9-mstd0.5", "data.reprob": 0.25, "data.remode": "const",
            "data.mixup": 0.8, "data.cutmix": 1.0, "data.mix_prob": 0.5, "data.mix_switch_prob": 0.3,
            "unfreeze.anneal_lr": True, "unfreeze.check_every": 0.1, "unfreeze.threshold": 0.05,
            "train.compile": "inductor", "data.streaming": True, "data.shuffle_buffer": 64,
            "unfreeze.cache_prefix": True, "unfreeze.cache_max_mb": 512.0, "unfreeze.start": 0.5,
            "unfreeze.scale_lr": True, "routing.weight": "tanh", "routing.weight_scale": 0.2,
        }  # fmt: skip
        # a field of an optional section is compared within that section (the section itself changes the hash);
        # a field that needs others to be valid (streaming: an hf: source; a cache: flip-only data) gets them
        context = {
            "unfreeze": {"mode": "freezeout", **({"anneal_lr": True} if key == "scale_lr" else {})},
            "data": {"name": "hf:some-folder", "crop_pad": 0},
            "routing": {},
        }
        base = {section: context.get(section, {})} if section in context else {}
        if section == "unfreeze":
            base["data"] = context["data"]
        unset = recipe_hash(recipe_from_dict(base).identity())
        for value, same in ((other[dotted], False), (neutral, True)):
            recipe = recipe_from_dict({**base, section: {**base.get(section, {}), key: value}})
            assert (recipe_hash(recipe.identity()) == unset) == same, (dotted, value)


def test_a_changed_default_changes_the_hash_of_runs_relying_on_it():
    """A recipe that leaves a field unset gets the default's value; hashing resolved values means a different default
    gives that recipe a different hash, for added fields (their neutral value is fixed) and first-schema ones."""
    base = recipe_hash(recipe_from_dict({}).identity())
    r = recipe_from_dict({})
    r.schedule.decay = "linear"  # what an unset `decay` would resolve to under a changed default
    assert recipe_hash(r.identity()) != base
    r2 = recipe_from_dict({})
    r2.optim.lr = r2.optim.lr * 2  # likewise for a field of the first schema
    assert recipe_hash(r2.identity()) != base


def test_sincos_position_embedding_init_is_the_2d_grid_and_recorded():
    from timm.layers import build_sincos2d_pos_embed

    m = timm.create_model("zoo_vit_micro_conv_p4", pos_embed_init="sincos")
    assert m.model_args["pos_embed_init"] == "sincos" and m.pos_embed.requires_grad  # learned, sin-cos at start
    torch.testing.assert_close(m.pos_embed[0, 1:].detach(), build_sincos2d_pos_embed([7, 7], dim=64))
    assert not m.pos_embed[0, 0].any()  # the class token's position starts at zero
    with pytest.raises(ValueError, match="pos_embed_init"):
        timm.create_model("zoo_vit_micro_conv_p4", pos_embed_init="rope")
