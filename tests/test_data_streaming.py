"""Data decoded on the fly: Hugging Face datasets and image folders, timm's augmentations, sharding and resume.

The on-the-fly path (``data.cache: false``: images decoded per batch in DataLoader workers) must train exactly like
the in-memory path: the same pixels, batches, augmentation draws and therefore bitwise equal weights; two processes
must see every image once per epoch; a run killed mid-epoch must resume to the same weights.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate.data_loader import prepare_data_loader
from conftest import HF_TEST as N_TEST
from conftest import HF_TRAIN as N_TRAIN
from conftest import tiny_recipe
from safetensors.torch import load_file
from test_kill_resume import finish, start, wait_for_step

from zoo.data.augment import BatchAugment, ImageAugment
from zoo.data.datasets import DataError, build_datasets
from zoo.data.fashion_mnist import FASHION_MNIST_CLASSES
from zoo.data.pipeline import make_loader
from zoo.training.recipe import RecipeError, recipe_from_dict
from zoo.training.trainer import train


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"


def hf_recipe(folder: Path, **data) -> dict:
    return tiny_recipe(data={"name": f"hf:{folder}", "train_subset": None, "test_subset": None, **data})


# ---------------------------------------------------------------------------------------------------------- sources
@pytest.mark.parametrize("form", ["saved", "parquet"])
def test_hf_dataset_gives_the_original_pixels_and_labels(hf_fmnist, fmnist, form):
    b = build_datasets(f"hf:{hf_fmnist[form]}", img_size=28, in_chans=1, cache=False)
    assert b.train.lazy and b.test.lazy and "on the fly" in b.storage
    assert b.class_names == list(FASHION_MNIST_CLASSES) and b.eval_split == "test"
    idx = torch.tensor([0, 7, 511, 3])
    assert torch.equal(b.train.load(idx), fmnist["train_x"][idx])
    assert torch.equal(b.train_y, fmnist["train_y"][:N_TRAIN]) and torch.equal(b.test_y, fmnist["test_y"][:N_TEST])
    cached = build_datasets(f"hf:{hf_fmnist[form]}", img_size=28, in_chans=1)  # auto: 0.5 MB fits the budget
    assert not cached.train.lazy and "fits data.cache_max_mb" in cached.storage
    assert torch.equal(cached.train_x, fmnist["train_x"][:N_TRAIN])
    assert (cached.mean, cached.std) == (b.mean, b.std)  # the same estimate on both paths
    with pytest.raises(DataError, match="decoded on the fly"):
        b.train_x  # noqa: B018  (the in-memory view of a streamed split is an error that says why)


def test_webdataset_tar_shards_through_the_same_path(fmnist, tmp_path):
    """Tar shards in the WebDataset layout (KEY.png + KEY.cls per sample) load through ``hf:FOLDER`` as they are."""
    import io
    import tarfile

    from PIL import Image

    for split, shards in (("train", 2), ("test", 1)):
        for shard in range(shards):
            with tarfile.open(tmp_path / f"{split}-{shard:05d}.tar", "w") as tar:
                for i in range(shard * 16, shard * 16 + 16):
                    png = io.BytesIO()
                    Image.fromarray(fmnist[f"{split}_x"][i, 0].numpy()).save(png, format="PNG")
                    for suffix, payload in (
                        ("png", png.getvalue()),
                        ("cls", str(int(fmnist[f"{split}_y"][i])).encode()),
                    ):
                        info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    b = build_datasets(f"hf:{tmp_path}", img_size=28, in_chans=1, cache=False)
    order = torch.tensor([int(k) for k in _keys(tmp_path)])
    assert torch.equal(b.train.load(torch.arange(32)), fmnist["train_x"][order])
    assert torch.equal(b.train_y, fmnist["train_y"][order]) and len(b.test) == 16


def _keys(folder: Path) -> list[str]:
    import datasets

    return datasets.load_dataset(str(folder))["train"]["__key__"]


def test_hf_dataset_errors_name_the_field(hf_fmnist, tmp_path):
    with pytest.raises(DataError) as info:
        build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, image_column="picture")
    assert info.value.field == "data.image_column" and "image, label" in str(info.value)
    with pytest.raises(DataError) as info:
        build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, image_column="label")
    assert info.value.field == "data.image_column" and "not an Image" in str(info.value)
    with pytest.raises(DataError) as info:
        build_datasets(f"hf:{tmp_path / 'nothing-here'}", img_size=28, in_chans=1)
    assert info.value.field == "data.name"
    with pytest.raises(DataError) as info:
        build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, cache="sometimes")
    assert info.value.field == "data.cache"


def test_cache_budget_decides_the_path(hf_fmnist):
    small = build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, cache_max_mb=0.1)
    assert small.train.lazy and "exceed data.cache_max_mb" in small.storage
    forced = build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, cache=True, cache_max_mb=0.1)
    assert not forced.train.lazy and "data.cache: true" in forced.storage


# ---------------------------------------------------------------------------------------------------- augmentation
def test_image_augment_is_a_function_of_its_seed(fmnist):
    img = fmnist["train_x"][0]
    for policy in ("rand-m9-mstd0.5", "augmix-m5-w4-d2", "trivialaugment"):
        aug = ImageAugment(policy, 28, (0.286,))
        a, b = aug(img, 1), aug(img, 1)
        assert a.dtype == torch.uint8 and a.shape == img.shape
        assert torch.equal(a, b), policy
        assert not all(torch.equal(aug(img, s), a) for s in range(3, 8)), f"{policy} changes nothing"
    state = (torch.random.get_rng_state(), np.random.get_state()[1].copy())
    ImageAugment("rand-m9", 28, (0.5,))(img, 3)
    assert torch.equal(state[0], torch.random.get_rng_state()) and np.array_equal(state[1], np.random.get_state()[1])
    with pytest.raises(ValueError, match="not a timm auto_augment policy"):
        ImageAugment("randaugment-please", 28, (0.5,))
    with pytest.raises(ValueError, match="Pillow"):  # would fail at a random image mid-epoch: refused up front
        ImageAugment("rand-m9-mstd0.5-inc1", 28, (0.5,))


def test_batch_augment_mixes_into_smoothed_soft_targets():
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    aug = BatchAugment(10, label_smoothing=0.1, reprob=1.0, mixup=0.8, cutmix=1.0)
    gen = torch.Generator().manual_seed(0)
    xa, t = aug(x.clone(), y, gen)
    xb, t2 = aug(x.clone(), y, torch.Generator().manual_seed(0))
    assert torch.equal(xa, xb) and torch.equal(t, t2), "same generator, same draws"
    assert t.shape == (8, 10) and torch.allclose(t.sum(1), torch.ones(8)) and float(t.min()) > 0
    assert not torch.equal(xa, x)
    with pytest.raises(ValueError, match="even batch"):
        aug(x[:7].clone(), y[:7], gen)
    plain = BatchAugment(10)
    assert not plain.active and plain(x, y, gen)[1] is y


@pytest.mark.parametrize(
    "data, field",
    [
        ({"auto_augment": "v9"}, "data.auto_augment"),
        ({"reprob": 1.5}, "data.reprob"),
        ({"mixup": -1.0}, "data.mixup"),
        ({"mixup": 0.8, "batch_size": 63}, "data.mixup"),
        ({"remode": "blur"}, "data.remode"),
        ({"cache": "sometimes"}, "data.cache"),
    ],
)
def test_bad_augmentation_and_cache_fields_are_named(data, field):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(tiny_recipe(data=data))
    assert info.value.field_path == field


# ------------------------------------------------------------------------------------------------- equal batches
def test_on_the_fly_and_in_memory_loaders_give_the_same_batches(hf_fmnist):
    lazy = build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, cache=False)
    mem = build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, cache=True)
    aug = ImageAugment("rand-m9-mstd0.5", 28, lazy.mean)
    a = make_loader(lazy.train, None, 64, shuffle=True, seed=5, drop_last=True, num_workers=2, augment=aug)
    b = make_loader(mem.train, None, 64, shuffle=True, seed=5, drop_last=True, num_workers=0, augment=aug)
    for epoch in (0, 1):
        a.dataset.set_epoch(epoch)
        b.dataset.set_epoch(epoch)
        batches_a, batches_b = list(a), list(b)
        assert len(batches_a) == len(batches_b) == N_TRAIN // 64
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(batches_a[0][0], mem.train.load(torch.arange(64)))  # augmented and shuffled


def test_two_processes_see_every_image_once_per_epoch(hf_fmnist):
    lazy = build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, cache=False)
    labels_as_ids = build_datasets(f"hf:{hf_fmnist['saved']}", img_size=28, in_chans=1, cache=False)
    labels_as_ids.train.labels = torch.arange(N_TRAIN)  # each image's label is its index: the batches name them
    seen = []
    for rank in (0, 1):
        loader = make_loader(labels_as_ids.train, None, 32, shuffle=True, seed=0, drop_last=True, num_workers=1)
        shard = prepare_data_loader(
            loader, num_processes=2, process_index=rank, put_on_device=False, use_seedable_sampler=True
        )
        shard.set_epoch(1)
        seen.append(torch.cat([y for _, y in shard]))
    assert len(seen[0]) == len(seen[1]) == N_TRAIN // 2
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(N_TRAIN)), "every image once across processes"
    assert lazy.train.lazy


def test_training_on_the_fly_equals_training_in_memory(hf_fmnist, tmp_path):
    data = {"auto_augment": "rand-m9-mstd0.5", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0}
    runs = {}
    for cache in (False, True):
        recipe = recipe_from_dict(hf_recipe(hf_fmnist["parquet"], cache=cache, **data))
        runs[cache] = train(recipe, tmp_path / str(cache), progress=False)
    assert_same_weights(tmp_path / "False", tmp_path / "True")
    assert runs[False].final_acc == runs[True].final_acc
    cfg = json.loads((tmp_path / "False" / "model" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["label_names"] == list(FASHION_MNIST_CLASSES)


def test_killed_mid_epoch_on_the_fly_resumes_bitwise(hf_fmnist, tmp_path):
    recipe = hf_recipe(
        hf_fmnist["saved"], cache=False, num_workers=2, auto_augment="rand-m9-mstd0.5", reprob=0.25, mixup=0.8
    )
    recipe["schedule"] = {"steps": 12, "warmup": 0.1}  # 8 steps per epoch: the kill lands in epoch 0 or 1
    recipe["train"] = {"seed": 0, "log_every": 1, "eval_every": 100.0, "checkpoint_every": 2}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ref = start(path, tmp_path / "ref")
    assert finish(ref)[0] == 0
    proc = start(path, tmp_path / "killed")
    wait_for_step(proc, tmp_path / "killed", 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "killed" / "model").exists()
    resumed = start(path, tmp_path / "killed", "--resume")
    code, log = finish(resumed)
    assert code == 0, log
    assert_same_weights(tmp_path / "ref", tmp_path / "killed")
