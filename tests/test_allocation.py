"""Budget allocation across tasks and the round-robin order (DESIGN.md §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewise.select.allocation import (
    allocate_budget,
    interleave,
    inverse_confidence_weights,
    round_robin_order,
    water_filled_shares,
    weight_spread,
)
from tunewise.errors import TunewiseError

pool_sizes = st.lists(st.integers(0, 60), min_size=1, max_size=8)
budgets = st.integers(0, 400)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def sizes_and_weights(draw):
    sizes = draw(pool_sizes)
    weights = draw(st.lists(st.floats(0.01, 10.0), min_size=len(sizes), max_size=len(sizes)))
    return sizes, weights


def allocate(sizes, weights, budget, seed=0):
    names = [f"task{i}" for i in range(len(sizes))]
    weight_map = None if weights is None else dict(zip(names, weights))
    return list(allocate_budget(dict(zip(names, sizes)), weight_map, budget, seed).values())


@given(sizes_and_weights(), budgets, seeds)
def test_budgets_sum_to_the_budget_or_the_whole_pool(case, budget, seed):
    sizes, weights = case
    assert sum(allocate(sizes, weights, budget, seed)) == min(budget, sum(sizes))


@given(sizes_and_weights(), budgets, seeds)
def test_no_task_gets_more_than_its_pool_or_less_than_zero(case, budget, seed):
    sizes, weights = case
    for allocated, size in zip(allocate(sizes, weights, budget, seed), sizes):
        assert 0 <= allocated <= size


@given(sizes_and_weights(), st.integers(0, 100), seeds)
def test_a_budget_at_least_the_pool_returns_every_pool(case, extra, seed):
    sizes, weights = case
    assert allocate(sizes, weights, sum(sizes) + extra, seed) == sizes


@given(sizes_and_weights(), budgets, seeds)
def test_each_budget_is_within_one_of_its_water_filled_share(case, budget, seed):
    sizes, weights = case
    shares = water_filled_shares(sizes, weights, budget)
    assert shares.sum() == pytest.approx(min(budget, sum(sizes)))
    for allocated, share in zip(allocate(sizes, weights, budget, seed), shares):
        assert abs(allocated - share) < 1


@given(pool_sizes, budgets, seeds)
def test_with_equal_weights_no_task_loses_when_the_budget_grows(sizes, budget, seed):
    smaller = allocate(sizes, None, budget, seed)
    larger = allocate(sizes, None, budget + 1, seed)
    assert all(after >= before for before, after in zip(smaller, larger))


@given(sizes_and_weights(), budgets, seeds)
def test_with_any_weights_shares_grow_and_a_budget_drops_by_at_most_one(case, budget, seed):
    sizes, weights = case
    before = water_filled_shares(sizes, weights, budget)
    after = water_filled_shares(sizes, weights, budget + 1)
    assert (after >= before - 1e-9).all()
    smaller = allocate(sizes, weights, budget, seed)
    larger = allocate(sizes, weights, budget + 1, seed)
    assert all(after >= before - 1 for before, after in zip(smaller, larger))


def test_largest_remainder_shows_the_alabama_paradox_with_unequal_weights():
    # Weights 3:3:1 over large pools: at budget 10 the small task's remainder wins the last unit,
    # at 11 the two large tasks' remainders overtake it. This is inherent to largest remainder.
    sizes, weights = [100, 100, 100], [3, 3, 1]
    assert allocate(sizes, weights, 10) == [4, 4, 2]
    assert allocate(sizes, weights, 11) == [5, 5, 1]


def test_surplus_of_a_capped_task_is_shared_among_the_others():
    assert allocate([2, 100, 100], None, 30) == [2, 14, 14]
    assert allocate([0, 5, 100], [1, 1, 2], 45) == [0, 5, 40]


def test_remainder_ties_go_to_the_larger_weight_then_to_the_seed():
    assert allocate([10, 10], [3, 1], 2) == [2, 0]
    assert allocate([10, 10], [1, 3], 2) == [0, 2]
    winners = {tuple(allocate([5, 5, 5], None, 1, seed)) for seed in range(40)}
    assert winners == {(1, 0, 0), (0, 1, 0), (0, 0, 1)}
    assert allocate([5, 5, 5], None, 1, seed=7) == allocate([5, 5, 5], None, 1, seed=7)


@pytest.mark.parametrize(
    ("sizes", "weights", "budget", "message"),
    [
        ([3, 4], None, -1, "budget"),
        ([3, 4], None, 2.5, "budget"),
        ([3, -1], None, 2, "pool sizes"),
        ([3, 4], [1.0, 0.0], 2, "weights"),
        ([3, 4], [1.0, float("nan")], 2, "weights"),
    ],
)
def test_invalid_inputs_are_refused(sizes, weights, budget, message):
    with pytest.raises(TunewiseError, match=message):
        allocate(sizes, weights, budget)


def test_every_task_needs_a_weight():
    with pytest.raises(TunewiseError, match="no weight for task"):
        allocate_budget({"a": 3, "b": 4}, {"a": 1.0}, 2)


@settings(max_examples=60)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=10))
def test_every_prefix_of_the_round_robin_keeps_the_proportions(task_budgets):
    order = round_robin_order(task_budgets)
    budgets = np.array(task_budgets)
    total = int(budgets.sum())
    assert np.bincount(order, minlength=len(budgets)).tolist() == task_budgets
    counts = np.cumsum(np.eye(len(budgets), dtype=np.int64)[order], axis=0)
    prefix_lengths = np.arange(1, total + 1)[:, None]
    # |c_t(m) − m·b_t/B| < 1, in integers: |B·c_t(m) − m·b_t| < B.
    assert (np.abs(total * counts - prefix_lengths * budgets) < total).all()


def test_round_robin_of_equal_budgets_cycles_through_the_tasks():
    assert round_robin_order([2, 2, 2]).tolist() == [0, 1, 2, 0, 1, 2]
    assert round_robin_order([]).tolist() == []
    assert round_robin_order([0, 3]).tolist() == [1, 1, 1]


def test_inverse_confidence_weights_favour_the_less_confident_task():
    weights = inverse_confidence_weights({"sure": 0.8, "unsure": 0.2, "zero": 0.0}, gamma=1.0, epsilon=0.1)
    assert weights["unsure"] == pytest.approx(4 * weights["sure"])
    assert weights["zero"] == pytest.approx(8 * weights["sure"])
    assert sum(weights.values()) == pytest.approx(1.0)
    flat = inverse_confidence_weights({"a": 0.8, "b": 0.2}, gamma=0.0)
    assert flat["a"] == pytest.approx(flat["b"])


def test_weight_spread_says_how_far_task_weights_are_from_equal():
    equal = weight_spread({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25})
    assert equal == pytest.approx({"min": 0.25, "max": 0.25, "ratio": 1.0, "entropy_share": 1.0})
    skewed = weight_spread({"a": 0.8, "b": 0.2})
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    assert skewed == pytest.approx({"min": 0.2, "max": 0.8, "ratio": 4.0, "entropy_share": entropy})
    assert weight_spread({}) is None and weight_spread({"only": 1.0})["entropy_share"] == 1.0


def test_interleave_takes_each_groups_best_rows_in_round_robin_order():
    ranked = np.array([4, 0, 2, 9, 7, 8, 5])  # group 0: rows 4, 0, 2; group 1: rows 9, 7, 8, 5
    picked, sequence = interleave(ranked, [3, 4], [1, 3])
    assert sequence.tolist() == round_robin_order([1, 3]).tolist()
    assert sorted(picked.tolist()) == [4, 7, 8, 9]
    assert [row for row, group in zip(picked, sequence) if group == 1] == [9, 7, 8]
