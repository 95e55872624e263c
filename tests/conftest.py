"""Shared fixtures. Tests that need Fashion-MNIST fail loudly (never skip) when it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zoo  # noqa: F401  (registers the models)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fmnist():
    """The real data; raises with install instructions if the Debian package is not installed."""
    from zoo.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist()


def tiny_recipe(**sections) -> dict:
    """A recipe mapping for fast tests: a 2-block, 32-wide model on a Fashion-MNIST subset."""
    base = {
        "model": {"name": "zoo_vit_micro_p4", "args": {"embed_dim": 32, "depth": 2, "num_heads": 2}},
        "data": {"name": "fashion-mnist", "train_subset": 512, "test_subset": 256, "batch_size": 64},
        "optim": {"lr": 0.003},
        "schedule": {"steps": 8, "warmup": 0.1},
        "train": {"seed": 0, "log_every": 2, "eval_every": 100.0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


# the Hugging Face dataset of the data tests: the first images of each Fashion-MNIST split
HF_TRAIN, HF_TEST = 512, 128


@pytest.fixture(scope="session")
def hf_fmnist(tmp_path_factory, fmnist) -> dict[str, Path]:
    """The first 512 / 128 Fashion-MNIST images as a Hugging Face dataset, in both local forms a user has: a
    ``save_to_disk`` folder and a folder of Parquet files (what a hub dataset repo holds)."""
    import datasets
    from PIL import Image

    from zoo.data.fashion_mnist import FASHION_MNIST_CLASSES

    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)})
    splits = {}
    for split, n in (("train", HF_TRAIN), ("test", HF_TEST)):
        x, y = fmnist[f"{split}_x"][:n], fmnist[f"{split}_y"][:n]
        rows = {"image": [Image.fromarray(img[0].numpy()) for img in x], "label": y.tolist()}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    dd = datasets.DatasetDict(splits)
    dd.save_to_disk(str(root / "saved"))
    (root / "parquet" / "data").mkdir(parents=True)
    for split, ds in dd.items():
        ds.to_parquet(str(root / "parquet" / "data" / f"{split}-00000-of-00001.parquet"))
    return {"saved": root / "saved", "parquet": root / "parquet"}
