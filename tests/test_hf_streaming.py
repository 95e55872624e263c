"""Streamed Hugging Face datasets (``data.streaming: true``): read in order, never held whole.

What must hold (``zoo.data.streaming``): the stream gives the same images and labels as the map-style path; an
epoch's order is a pure function of (seed, epoch) and covers every image once; two processes share each epoch
exactly, in equal numbers of batches; a resumed epoch passes over its first batches and gives the rest unchanged
(augmentation draws included); training killed mid-epoch resumes bitwise; two real processes train in step.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import HF_TEST, HF_TRAIN, tiny_recipe
from safetensors.torch import load_file
from test_kill_resume import finish, start, wait_for_step
from test_multiprocess import train_in_two_processes

from zoo.data.augment import ImageAugment
from zoo.data.datasets import DataError, build_datasets
from zoo.data.streaming import make_stream_loader
from zoo.training.evaluation import accuracy
from zoo.training.recipe import RecipeError, recipe_from_dict

IDS_TRAIN, IDS_TEST, IDS_SHARDS = 256, 64, 4


@pytest.fixture(scope="module")
def hf_ids(tmp_path_factory, fmnist) -> Path:
    """Fashion-MNIST images whose label is their index (a plain int column, no ``ClassLabel``: the stream's size and
    classes are counted), the train split in 4 Parquet shards, so batches name the images they hold."""
    import datasets
    from PIL import Image

    root = tmp_path_factory.mktemp("hf_ids")
    (root / "data").mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    for split, n, shards in (("train", IDS_TRAIN, IDS_SHARDS), ("test", IDS_TEST, 1)):
        images = [Image.fromarray(img[0].numpy()) for img in fmnist[f"{split}_x"][:n]]
        ds = datasets.Dataset.from_dict({"image": images, "label": list(range(n))}, features=features)
        for s in range(shards):
            file = root / "data" / f"{split}-{s:05d}-of-{shards:05d}.parquet"
            ds.shard(shards, s, contiguous=True).to_parquet(str(file))
    return root


def streamed(folder: Path, **kwargs):
    return build_datasets(f"hf:{folder}", img_size=28, in_chans=1, streaming=True, progress=False, **kwargs)


def ids(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


# ----------------------------------------------------------------------------------------------------- the source
@pytest.mark.parametrize("form", ["saved", "parquet"])
def test_stream_gives_the_images_and_labels_of_the_map_style_path(hf_fmnist, fmnist, form):
    b = streamed(hf_fmnist[form])
    assert "streamed" in b.storage and len(b.train) == HF_TRAIN and len(b.test) == HF_TEST
    mapped = build_datasets(f"hf:{hf_fmnist[form]}", img_size=28, in_chans=1, cache=False)
    assert b.class_names == mapped.class_names and b.num_classes == 10
    for split, n in (("train", HF_TRAIN), ("test", HF_TEST)):
        batches = list(make_stream_loader(getattr(b, split), 50, shuffle=False, seed=0, drop_last=False))
        assert torch.equal(torch.cat([x for x, _ in batches]), fmnist[f"{split}_x"][:n])
        assert torch.equal(torch.cat([y for _, y in batches]), fmnist[f"{split}_y"][:n])
    # its statistics sample is the stream's first images, not the map path's class-balanced sample: close, not equal
    assert b.mean[0] == pytest.approx(mapped.mean[0], abs=0.02) and b.std[0] == pytest.approx(mapped.std[0], abs=0.02)
    with pytest.raises(DataError, match="streamed"):
        b.train_y  # noqa: B018  (no label tensor: the labels come with the images)


def test_size_and_classes_are_counted_when_the_metadata_lacks_them(hf_ids):
    b = streamed(hf_ids)
    assert "counted" in b.storage
    assert (len(b.train), len(b.test), b.num_classes) == (IDS_TRAIN, IDS_TEST, IDS_TRAIN)


def test_epoch_order_is_a_function_of_seed_and_epoch(hf_ids):
    b = streamed(hf_ids)

    def epoch(seed: int, e: int) -> list[int]:
        loader = make_stream_loader(b.train, 32, shuffle=True, seed=seed, drop_last=True, buffer=64)
        loader.dataset.set_epoch(e)
        return ids(loader)

    first = epoch(0, 0)
    assert sorted(first) == list(range(IDS_TRAIN)), "every image once per epoch"
    assert first != list(range(IDS_TRAIN))
    assert epoch(0, 0) == first, "the same seed and epoch give the same order"
    assert epoch(0, 1) != first and epoch(1, 0) != first
    assert first[:64] != sorted(first[:64]), "shuffled within the buffer"
    shard_size = IDS_TRAIN // IDS_SHARDS
    assert len({epoch(0, e)[0] // shard_size for e in range(4)}) > 1, "the shard order changes with the epoch"


def test_two_processes_share_each_epoch_exactly(hf_ids):
    b = streamed(hf_ids, train_subset=IDS_TRAIN - 3)  # an odd count: the ranks' shares differ by one image
    shares = []
    for rank in (0, 1):
        loader = make_stream_loader(b.train, 16, shuffle=True, seed=0, drop_last=True, rank=rank, world=2, buffer=64)
        loader.dataset.set_epoch(2)
        assert len(loader) == 7
        shares.append(ids(loader))
    assert len(shares[0]) == len(shares[1]) == (IDS_TRAIN - 3) // 2 // 16 * 16, "the same number of steps"
    assert not set(shares[0]) & set(shares[1])
    eval_shares = [ids(make_stream_loader(b.test, 10, False, 0, False, rank=r, world=2)) for r in (0, 1)]
    assert sorted(eval_shares[0] + eval_shares[1]) == list(range(IDS_TEST)), "evaluation sees every image once"


def test_resumed_epoch_passes_over_its_first_batches(hf_ids, fmnist):
    b = streamed(hf_ids)
    aug = ImageAugment("rand-m9-mstd0.5", 28, b.mean)
    full = make_stream_loader(b.train, 32, shuffle=True, seed=3, drop_last=True, augment=aug, buffer=64)
    full.dataset.set_epoch(1)
    whole = list(full)
    resumed = make_stream_loader(b.train, 32, shuffle=True, seed=3, drop_last=True, augment=aug, buffer=64)
    resumed.dataset.set_epoch(1)
    resumed.dataset.skip_batches(3)
    rest = list(resumed)
    assert len(rest) == len(whole) - 3
    for (xa, ya), (xb, yb) in zip(whole[3:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb), "the same images with the same augmentation draws"
    assert not torch.equal(whole[0][0], fmnist["train_x"][whole[0][1]]), "augmented"


def test_validation_hold_out_and_subsets_take_the_stream_s_first_images(hf_ids):
    b = streamed(hf_ids, val_split=40, test_subset=8)
    assert b.eval_split == "val" and (len(b.train), len(b.test)) == (IDS_TRAIN - 40, 8)
    assert ids(make_stream_loader(b.test, 8, False, 0, False)) == list(range(8))
    train_ids = ids(make_stream_loader(b.train, 8, True, 0, True, buffer=16))
    assert sorted(train_ids) == list(range(40, IDS_TRAIN)), "held-out images never reach training"


def test_accuracy_of_a_streamed_split(hf_fmnist):
    import timm

    b = streamed(hf_fmnist["parquet"])
    model = timm.create_model("zoo_vit_micro_p4", num_classes=10)
    res = accuracy(model, b.test, None, b.mean, b.std, batch_size=48)
    assert res["n"] == HF_TEST


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("imagefolder:{folder}", {}, "data.streaming"),
        ("hf:{folder}", {"classes": [0, 1]}, "data.classes"),
        ("hf:{folder}", {"cache": True}, "data.cache"),
        ("hf:{folder}/missing", {}, "data.name"),
        ("hf:{folder}", {"image_column": "label"}, "data.image_column"),
    ],
)
def test_streaming_errors_name_the_field(hf_fmnist, name, kwargs, field):
    with pytest.raises(DataError) as info:
        build_datasets(name.format(folder=hf_fmnist["parquet"]), img_size=28, in_chans=1, streaming=True, **kwargs)
    assert info.value.field == field, str(info.value)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"classes": [0, 1]}, "data.classes"),
        ({"cache": True}, "data.cache"),
        ({"name": "fashion-mnist"}, "data.streaming"),
    ],
)
def test_streaming_recipes_are_checked_when_loaded(hf_fmnist, data, field):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(stream_recipe(hf_fmnist["parquet"], **data))
    assert info.value.field_path == field


# ------------------------------------------------------------------------------------------------------ training
def stream_recipe(folder: Path, **data) -> dict:
    recipe = tiny_recipe(data={"name": f"hf:{folder}", "train_subset": None, "test_subset": None, "streaming": True,
                               "shuffle_buffer": 128, **data})  # fmt: skip
    recipe["schedule"] = {"steps": 12, "warmup": 0.1}  # 8 steps per epoch: the kill lands in epoch 0 or 1
    recipe["train"] = {"seed": 0, "log_every": 1, "eval_every": 100.0, "checkpoint_every": 2}
    return recipe


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"


def test_streamed_training_killed_mid_epoch_resumes_bitwise(hf_fmnist, tmp_path):
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(stream_recipe(hf_fmnist["parquet"], auto_augment="rand-m9-mstd0.5", mixup=0.8)))
    ref = start(path, tmp_path / "ref")
    code, log = finish(ref)
    assert code == 0, log
    assert "streamed (data.streaming: true)" in (tmp_path / "ref.0.stdout").read_text()
    proc = start(path, tmp_path / "killed")
    wait_for_step(proc, tmp_path / "killed", 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "killed" / "model").exists()
    code, log = finish(start(path, tmp_path / "killed", "--resume"))
    assert code == 0, log
    assert_same_weights(tmp_path / "ref", tmp_path / "killed")


def test_two_processes_train_a_stream_in_step(hf_fmnist, tmp_path):
    """``torchrun`` with 2 processes: the trainer's own rank check at the end compares the ranks' weights."""
    path = tmp_path / "stream.yaml"
    recipe = stream_recipe(hf_fmnist["saved"])
    recipe["schedule"]["steps"] = 6
    path.write_text(yaml.safe_dump(recipe))
    result = train_in_two_processes(path, tmp_path / "run")
    assert result["steps"] == 6 and 0 <= result["final_acc"] <= 1
