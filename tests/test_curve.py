"""Data-efficiency AUC (DESIGN.md §2): hand-computed curves and paper A's published values."""

from __future__ import annotations

import json
import math

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
# Curves and AUCs from github.com/r-three/dataefficiency at commit 243023172cc2: the score its
# `utils/calculate_per_task_auc.py` reads from `results/finetune_results/{model}_{task}_full_result_v2.json`
# (accuracy, exact-match where accuracy is absent, F1 for generation tasks such as squad_v2), the
# human score from `results/human_eval.json` (None where it has none) and `extrapolation_auc`
# from `results/auc_res/{model}_auc_logscale_by_task_5000.json`. All 100 published values match
# to 1e-15; these twelve cover extra budgets (few-shot points, 750, 4000, 4800, 8000, 8480,
# 10000), missing grid budgets, a missing zero-shot point (qwen/overruling), ceilings above and
# below the best score, no ceiling, and non-monotone curves.
PAPER_CURVES = [
    ("llama", "anli", {0: 0.393, 4: 0.37, 8: 0.362, 16: 0.375, 32: 0.359, 50: 0.385, 100: 0.412, 200: 0.417, 500: 0.574, 1000: 0.704, 2500: 0.738, 5000: 0.726, 10000: 0.746}, 0.92, 0.18393439255532396),
    ("llama", "banking77", {0: 0.32954545454545453, 4: 0.5275974025974026, 8: 0.3691558441558442, 16: 0.41753246753246753, 32: 0.3594155844155844, 50: 0.5386363636363637, 100: 0.5100649350649351, 200: 0.4474025974025974, 500: 0.8074675324675324, 1000: 0.8178571428571428, 2500: 0.8860389610389611, 5000: 0.9327922077922078, 8000: 0.9334415584415584}, 0.607, 0.43384392484233925),
    ("llama", "disaster_response_messages", {0: 0.6348421453023964, 50: 0.7965005705591479, 100: 0.8098136173449981, 200: 0.8444275389882084, 500: 0.9121338912133892, 1000: 0.9128946367440092, 2500: 0.9132750095093192, 5000: 0.9128946367440092}, None, 0.6028439874851189),
    ("llama", "boolq", {0: 0.855779427359491, 4: 0.8610816542948038, 8: 0.8610816542948038, 16: 0.8632025450689289, 32: 0.8621420996818664, 50: 0.8525980911983033, 100: 0.855779427359491, 200: 0.8674443266171792, 500: 0.8685047720042418, 1000: 0.8663838812301167, 2500: 0.8759278897136797, 5000: 0.8992576882290562, 8480: 0.9077412513255567}, 0.89, 0.16513037873910325),
    ("llama", "squad_v2", {0: 0.05715909569894013, 50: 0.3910805320331396, 100: 0.3855479643382903, 200: 0.3854634527854212, 500: 0.379766385903592, 1000: 0.42725634910625443, 2500: 0.44172661476426645, 5000: 0.4499070220119246}, None, 0.6819429479322267),
    ("llama", "temporal_sequences", {0: 0.25, 4: 0.01, 8: 0.0, 16: 1.0, 32: 1.0, 50: 1.0, 100: 1.0, 200: 0.99, 500: 1.0, 750: 0.92}, 1.0, 0.770345528303224),
    ("llama", "toxicchat0124", {0: 0.8764, 4: 0.9008, 8: 0.9374, 16: 0.947, 32: 0.909, 50: 0.943, 100: 0.9454, 200: 0.944, 500: 0.9666, 1000: 0.9714, 4000: 0.9654}, 1.0, 0.4893126266105856),
    ("mistral", "temporal_sequences", {0: 0.0, 50: 0.99, 100: 0.99, 200: 0.98}, 1.0, 0.7626420730201917),
    ("mistral", "wic", {0: 0.6500920810313076, 50: 0.6040515653775322, 100: 0.7200736648250461, 200: 0.7053406998158379, 500: 0.7053406998158379, 1000: 0.7495395948434622, 2500: 0.7955801104972375, 4800: 0.7955801104972375}, 0.8, 0.3200711382179202),
    ("qwen", "overruling", {50: 0.9291666666666667, 100: 0.9416666666666667, 200: 0.9416666666666667, 500: 0.9541666666666667, 1000: 0.9666666666666667}, 0.937, 0.3512635503129052),
    ("qwen", "medmcqa", {0: 0.6886, 50: 0.6968, 100: 0.6984, 200: 0.6992, 500: 0.7014, 1000: 0.6964, 2500: 0.7206, 5000: 0.7222}, 0.9, 0.051207426670433605),
    ("qwen", "boolean_expressions", {0: 0.709, 50: 0.837, 100: 0.854, 200: 0.869, 500: 0.901, 1000: 0.971, 2500: 0.988, 5000: 0.994}, 1.0, 0.48925687288437014),
]


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


def test_read_curve_file_level_errors(tmp_path):
    with pytest.raises(TunewiseError, match="no such curve file"):
        read_curve(tmp_path / "missing.json")
    with pytest.raises(TunewiseError, match="malformed JSON") as raised:
        read_curve(write(tmp_path, '{\n"0": 0.4,\n"50" 0.5}'))
    assert raised.value.line == 3
    for text in ("[0.4, 0.5]", "{}"):
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
