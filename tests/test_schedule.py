"""Pure schedule functions: LR, anneal, unfreeze, stage boundaries, budget solver."""

from __future__ import annotations

import pytest

from zoo.training.progress import (
    anneal_value,
    boundary_steps,
    fractions_to_boundaries,
    gradual_unfreeze_from,
    lr_factor,
    solve_stage_fractions,
)


def test_lr_warmup_cosine_and_rewarm():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0) and lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    base = lr_factor(60, 100, 10)
    assert lr_factor(60, 100, 10, rewarm_at=[60], rewarm_steps=4) == pytest.approx(base * 0.25)
    assert lr_factor(64, 100, 10, rewarm_at=[60], rewarm_steps=4) == pytest.approx(lr_factor(64, 100, 10))


def test_anneal_and_unfreeze_and_boundaries():
    assert anneal_value(0.0, 1.0, 0.25, 0.5) == 1.0 and anneal_value(0.25, 1.0, 0.25, 0.5) == pytest.approx(0.625)
    assert anneal_value(0.9, 1.0, 0.25, 0.5) == 0.25 and anneal_value(0.1, 1.0, 0.25, 0.0) == 0.25
    # 8 groups (stem, 6 blocks, head): head only at first, one more every 10%
    assert gradual_unfreeze_from(0.0, 8, 1, 0.1) == 7
    assert gradual_unfreeze_from(0.25, 8, 1, 0.1) == 5
    assert gradual_unfreeze_from(0.99, 8, 1, 0.1) == 0
    assert boundary_steps([0.25, 0.5], 10) == [3, 5]


def test_budget_solver_hits_the_budget_near_nominal():
    costs, total = [1.0, 2.0, 4.0], 100
    f = solve_stage_fractions([0.3, 0.3, 0.4], costs, total, budget=230.0)
    assert sum(f) == pytest.approx(1.0) and total * sum(a * c for a, c in zip(f, costs)) == pytest.approx(230.0)
    assert all(x >= 0.02 for x in f)
    nominal_cost = total * (0.3 * 1 + 0.3 * 2 + 0.4 * 4)
    f_same = solve_stage_fractions([0.3, 0.3, 0.4], costs, total, budget=nominal_cost)
    assert f_same == pytest.approx([0.3, 0.3, 0.4], abs=1e-4)
    assert fractions_to_boundaries([0.3, 0.3, 0.4]) == pytest.approx([0.3, 0.6])
    with pytest.raises(ValueError, match="outside"):
        solve_stage_fractions([0.5, 0.5], [1.0, 2.0], 100, budget=1000.0)
