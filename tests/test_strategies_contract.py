"""One contract every selection strategy passes, then the behaviour of each strategy."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest

from tunewise.errors import TunewiseError
from tunewise.data.table import SCALAR_INDICATORS
from tunewise.select import (
    DifficultyBucket,
    DifficultyWindow,
    TaskDiversity,
    WeightedIndicators,
    WindowCentre,
    available_strategies,
    fit_window_centre,
    get_strategy,
    rank_quantile,
    read_indicator_weights,
)
from tunewise.select.base import Param, ParamCheck, choice, real
from tunewise.select.difficulty import difficulty_tertiles

WEIGHTS = {"loss": 0.5, "ifd": 0.3, "confidence": 0.2}
# A predicted AUC for every task name the battery uses (efficiency needs one per task).
PREDICTED = {"arith": 0.3, "code": 0.5, "qa": 0.7, **{f"task{i}": 0.2 + 0.1 * i for i in range(7)}}

# Every registered strategy (efficiency included), and every `within` choice of the task
# strategies, given as objects and by name.
CASES = {
    "random": ("random", {}),
    "top_k": ("top_k", {}),
    "top_k-asc-ifd": ("top_k", {"indicator": "ifd", "direction": "asc"}),
    "uncertainty": ("uncertainty", {}),
    "task_diversity": ("task_diversity", {}),
    "task_diversity-window": ("task_diversity", {"within": DifficultyWindow()}),
    "task_diversity-window-by-name": ("task_diversity", {"within": "difficulty_window", "c0": 0.6}),
    "task_diversity-bucket": ("task_diversity", {"within": DifficultyBucket(bucket="hard", difficulty="loss")}),
    "task_diversity-weights": ("task_diversity", {"within": WeightedIndicators(weights=WEIGHTS)}),
    "weighted_task_diversity": ("weighted_task_diversity", {"gamma": 2.0}),
    "weighted_task_diversity-window": (
        "weighted_task_diversity",
        {"within": DifficultyWindow(difficulty="cot_length")},
    ),
    "efficiency": ("efficiency", {"predicted_auc": PREDICTED, "max_budget": 100}),
    "efficiency-set-diverse-weights": (
        "efficiency",
        {"predicted_auc": PREDICTED, "within": WeightedIndicators(weights=WEIGHTS, set_diversity=True)},
    ),
    "difficulty_window": ("difficulty_window", {}),
    "difficulty_window-cot": ("difficulty_window", {"difficulty": "cot_length", "c0": 0.6}),
    "difficulty_bucket": ("difficulty_bucket", {}),
    "difficulty_bucket-medium-loss": ("difficulty_bucket", {"bucket": "medium", "difficulty": "loss"}),
    "k_center": ("k_center", {}),
    "facility_location": ("facility_location", {"reference_size": 16}),
    "dpp": ("dpp", {}),
    "weighted_indicators": ("weighted_indicators", {"weights": WEIGHTS}),
    "weighted_indicators-set-diverse": ("weighted_indicators", {"weights": WEIGHTS, "set_diversity": True}),
}
UNIFORM_PARAMETER_ERROR = re.compile(r"^strategy '\w+': invalid parameter \w+=.*: expected .+")


def make_scores(rows: int = 40, tasks=("arith", "code", "qa"), seed: int = 0, tied: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": [f"ex{i:04d}" for i in range(rows)],
            "task": [tasks[i % len(tasks)] for i in range(rows)],
        }
    )
    for name in SCALAR_INDICATORS:
        frame[name] = np.full(rows, 0.5) if tied else rng.random(rows)
    frame["cot_length"] = np.full(rows, 3.0) if tied else rng.integers(1, 12, rows).astype(float)
    vectors = np.ones((rows, 6), dtype=np.float32) if tied else rng.standard_normal((rows, 6)).astype(np.float32)
    frame["embedding"] = list(vectors)
    return frame


def case_params(case: str) -> tuple[str, dict]:
    """The case's name and a fresh copy of its parameters (nested strategies are objects)."""
    name, params = CASES[case]
    return name, copy.deepcopy(params)


def build(case: str):
    name, params = case_params(case)
    return get_strategy(name, **params)


@pytest.fixture(params=list(CASES))
def case(request):
    return request.param


def assert_valid(selection, rows: int, expected: int) -> None:
    positions = selection.positions
    assert positions.dtype == np.int64
    assert len(positions) == expected == len(selection.reasons)
    assert len(set(positions.tolist())) == expected
    assert ((0 <= positions) & (positions < rows)).all()
    assert all(isinstance(reason, str) and reason for reason in selection.reasons)
    json.dumps(selection.details)


# --- the contract ---------------------------------------------------------------------------


def test_every_registered_strategy_is_in_the_contract():
    assert {name for name, _ in CASES.values()} == set(available_strategies())


def test_same_seed_gives_the_same_selection(case):
    scores = make_scores()
    first, second = build(case).select(scores, 13, seed=5), build(case).select(scores, 13, seed=5)
    assert first.positions.tolist() == second.positions.tolist()
    assert first.reasons == second.reasons
    assert (first.notes, first.details) == (second.notes, second.details)


def test_a_table_and_its_scores_frame_give_the_same_selection(case):
    from tunewise.data.pool import Example
    from tunewise.data.table import ExampleTable

    scores = make_scores()
    examples = tuple(Example(example_id, task, ({"role": "user", "content": example_id},), "answer")
                     for example_id, task in zip(scores["id"], scores["task"]))
    on_table = build(case).select(ExampleTable(examples, scores), 13, seed=5)
    on_frame = build(case).select(scores, 13, seed=5)
    assert on_table.positions.tolist() == on_frame.positions.tolist() and on_table.reasons == on_frame.reasons


@pytest.mark.parametrize("budget", [0, 1, 40, 45])
def test_budgets_from_zero_to_beyond_the_pool(case, budget):
    scores = make_scores(rows=40)
    selection = build(case).select(scores, budget, seed=1)
    assert_valid(selection, 40, min(budget, 40))
    if budget >= 40:
        assert sorted(selection.positions.tolist()) == list(range(40))
    if budget > 40:
        assert any("larger than the pool" in note for note in selection.notes)
    else:
        assert selection.notes == []


@pytest.mark.parametrize("budget", [0, 3])
def test_an_empty_pool_gives_an_empty_selection(case, budget):
    scores = make_scores(rows=0)
    assert_valid(build(case).select(scores, budget, seed=0), 0, 0)


@pytest.mark.parametrize("budget", [1, 3, 7])
def test_tasks_of_a_single_example(case, budget):
    scores = make_scores(rows=7, tasks=tuple(f"task{i}" for i in range(7)))
    assert_valid(build(case).select(scores, budget, seed=2), 7, budget)


@pytest.mark.parametrize("budget", [1, 10, 30])
def test_all_scores_tied(case, budget):
    scores = make_scores(rows=30, tied=True)
    first = build(case).select(scores, budget, seed=3)
    assert_valid(first, 30, budget)
    assert first.positions.tolist() == build(case).select(scores, budget, seed=3).positions.tolist()


def test_nan_in_a_column_it_needs_is_refused_naming_the_column(case):
    strategy = build(case)
    needed = strategy.required_columns()
    if not needed:
        scores = make_scores()
        for name in SCALAR_INDICATORS:
            scores[name] = np.nan
        assert_valid(strategy.select(scores, 5, seed=0), 40, 5)
        return
    for column in needed:
        scores = make_scores()
        if column == "embedding":
            scores.at[3, "embedding"] = np.full(6, np.nan, dtype=np.float32)
            scores.at[8, "embedding"] = np.array([0, np.nan, 0, 0, 0, 0], dtype=np.float32)
        else:
            scores.loc[[3, 8], column] = np.nan if column != "task" else None
        with pytest.raises(TunewiseError) as error:
            strategy.select(scores, 5, seed=0)
        assert f"column '{column}' is NaN in 2 of 40 rows" in str(error.value)


def test_a_missing_column_is_refused_with_a_suggestion(case):
    strategy = build(case)
    for column in strategy.required_columns():
        scores = make_scores().drop(columns=[column])
        with pytest.raises(TunewiseError, match=f"no '{column}' column"):
            strategy.select(scores, 5, seed=0)


def test_unknown_and_invalid_parameters_get_the_uniform_message(case):
    name, params = case_params(case)
    with pytest.raises(TunewiseError) as error:
        get_strategy(name, **params, no_such_parameter=1)
    assert UNIFORM_PARAMETER_ERROR.match(str(error.value))
    for parameter in type(build(case)).parameters:
        with pytest.raises(TunewiseError) as error:
            get_strategy(name, **{**params, parameter: object()})
        assert UNIFORM_PARAMETER_ERROR.match(str(error.value)), str(error.value)
        assert f"invalid parameter {parameter}=" in str(error.value)


def test_invalid_parameters_are_also_refused_by_select(case):
    strategy = build(case)
    for parameter in type(strategy).parameters:
        setattr(strategy, parameter, object())
        with pytest.raises(TunewiseError) as error:
            strategy.select(make_scores(), 3)
        assert UNIFORM_PARAMETER_ERROR.match(str(error.value))
        strategy = build(case)


@pytest.mark.parametrize("budget", [-1, 2.0, True, "3"])
def test_a_budget_that_is_not_a_whole_number_at_least_zero_is_refused(case, budget):
    with pytest.raises(TunewiseError, match="budget"):
        build(case).select(make_scores(), budget)


def test_a_negative_seed_is_refused(case):
    with pytest.raises(TunewiseError, match="seed"):
        build(case).select(make_scores(), 3, seed=-1)


# --- behaviour of individual strategies ----------------------------------------------------


def test_unknown_strategy_names_get_did_you_mean():
    with pytest.raises(TunewiseError, match="did you mean 'k_center'"):
        get_strategy("k_centre")


def test_get_params_round_trips_through_get_strategy(case):
    strategy = build(case)
    assert get_strategy(strategy.name, **strategy.get_params()).get_params() == strategy.get_params()
    # The JSON form that selection.meta.json records builds the same strategy back.
    document = json.loads(json.dumps(strategy.json_params()))
    assert get_strategy(strategy.name, **document) == strategy


def test_top_k_in_both_directions_keeps_ties_in_pool_order():
    scores = make_scores(rows=6)
    scores["loss"] = [0.2, 0.9, 0.5, 0.9, 0.1, 0.5]
    assert get_strategy("top_k").select(scores, 4).positions.tolist() == [1, 3, 2, 5]
    ascending = get_strategy("top_k", indicator="loss", direction="asc")
    assert ascending.select(scores, 3).positions.tolist() == [4, 0, 2]


def test_uncertainty_takes_the_lowest_confidence_first():
    scores = make_scores(rows=5)
    scores["confidence"] = [0.9, 0.1, 0.5, 0.3, 0.7]
    assert get_strategy("uncertainty").select(scores, 3).positions.tolist() == [1, 3, 2]


def test_random_differs_between_seeds():
    scores = make_scores(rows=40)
    orders = {tuple(get_strategy("random").select(scores, 40, seed=seed).positions) for seed in range(5)}
    assert len(orders) == 5


def test_window_centre_moves_harder_with_the_budget():
    centre = WindowCentre(beta=0.15)
    assert centre.at([10, 100, 1000, 10**9]).tolist() == pytest.approx([0.2, 0.35, 0.5, 1.0])
    assert WindowCentre(c0=0.1, beta=0.3).at(1).item() == 0.0


def test_the_window_centre_does_not_drift_unless_calibrated_and_difficulty_is_response_length():
    # Paper C gives no drift formula and our own fits disagree in sign: β = 0 by default.
    assert WindowCentre().at([1, 10, 100, 10**6]).tolist() == [0.35] * 4
    window = DifficultyWindow()
    assert (window.difficulty, window.beta) == ("length", 0.0)
    assert window.required_columns() == ("length",) == DifficultyBucket().required_columns()


def test_difficulty_window_takes_the_rows_nearest_the_centre():
    scores = make_scores(rows=101, tasks=("only",))
    scores["loss"] = np.arange(101.0)[::-1]  # quantile of row i is (100 - i) / 100
    drifting = {"difficulty": "loss", "beta": 0.15}
    one = get_strategy("difficulty_window", **drifting).select(scores, 1)
    assert one.positions.tolist() == [95]  # c(1) = 0.35 - 2 × 0.15 = 0.05
    hundred = get_strategy("difficulty_window", **drifting).select(scores, 100)
    assert hundred.positions[0] == 65  # c(100) = 0.35
    assert 0 not in hundred.positions  # quantile 1.0 is the farthest from 0.35
    # Rows 0.05 either side of the centre tie; the easier one comes first.
    assert hundred.positions[9:11].tolist() == [70, 60]


def test_difficulty_window_quantiles_are_within_each_task():
    scores = make_scores(rows=4, tasks=("easy", "hard"))
    scores["loss"] = [0.1, 5.0, 0.2, 6.0]  # each task has one easier and one harder row
    picked = get_strategy("difficulty_window", difficulty="loss", c0=1.0).select(scores, 2)
    assert sorted(picked.positions.tolist()) == [2, 3]


def test_fit_window_centre_recovers_c0_and_beta():
    truth = WindowCentre(c0=0.3, beta=0.2, n0=100)
    budgets = [50, 50, 200, 200, 800, 800]
    fitted = fit_window_centre(budgets, truth.at(budgets), n0=100)
    assert (fitted.c0, fitted.beta) == pytest.approx((0.3, 0.2))
    with pytest.raises(TunewiseError, match="two or more different budgets"):
        fit_window_centre([100, 100], [0.3, 0.4])


def test_weighted_task_diversity_gives_unsure_tasks_more():
    scores = make_scores(rows=300, tasks=("sure", "unsure"))
    scores["confidence"] = np.where(scores["task"] == "sure", 0.9, 0.3)
    selection = get_strategy("weighted_task_diversity").select(scores, 40)
    assert selection.details["allocation"] == {"sure": 10, "unsure": 30}
    assert get_strategy("task_diversity").select(scores, 40).details["allocation"] == {"sure": 20, "unsure": 20}


def test_task_diversity_prefixes_keep_the_proportions_and_caps_small_tasks():
    scores = make_scores(rows=70, tasks=("a",) * 5 + ("b",) * 2)
    scores.loc[:4, "task"] = "tiny"  # tiny: 5 rows, a: 45, b: 20
    selection = get_strategy("task_diversity").select(scores, 42, seed=0)
    tasks = scores["task"].to_numpy()[selection.positions]
    allocation = selection.details["allocation"]
    assert allocation["tiny"] == 5 and sum(allocation.values()) == 42
    for prefix in range(1, 43):
        for task, share in allocation.items():
            assert abs((tasks[:prefix] == task).sum() - prefix * share / 42) < 1


def test_weighted_indicators_combines_oriented_quantiles():
    scores = make_scores(rows=3)
    scores["loss"] = [1.0, 2.0, 3.0]
    scores["confidence"] = [0.1, 0.5, 0.9]
    both = get_strategy("weighted_indicators", weights={"loss": 0.5, "confidence": 0.5})
    # loss prefers row 2, low confidence prefers row 0: a tie of 0.5 each, kept in pool order.
    assert both.select(scores, 3).positions.tolist() == [0, 1, 2]
    loss_led = get_strategy("weighted_indicators", weights={"loss": 0.8, "confidence": 0.2})
    assert loss_led.select(scores, 1).positions.tolist() == [2]
    flipped = get_strategy("weighted_indicators", weights={"loss": 1.0}, orientation={"loss": "lower"})
    assert flipped.select(scores, 1).positions.tolist() == [0]


def test_weighted_indicators_ignores_zero_weights_even_on_missing_columns():
    scores = make_scores(rows=5).drop(columns=["ifd"])
    strategy = get_strategy("weighted_indicators", weights={"loss": 1.0, "ifd": 0.0})
    assert len(strategy.select(scores, 2)) == 2


@pytest.mark.parametrize(
    ("weights", "detail"),
    [
        ({"loss": 0.5, "ifd": 0.4}, "sum to 0.9"),
        ({"loss": 1.2, "ifd": -0.2}, "'ifd' is negative"),
        ({}, "at least one indicator"),
        ({"loss": "1"}, "not a number"),
    ],
)
def test_weights_must_be_non_negative_and_sum_to_one(weights, detail):
    with pytest.raises(TunewiseError) as error:
        get_strategy("weighted_indicators", weights=weights)
    assert UNIFORM_PARAMETER_ERROR.match(str(error.value)) and detail in str(error.value)


def test_weights_within_the_tolerance_are_accepted():
    get_strategy("weighted_indicators", weights={"loss": 0.5, "ifd": 0.5 + 5e-7})


def test_orientation_for_an_unweighted_indicator_is_refused():
    with pytest.raises(TunewiseError, match="'ifd' has no weight"):
        get_strategy("weighted_indicators", weights={"loss": 1.0}, orientation={"ifd": "lower"})


def test_read_indicator_weights(tmp_path):
    good = tmp_path / "weights.json"
    good.write_text(json.dumps({"weights": {"loss": 0.25, "ifd": 0.75}, "trials": [1, 2]}))
    assert read_indicator_weights(good) == {"weights": {"loss": 0.25, "ifd": 0.75}, "orientation": None}
    bad = tmp_path / "bad.json"
    for content, message in [
        ('{"weights": {"loss": 0.3}}', "sum to 0.3"),
        ('{"loss": 1.0}', "no 'weights' object"),
        ("{not json", "not a readable JSON"),
        ('{"weights": {"loss": 1.0}, "orientation": {"loss": "up"}}', "not 'higher' or 'lower'"),
    ]:
        bad.write_text(content)
        with pytest.raises(TunewiseError, match=message) as error:
            read_indicator_weights(bad)
        assert error.value.file == str(bad)
    with pytest.raises(TunewiseError, match="no such weights file"):
        read_indicator_weights(tmp_path / "absent.json")


def clustered_scores(centres, per_cluster: int = 10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vectors = np.concatenate([np.asarray(c) + 0.01 * rng.standard_normal((per_cluster, len(c))) for c in centres])
    scores = make_scores(rows=len(vectors))
    scores["embedding"] = list(vectors.astype(np.float32))
    return scores


def test_k_center_spreads_its_picks_over_the_clusters():
    scores = clustered_scores([[10, 0, 0], [0, 10, 0], [0, 0, 10], [-10, 0, 0]])
    for seed in range(3):
        picked = get_strategy("k_center").select(scores, 4, seed=seed).positions
        assert sorted(picked // 10) == [0, 1, 2, 3]


def test_k_center_takes_the_farthest_row_next():
    scores = make_scores(rows=4)
    scores["embedding"] = list(np.array([[0.0], [1.0], [5.0], [2.0]], dtype=np.float32))
    picked = get_strategy("k_center").select(scores, 4, seed=0).positions.tolist()
    expected_after = {0: [2, 1, 3], 1: [2, 0, 3], 2: [0, 1, 3], 3: [2, 0, 1]}
    assert picked[1:] == expected_after[picked[0]]


def test_facility_location_covers_each_cluster_before_repeating_one():
    scores = clustered_scores([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    picked = get_strategy("facility_location").select(scores, 3, seed=0).positions
    assert sorted(picked // 10) == [0, 1, 2]


def test_rank_quantile_handles_ties_and_single_rows():
    quantile = rank_quantile([3.0, 1.0, 2.0, 2.0, 7.0], np.array([0, 0, 0, 0, 1]))
    assert quantile.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5, 0.5])


# --- composition, parameter checks ----------------------------------------------------------


def test_param_check_says_plainly_whether_a_value_is_valid():
    number = Param("a number in [0, 1]", real(0.0, 1.0))
    assert number.check(0.5) == ParamCheck(True, "") and number.check(0.5).valid
    assert number.check(1.5) == ParamCheck(False, "")
    direction = choice("'asc' or 'desc'", ("asc", "desc"))
    assert direction.check("dsc") == ParamCheck(False, "did you mean 'desc'?")


def test_a_task_strategy_nests_its_within_strategy_as_an_object():
    nested = TaskDiversity(within=DifficultyWindow(c0=0.4))
    params = nested.get_params(deep=True)
    assert params["within__c0"] == 0.4 and params["within__difficulty"] == "length"
    assert set(nested.get_params(deep=False)) == {"within"}
    # By name with flat parameters (the CLI's flags, sweep specs) or as within__c0: the same strategy.
    assert get_strategy("task_diversity", within="difficulty_window", c0=0.4) == nested
    assert get_strategy("task_diversity", within="difficulty_window", within__c0=0.4) == nested
    assert nested.json_params() == {"within": {"strategy": "difficulty_window", "difficulty": "length", "c0": 0.4,
                                               "beta": 0.0, "n0": 100.0}}
    assert TaskDiversity().json_params() == {"within": {"strategy": "random"}}
    assert nested.set_params(within__c0=0.7) is nested and nested.within.c0 == 0.7
    inner = DifficultyWindow(c0=0.2)
    get_strategy("task_diversity", within=inner, within__c0=0.9)
    assert inner.c0 == 0.2  # building never changes an object the caller passed in


def test_nested_parameter_errors_name_the_strategy_they_belong_to():
    with pytest.raises(TunewiseError, match=r"strategy 'difficulty_window': invalid parameter c0=2"):
        get_strategy("task_diversity", within="difficulty_window", c0=2)
    with pytest.raises(TunewiseError, match=r"invalid parameter within='difficulty_windw'.*did you mean"):
        get_strategy("task_diversity", within="difficulty_windw")
    with pytest.raises(TunewiseError, match=r"strategy 'task_diversity': invalid parameter gamma=2"):
        get_strategy("task_diversity", gamma=2)
    with pytest.raises(TunewiseError, match=r"invalid parameter within=.*DifficultyWindow"):
        TaskDiversity(within="difficulty_window").select(make_scores(), 3)


def test_efficiency_is_a_task_strategy_with_its_own_budget_split():
    scores = make_scores(rows=90, tasks=("slow", "fast"))
    strategy = get_strategy("efficiency", predicted_auc={"slow": 0.2, "fast": 0.8}, max_budget=100)
    selection = strategy.select(scores, 20, seed=0)
    allocation = selection.details["allocation"]
    assert sum(allocation.values()) == 20 and allocation["fast"] > allocation["slow"]
    tasks = scores["task"].to_numpy()[selection.positions]
    for prefix in range(1, 21):  # the one round-robin interleave keeps every prefix in proportion
        assert abs((tasks[:prefix] == "fast").sum() - prefix * allocation["fast"] / 20) < 1
    with pytest.raises(TunewiseError, match="no predicted AUC for task"):
        get_strategy("efficiency", predicted_auc={"slow": 0.2}).select(scores, 5)


# --- difficulty (paper C) --------------------------------------------------------------------


def discrete_difficulty_scores(rows: int = 60) -> pd.DataFrame:
    scores = make_scores(rows=rows, tasks=("gsm8k",))
    scores["cot_length"] = np.repeat([2.0, 3.0, 4.0, 5.0], rows // 4)  # GSM8K-like: a few step counts
    return scores


def test_seeds_break_ties_inside_a_tie_block_of_equal_difficulty():
    scores = discrete_difficulty_scores()
    window = get_strategy("difficulty_window", difficulty="cot_length", c0=0.5)
    picks = {seed: tuple(sorted(window.select(scores, 8, seed=seed).positions.tolist())) for seed in range(6)}
    assert picks[0] == tuple(sorted(window.select(scores, 8, seed=0).positions.tolist()))
    assert len(set(picks.values())) > 1  # the pool order no longer decides inside the tie block
    for chosen in picks.values():  # yet every pick stays in the block nearest the centre (3 steps)
        assert set(scores["cot_length"].to_numpy()[list(chosen)]) == {3.0}


def test_difficulty_tertiles_cut_each_task_into_thirds():
    groups = np.array([0] * 7 + [1] * 3)
    values = np.array([5, 1, 3, 2, 7, 6, 4, 9, 8, 7], dtype=float)
    # Group 0 sorted: 1 2 3 | 4 5 | 6 7 (sizes 3, 2, 2); group 1: 7 | 8 | 9.
    assert difficulty_tertiles(values, groups).tolist() == [1, 0, 0, 0, 2, 2, 1, 2, 1, 0]


def test_difficulty_bucket_samples_its_third_at_random_then_the_nearest_third():
    scores = make_scores(rows=30, tasks=("only",))
    scores["length"] = np.arange(30.0)  # easy: rows 0–9, medium 10–19, hard 20–29
    easy = get_strategy("difficulty_bucket")
    draws = {tuple(easy.select(scores, 5, seed=seed).positions.tolist()) for seed in range(5)}
    assert len(draws) > 1 and all(max(draw) < 10 for draw in draws)
    hard = get_strategy("difficulty_bucket", bucket="hard").select(scores, 4, seed=0)
    assert min(hard.positions) >= 20
    overflow = get_strategy("difficulty_bucket", bucket="medium").select(scores, 15, seed=1)
    assert set(range(10, 20)) <= set(overflow.positions.tolist())
    assert all(row < 10 for row in overflow.positions[10:])  # medium runs out: the easier third first
    assert "ran out" in overflow.reasons[-1] and "ran out" not in overflow.reasons[0]


def test_difficulty_bucket_within_tasks_uses_each_tasks_own_thirds():
    scores = make_scores(rows=60, tasks=("short", "long"))
    scores["length"] = np.where(scores["task"] == "short", 1.0, 100.0) * (1 + np.arange(60) // 2)
    selection = get_strategy("task_diversity", within="difficulty_bucket", bucket="hard").select(scores, 10)
    for task in ("short", "long"):
        rows = scores.index[scores["task"] == task].to_numpy()
        hardest_third = set(rows[np.argsort(scores.loc[rows, "length"].to_numpy())][20:].tolist())
        assert {row for row in selection.positions.tolist() if row in set(rows)} <= hardest_third


# --- diversity baselines and set-level diversity ----------------------------------------------


def test_dpp_matches_brute_force_greedy_log_determinant():
    rng = np.random.default_rng(0)
    scores = make_scores(rows=25)
    vectors = rng.standard_normal((25, 6)).astype(np.float32)
    scores["embedding"] = list(vectors)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    kernel = unit.astype(np.float64) @ unit.T.astype(np.float64)
    chosen: list[int] = []
    for _ in range(5):
        gains = [np.linalg.slogdet(kernel[np.ix_(chosen + [j], chosen + [j])])[1] if j not in chosen else -np.inf
                 for j in range(25)]
        chosen.append(int(np.argmax(gains)))
    assert get_strategy("dpp").select(scores, 5, seed=0).positions.tolist()[1:] == chosen[1:]


def test_dpp_spreads_over_clusters_then_says_when_the_kernel_is_spent():
    scores = clustered_scores([[10, 0, 0], [0, 10, 0], [0, 0, 10]])
    selection = get_strategy("dpp").select(scores, 5, seed=2)
    assert sorted(selection.positions[:3] // 10) == [0, 1, 2]
    assert "random order" in selection.reasons[-1]  # three dimensions: a fourth pick adds nothing


def test_set_diversity_covers_the_preferred_region_instead_of_crowding_one_cluster():
    scores = clustered_scores([[1, 0, 0], [0, 1, 0]], per_cluster=10)
    # Cluster 0 (rows 0–9) has the highest loss, but the best eight also hold rows of cluster 1.
    scores["loss"] = np.concatenate([np.linspace(1.0, 0.6, 10), np.linspace(0.75, 0.1, 10)])
    plain = get_strategy("weighted_indicators", weights={"loss": 1.0}).select(scores, 4)
    assert set(plain.positions // 10) == {0}
    diverse = get_strategy("weighted_indicators", weights={"loss": 1.0}, set_diversity=True).select(scores, 4)
    assert set(diverse.positions // 10) == {0, 1}
    best_eight = set(np.argsort(-scores["loss"].to_numpy(), kind="stable")[:8].tolist())
    assert set(diverse.positions.tolist()) <= best_eight
    assert "picked for coverage" in diverse.reasons[0]


def test_window_centre_fit_returns_self_with_the_least_squares_line():
    from tunewise.select import WindowCentreFit

    fitted = WindowCentreFit(n0=100).fit([100, 1000, 10000], [0.2, 0.3, 0.4])
    assert (fitted.c0_, fitted.beta_) == pytest.approx((0.2, 0.1))
    assert fitted.predict(1000) == pytest.approx(0.3)
    with pytest.raises(TunewiseError, match="not fitted"):
        WindowCentreFit().predict(100)
