"""Shared fixtures. Tests that need Fashion-MNIST fail loudly (never skip) when it is missing."""

from __future__ import annotations

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
