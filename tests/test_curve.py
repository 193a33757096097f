"""Data-efficiency AUC (DESIGN.md §2): hand-computed curves and paper A's published values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunewise.efficiency.curve import (
    DEFAULT_GRID,
    curve_auc,
    normalise_curve,
    normalised_log_budget,
    parse_grid,
    plot_curve,
    read_curve,
)
from tunewise.errors import TunewiseError

FULL_GRID = (0, *DEFAULT_GRID)


def x(budget: int) -> float:
    """Normalised log budget on the default axis (N = 5000)."""
    return math.log2(max(budget, 1)) / math.log2(5000)


def constant_after(points: dict[int, float], budget: int, value: float) -> dict[int, float]:
    """``points`` plus ``value`` at every grid budget from ``budget`` on."""
    return {**points, **{n: value for n in DEFAULT_GRID if n >= budget}}


# -- hand-computed curves ------------------------------------------------------------------------


def test_step_curve_is_one_minus_the_first_triangle():
    points = constant_after({0: 0.0}, 50, 1.0)
    assert curve_auc(points) == pytest.approx(1 - x(50) / 2, abs=1e-15)


def test_missing_grid_budgets_take_the_best_score_so_far():
    assert curve_auc({0: 0.0, 50: 1.0}) == pytest.approx(1 - x(50) / 2, abs=1e-15)
    curve = normalise_curve({0: 0.2, 100: 0.6, 1000: 0.8}, ceiling=1.0)
    assert curve.budgets == FULL_GRID
    assert curve.envelope == (0.2, 0.2, 0.6, 0.6, 0.6, 0.8, 0.8, 0.8)


def test_extra_budgets_outside_the_range_are_ignored_and_inside_it_are_kept():
    points = {0: 0.0, 4: 0.9, 16: 0.9, 50: 0.5, 75: 1.0, 7000: 0.0, 10000: 0.0}
    expected = x(50) * 0.25 + (x(75) - x(50)) * 0.75 + (1 - x(75))
    assert curve_auc(points) == pytest.approx(expected, abs=1e-15)
    assert normalise_curve(points).budgets == (0, 50, 75, *DEFAULT_GRID[1:])


def test_missing_zero_shot_point_starts_the_curve_at_the_first_budget():
    # The floor is the lowest envelope value (here the 50-example score) and the area left of
    # x(50) is not counted, as in the released code.
    points = constant_after({50: 0.5, 100: 0.75}, 200, 1.0)
    expected = (x(100) - x(50)) * 0.25 + (x(200) - x(100)) * 0.75 + (1 - x(200))
    assert curve_auc(points) == pytest.approx(expected, abs=1e-15)


def test_missing_zero_shot_and_first_grid_budget_fill_it_with_zero():
    # Nothing is measured before 50, so the released code gives it 0: the floor drops to 0.
    points = constant_after({100: 0.5}, 200, 1.0)
    curve = normalise_curve(points)
    assert curve.floor == 0.0
    expected = (x(100) - x(50)) * 0.25 + (x(200) - x(100)) * 0.75 + (1 - x(200))
    assert curve.auc == pytest.approx(expected, abs=1e-15)


def test_ceiling_above_the_best_score_lowers_the_curve():
    expected = x(50) * 0.25 + (1 - x(50)) * 0.5
    assert curve_auc({0: 0.2, 50: 0.6}, ceiling=1.0) == pytest.approx(expected, abs=1e-15)


def test_ceiling_below_the_best_score_is_raised_to_it():
    points = {0: 0.2, 50: 0.6}
    assert curve_auc(points, ceiling=0.4) == curve_auc(points) == pytest.approx(1 - x(50) / 2, abs=1e-15)
    assert normalise_curve(points, ceiling=0.4).ceiling == 0.6


def test_non_monotone_curve_uses_its_running_maximum():
    dipping = constant_after({0: 0.0, 50: 1.0, 100: 0.2, 200: 0.5}, 500, 0.7)
    assert curve_auc(dipping) == pytest.approx(1 - x(50) / 2, abs=1e-15)


def test_dip_below_zero_shot_does_not_lower_the_floor():
    curve = normalise_curve({0: 0.5, 50: 0.3, 100: 1.0})
    assert curve.floor == 0.5
    assert curve.auc == pytest.approx((x(100) - x(50)) * 0.5 + (1 - x(100)), abs=1e-15)


def test_flat_curve_with_a_higher_ceiling_has_zero_auc():
    assert curve_auc({0: 0.4, 50: 0.4, 5000: 0.4}, ceiling=0.9) == 0.0


def test_flat_curve_without_a_ceiling_is_an_error():
    with pytest.raises(TunewiseError, match="--ceiling"):
        curve_auc({0: 0.4, 50: 0.4})


def test_custom_grid_and_max_budget():
    # x(10) = log2(10) / log2(100) = 1/2 exactly.
    assert curve_auc({0: 0.0, 10: 1.0}, max_budget=100, grid=(10, 100)) == pytest.approx(0.75, abs=1e-15)
    # Budgets above N are dropped, grid budgets above N are not filled in.
    curve = normalise_curve({0: 0.0, 50: 1.0, 5000: 0.0}, max_budget=1000)
    assert curve.budgets == (0, 50, 100, 200, 500, 1000)
    assert curve.x[-1] == 1.0


def test_normalised_log_budget_treats_zero_as_one():
    assert normalised_log_budget(0) == normalised_log_budget(1) == 0.0
    assert normalised_log_budget(5000) == 1.0


def test_invalid_settings_are_errors():
    with pytest.raises(TunewiseError, match="max_budget|maximum budget"):
        curve_auc({0: 0.1, 50: 0.2}, max_budget=10)
    with pytest.raises(TunewiseError, match="grid"):
        curve_auc({0: 0.1, 50: 0.2}, grid=())
    with pytest.raises(TunewiseError, match="no measured budget"):
        curve_auc({10: 0.1, 20: 0.2})
    with pytest.raises(TunewiseError, match="negative"):
        curve_auc({0: -0.1, 50: 0.2})


# -- several seeds: envelope per seed, then the mean (released code, auc.py:103-122) -------------


def test_several_seeds_take_each_envelope_then_the_mean_by_hand():
    # x(10) = 1/2 on the axis 0, 10, 100. Envelopes: seed a 0.2, 0.6, 0.6; seed b 0.2, 0.2, 0.8;
    # mean 0.2, 0.4, 0.7; floor 0.2, ceiling 0.8 (the best raw score of any seed);
    # y = 0, 1/3, 5/6; AUC = 1/2 · (0 + 1/3) / 2 + 1/2 · (1/3 + 5/6) / 2 = 1/12 + 7/24 = 3/8.
    seed_a = {0: 0.2, 10: 0.6, 100: 0.4}
    seed_b = {0: 0.2, 10: 0.2, 100: 0.8}
    curve = normalise_curve([seed_a, seed_b], max_budget=100, grid=(10, 100))
    assert curve.seed_envelopes == ((0.2, 0.6, 0.6), (0.2, 0.2, 0.8))
    assert curve.envelope == pytest.approx((0.2, 0.4, 0.7), abs=1e-15)
    assert (curve.floor, curve.ceiling, curve.seeds) == (0.2, 0.8, 2)
    assert curve.auc == pytest.approx(3 / 8, abs=1e-15)
    # Averaging the raw scores first (0.2, 0.4, 0.6) and enveloping after gives 1/3 with the same
    # ceiling: not the paper's.
    averaged_first = {0: 0.2, 10: 0.4, 100: 0.6}
    assert curve_auc(averaged_first, ceiling=0.8, max_budget=100, grid=(10, 100)) == pytest.approx(1 / 3, abs=1e-15)
    # With a human ceiling of 1.0: y = 0, 1/4, 5/8, AUC = 1/16 + 7/32 = 9/32.
    assert curve_auc([seed_a, seed_b], ceiling=1.0, max_budget=100, grid=(10, 100)) == pytest.approx(9 / 32, abs=1e-15)


def test_several_seeds_share_only_the_budgets_all_have():
    # Seed a also measured 50 (off the grid): its envelope carries 0.9 on to 100, but 50 itself is
    # dropped from the mean because seed b lacks it (the released code's inner join, auc.py:121).
    seed_a = {0: 0.2, 10: 0.6, 50: 0.9, 100: 0.4}
    seed_b = {0: 0.2, 10: 0.2, 100: 0.8}
    curve = normalise_curve([seed_a, seed_b], max_budget=100, grid=(10, 100))
    assert curve.budgets == (0, 10, 100)
    assert curve.envelope == pytest.approx((0.2, 0.4, 0.85), abs=1e-15)
    assert curve.ceiling == 0.9


def test_one_seed_in_a_list_is_the_same_curve():
    points = {0: 0.2, 50: 0.5, 500: 0.7}
    assert curve_auc([points], ceiling=0.9) == curve_auc(points, ceiling=0.9)


def test_a_seed_needs_two_kept_budgets_and_a_list_needs_curves():
    with pytest.raises(TunewiseError, match="seed 1: only one measured budget"):
        curve_auc([{0: 0.1, 50: 0.5}, {0: 0.1, 20: 0.3}])
    with pytest.raises(TunewiseError, match="list of them"):
        curve_auc([])


# -- the x axis ends at the largest budget kept (auc.py:133-135) ---------------------------------


def test_axis_ends_at_the_largest_budget_kept_when_n_is_off_the_grid():
    # N = 3000 is not on the default grid and not measured: the largest budget kept is 2500, so
    # x = log2(n) / log2(2500) and the curve ends at x = 1 (log2(3000) would end it at 0.977).
    def x_2500(n):
        return math.log2(n) / math.log2(2500)

    points = {0: 0.0, 50: 0.5, 2500: 1.0}
    curve = normalise_curve(points, max_budget=3000)
    assert curve.axis_end == 2500 and curve.max_budget == 3000
    assert curve.budgets == (0, 50, 100, 200, 500, 1000, 2500)
    assert curve.x[-1] == 1.0
    expected = x_2500(50) * 0.25 + (x_2500(1000) - x_2500(50)) * 0.5 + (1 - x_2500(1000)) * 0.75
    assert curve.auc == pytest.approx(expected, abs=1e-15)
    # Measured at N itself, the axis ends there.
    measured_at_n = normalise_curve({**points, 3000: 1.0}, max_budget=3000)
    assert measured_at_n.axis_end == 3000
    assert measured_at_n.x[-2] == pytest.approx(math.log2(2500) / math.log2(3000), abs=1e-15)


@given(
    st.dictionaries(st.sampled_from(FULL_GRID + (75, 3000)), st.floats(0, 1), min_size=2),
    st.floats(0, 100).filter(lambda scale: scale > 1e-3),
)
def test_auc_is_in_unit_interval_and_scale_free(points, scale):
    if max(points.values()) <= min(points.values()) + 1e-9:
        return
    if points[min(points)] >= 1.0:
        return  # the envelope is flat at the ceiling from the first budget on: AUC is undefined
    auc = curve_auc(points, ceiling=1.0)
    assert 0.0 <= auc <= 1.0
    scaled = curve_auc({n: s * scale for n, s in points.items()}, ceiling=scale)
    assert scaled == pytest.approx(auc, abs=1e-9)


# -- paper A's published values ------------------------------------------------------------------
#
# tests/data/paper_a_curves.json holds, for all 100 tasks of github.com/r-three/dataefficiency at
# commit 2430231, the score its `utils/calculate_per_task_auc.py` reads per budget (accuracy,
# exact match where accuracy is absent, F1 for generation tasks such as squad_v2), the task's human
# score from `results/human_eval.json` (None where it has none) and the published
# `extrapolation_auc` from `results/auc_res/{model}_auc_logscale_by_task_5000.json`
# (tests/data/make_paper_a_curves.py rebuilds it). Between them they cover few-shot budgets and
# budgets above 5000 (dropped), budgets off the grid (750, 4000, 4800), missing grid budgets, a
# missing zero-shot point (qwen/overruling), ceilings above and below the best score, no ceiling,
# and non-monotone curves.
PAPER_A = json.loads((Path(__file__).parent / "data" / "paper_a_curves.json").read_text(encoding="utf-8"))
PAPER_CURVES = [(c["model"], c["task"], {int(n): s for n, s in c["points"].items()}, c["human_score"],
                 c["published_auc"]) for c in PAPER_A["curves"]]


def test_the_fixture_holds_all_100_published_aucs():
    per_model = {}
    for model, task, *_ in PAPER_CURVES:
        per_model.setdefault(model, set()).add(task)
    assert {model: len(tasks) for model, tasks in per_model.items()} == {"llama": 40, "mistral": 30, "qwen": 30}


@pytest.mark.parametrize("model, task, points, ceiling, published", PAPER_CURVES,
                         ids=[f"{m}-{t}" for m, t, *_ in PAPER_CURVES])
def test_reproduces_paper_a_published_auc(model, task, points, ceiling, published):
    assert curve_auc(points, ceiling=ceiling) == pytest.approx(published, abs=1e-12)


# -- reading and drawing -------------------------------------------------------------------------


def write(tmp_path, text: str, name: str = "curve.json"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_curve_turns_keys_into_budgets(tmp_path):
    path = write(tmp_path, json.dumps({"0": 0.39, "50": 0.385, " 100 ": 1}))
    assert read_curve(path) == {0: 0.39, 50: 0.385, 100: 1.0}


@pytest.mark.parametrize(
    "text, message, key",
    [
        ('{"fifty": 0.4}', "not a whole number", "fifty"),
        ('{"50.5": 0.4}', "not a whole number", "50.5"),
        ('{"-50": 0.4}', "not a whole number", "-50"),
        ('{"50": "0.4"}', "finite number", "50"),
        ('{"50": true}', "finite number", "50"),
        ('{"50": NaN}', "finite number", "50"),
        ('{"50": -0.1}', "negative", "50"),
        ('{"50": 0.4, "050": 0.5}', "appears twice", "050"),
    ],
)
def test_read_curve_errors_name_file_and_key(tmp_path, text, message, key):
    path = write(tmp_path, text)
    with pytest.raises(TunewiseError, match=message) as raised:
        read_curve(path)
    assert raised.value.file == str(path)
    assert raised.value.field == key
    assert str(path) in str(raised.value) and f"'{key}'" in str(raised.value)


def test_read_curve_takes_a_list_of_seeds_and_names_the_bad_one(tmp_path):
    path = write(tmp_path, json.dumps([{"0": 0.39, "50": 0.4}, {"0": 0.39, "50": 0.45}]))
    assert read_curve(path) == [{0: 0.39, 50: 0.4}, {0: 0.39, 50: 0.45}]
    with pytest.raises(TunewiseError, match="negative") as raised:
        read_curve(write(tmp_path, json.dumps([{"0": 0.39}, {"50": -1}])))
    assert raised.value.field == "[1].50"
    with pytest.raises(TunewiseError, match="empty"):
        read_curve(write(tmp_path, "[]"))


def test_read_curve_file_level_errors(tmp_path):
    with pytest.raises(TunewiseError, match="no such curve file"):
        read_curve(tmp_path / "missing.json")
    with pytest.raises(TunewiseError, match="malformed JSON") as raised:
        read_curve(write(tmp_path, '{\n"0": 0.4,\n"50" 0.5}'))
    assert raised.value.line == 3
    for text in ("[0.4, 0.5]", "{}", "7"):
        with pytest.raises(TunewiseError, match="non-empty JSON object"):
            read_curve(write(tmp_path, text))


def test_parse_grid():
    assert parse_grid("50, 100,200") == (50, 100, 200)
    with pytest.raises(TunewiseError, match="comma-separated"):
        parse_grid("50,a")
    with pytest.raises(TunewiseError, match="positive"):
        parse_grid("0,50")


def test_plot_curve_writes_a_png(tmp_path):
    path = plot_curve({0: 0.39, 50: 0.385, 100: 0.5, 1000: 0.8}, tmp_path / "plots" / "curve.png", ceiling=0.9)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seeds = plot_curve([{0: 0.39, 50: 0.5, 1000: 0.8}, {0: 0.39, 50: 0.4, 1000: 0.7}], tmp_path / "seeds.png")
    assert seeds.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
