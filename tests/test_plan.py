"""zoo plan: candidates keep the effective batch, the chosen one fits the cap, and bad sizes are rejected."""

from __future__ import annotations

import pytest
import timm

from zoo.measure.memory_plan import micro_batches, parse_bytes, plan


def test_parse_bytes_and_micro_batches():
    assert parse_bytes("4GB") == 4 * 2**30 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="--memory"):
        parse_bytes("lots")
    assert micro_batches(128) == [128, 64, 32, 16, 8, 4, 2, 1]
    assert micro_batches(96) == [96, 48, 24, 12, 6, 3, 1]


def test_plan_respects_the_cap():
    model = timm.create_model("zoo_vit_micro_p4", embed_dim=64, depth=4, num_heads=2)
    # first measure the unconstrained peak, then ask for well under it: a smaller / checkpointed candidate must win
    best_free, _ = plan(model, 64, cap_bytes=2**40, precisions=("fp32",), rounds=1, progress=False)
    assert best_free is not None
    cap = int(best_free.peak_bytes * 0.5)
    best, cands = plan(model, 64, cap_bytes=cap, margin=1.0, precisions=("fp32",), rounds=1, progress=False)
    assert best is not None and best.peak_bytes <= cap
    assert best.micro_batch * best.accumulation == 64
    measured = [c for c in cands if c.peak_bytes is not None]
    assert any(c.peak_bytes > cap for c in measured), "the cap must have excluded something"
    none, _ = plan(model, 64, cap_bytes=1000, precisions=("fp32",), rounds=1, progress=False)
    assert none is None
