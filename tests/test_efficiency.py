"""Prediction from CoS-Low, calibration and labels needed (DESIGN.md §2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tunewise.efficiency import predict as efficiency
from tunewise.efficiency.curve import normalised_log_budget
from tunewise.efficiency.predict import (
    Coefficients,
    calibrate,
    coefficients_for,
    doubling_schedule_cost,
    fit_coefficients,
    labels_needed,
    load_coefficients,
    observed_labels_needed,
    paper_coefficients,
    predict_auc,
    predicted_curve,
    read_calibration,
    write_calibration,
)
from tunewise.errors import TunewiseError

# -- the formulas --------------------------------------------------------------------------------


def test_paper_coefficients_are_the_published_figures():
    assert paper_coefficients("llama-3.1-8b")[:2] == (0.545, 0.310)
    assert paper_coefficients("paper:mistral-7b")[:2] == (0.797, 0.357)
    assert paper_coefficients("qwen2.5-14b")[:2] == (0.526, 0.305)
    assert set(efficiency.PAPER_COEFFICIENTS) == {"llama-3.1-8b", "mistral-7b", "qwen2.5-14b"}


def test_predict_auc_is_linear_then_clipped_into_the_open_unit_interval():
    assert predict_auc(0.5, paper_coefficients("llama-3.1-8b")) == pytest.approx(0.545 * 0.5 + 0.310)
    assert predict_auc(0.2, (0.5, 0.1)) == pytest.approx(0.2)
    assert 0 < predict_auc(-1.0, (1.0, 0.0)) < 1e-3
    assert 1 - 1e-3 < predict_auc(1.0, (1.0, 0.5)) < 1


def test_predicted_curve_is_a_power_law_whose_area_is_the_auc():
    assert predicted_curve(0.5, 0.3) == pytest.approx(0.3)
    assert predicted_curve(0.25, 0.5) == pytest.approx(0.5**3)
    grid = np.linspace(0, 1, 200001)
    for auc in (0.1, 0.4, 0.7):
        assert np.trapezoid(predicted_curve(auc, grid), grid) == pytest.approx(auc, abs=1e-6)


def test_labels_needed_formula():
    # n* = N^(τ^(AUC/(1-AUC))): with AUC 0.5 that is N^τ.
    assert labels_needed(0.5, 0.5) == pytest.approx(math.sqrt(5000))
    assert labels_needed(0.5, 1.0) == pytest.approx(5000)
    assert labels_needed(0.5, 0.5, max_budget=100) == pytest.approx(10)
    # The recipe in the paper's README: AUC' from coefficients (0.54, 0.31), CoS-Low 0.65, τ 0.9.
    auc = 0.54 * 0.65 + 0.31
    readme = 2 ** (0.9 ** (auc / (1 - auc)) * math.log2(5000))
    assert labels_needed(auc, 0.9) == pytest.approx(readme, rel=1e-12)


@pytest.mark.parametrize("auc", [0.05, 0.3, 0.6, 0.8])
@pytest.mark.parametrize("tau", [0.1, 0.5, 0.9])
def test_labels_needed_is_where_the_predicted_curve_reaches_the_target(auc, tau):
    n = labels_needed(auc, tau)
    assert predicted_curve(auc, normalised_log_budget(n)) == pytest.approx(tau, rel=1e-9)


@pytest.mark.parametrize("tau", [0.0, -0.5, 1.5])
def test_targets_outside_zero_one_are_errors(tau):
    with pytest.raises(TunewiseError, match=r"\(0, 1\]"):
        labels_needed(0.5, tau)


# -- observed labels and the doubling schedule ---------------------------------------------------

# Normalised: 0 at zero-shot, 0.5 at 50 examples, 1 from 100 on.
HALF_AT_50 = {0: 0.2, 50: 0.5, 100: 0.8}


def test_observed_labels_needed_interpolates_in_log_budget():
    assert observed_labels_needed(HALF_AT_50, 0.5) == pytest.approx(50)
    # Half-way between 50 and 100 on a log axis is their geometric mean.
    assert observed_labels_needed(HALF_AT_50, 0.75) == pytest.approx(math.sqrt(50 * 100))
    assert observed_labels_needed(HALF_AT_50, 1.0) == pytest.approx(100)


def test_observed_labels_needed_is_none_when_the_ceiling_is_never_reached():
    assert observed_labels_needed(HALF_AT_50, 0.9, ceiling=1.4) is None


def test_doubling_schedule_cost():
    reached_at_50 = doubling_schedule_cost(HALF_AT_50, 0.5)
    assert (reached_at_50.labels, reached_at_50.rounds, reached_at_50.examples_trained) == (50, 1, 50)
    reached_at_71 = doubling_schedule_cost(HALF_AT_50, 0.75)
    assert reached_at_71.budgets == (50, 100)
    assert (reached_at_71.labels, reached_at_71.examples_trained) == (100, 150)
    assert doubling_schedule_cost(HALF_AT_50, 0.9, ceiling=1.4) is None


def test_doubling_schedule_is_capped_at_the_maximum_budget():
    late = {0: 0.0, 2500: 0.5, 5000: 1.0}
    cost = doubling_schedule_cost(late, 0.9)
    assert cost.budgets == (50, 100, 200, 400, 800, 1600, 3200, 5000)
    assert cost.labels == 5000 and cost.examples_trained == sum(cost.budgets)
    with pytest.raises(TunewiseError, match="start"):
        doubling_schedule_cost(late, 0.9, start=0)


# -- calibration ---------------------------------------------------------------------------------


def test_calibration_is_exact_on_linear_data():
    coslows = [0.05, 0.2, 0.35, 0.5, 0.8]
    rows = [(f"task{i}", c, 0.6 * c + 0.2) for i, c in enumerate(coslows)]
    result = calibrate(rows)
    assert result.coefficients.slope == pytest.approx(0.6, abs=1e-12)
    assert result.coefficients.intercept == pytest.approx(0.2, abs=1e-12)
    assert result.loto_mae == pytest.approx(0.0, abs=1e-12)
    assert result.loto_relative_error == pytest.approx(0.0, abs=1e-9)
    assert result.mean_mae > 0.05


def test_leave_one_task_out_by_hand():
    # Leave out t1: fit on t2, t3 gives 0.2 c + 0.4, predicts 0.4 (error 0.2).
    # Leave out t2: fit on t1, t3 gives 0.4 c + 0.2, predicts 0.4 (error 0.1).
    # Leave out t3: fit on t1, t2 gives 0.6 c + 0.2, predicts 0.8 (error 0.2).
    # The mean predictor predicts 0.55, 0.4, 0.35 (errors 0.35, 0.1, 0.25).
    result = calibrate([("t1", 0.0, 0.2), ("t2", 0.5, 0.5), ("t3", 1.0, 0.6)])
    assert [fit.loto_predicted_auc for fit in result.tasks] == pytest.approx([0.4, 0.4, 0.8])
    assert [fit.loto_mean_auc for fit in result.tasks] == pytest.approx([0.55, 0.4, 0.35])
    assert result.loto_mae == pytest.approx(0.5 / 3)
    assert result.loto_relative_error == pytest.approx(100 * (0.2 / 0.2 + 0.1 / 0.5 + 0.2 / 0.6) / 3)
    assert result.mean_mae == pytest.approx(0.7 / 3)
    assert result.mean_relative_error == pytest.approx(100 * (0.35 / 0.2 + 0.1 / 0.5 + 0.25 / 0.6) / 3)


def test_leave_one_task_out_drops_every_row_of_the_task():
    rows = [("a", 0.0, 0.2), ("a", 0.1, 0.3), ("b", 0.5, 0.5), ("c", 1.0, 0.6), ("d", 0.7, 0.45)]
    result = calibrate(rows)
    without_a = fit_coefficients([0.5, 1.0, 0.7], [0.5, 0.6, 0.45])
    predicted_for_a = [fit.loto_predicted_auc for fit in result.tasks if fit.task == "a"]
    assert predicted_for_a == pytest.approx([predict_auc(0.0, without_a), predict_auc(0.1, without_a)])


def test_relative_error_is_undefined_when_a_measured_auc_is_zero():
    result = calibrate([("t1", 0.0, 0.0), ("t2", 0.5, 0.5), ("t3", 1.0, 0.6)])
    assert result.loto_relative_error is None and result.mean_relative_error is None
    assert result.loto_mae > 0


def test_calibration_errors():
    with pytest.raises(TunewiseError, match="at least 3 tasks"):
        calibrate([("a", 0.1, 0.2), ("b", 0.3, 0.4)])
    with pytest.raises(TunewiseError, match="different CoS-Low"):
        calibrate([("a", 0.3, 0.2), ("b", 0.3, 0.4), ("c", 0.3, 0.5)])
    with pytest.raises(TunewiseError, match="non-finite"):
        calibrate([("a", 0.1, 0.2), ("b", float("nan"), 0.4), ("c", 0.3, 0.5)])


# -- where coefficients come from ----------------------------------------------------------------


def test_coefficients_for_recognises_the_paper_models():
    assert coefficients_for("meta-llama/Llama-3.1-8B-Instruct") == paper_coefficients("llama-3.1-8b")
    assert coefficients_for("hub:mistralai/Mistral-7B-Instruct-v0.3:abc:bfloat16") == paper_coefficients("mistral-7b")
    assert coefficients_for("Qwen/Qwen2.5-14B-Instruct") == paper_coefficients("qwen2.5-14b")


def test_other_models_need_a_calibration():
    with pytest.raises(TunewiseError, match="no coefficients are known") as raised:
        coefficients_for("smollm2-135m-instruct-q4_1:abc:float32")
    assert "tunewise calibrate" in raised.value.fix and "paper:llama-3.1-8b" in raised.value.fix
    # A base (non-instruct) Llama is not the paper's model either.
    with pytest.raises(TunewiseError):
        coefficients_for("meta-llama/Llama-3.1-8B")


def test_calibration_file_round_trip(tmp_path):
    result = calibrate([("t1", 0.0, 0.2), ("t2", 0.5, 0.5), ("t3", 1.0, 0.6)])
    path = write_calibration(result, tmp_path / "out" / "calibration.json")
    document = json.loads(path.read_text())
    assert document["loto_mae"] == pytest.approx(result.loto_mae)
    assert len(document["tasks"]) == 3
    loaded = coefficients_for("any-model", calibration_file=path)
    assert loaded[:2] == pytest.approx(result.coefficients[:2])
    assert str(path) in loaded.source
    assert load_coefficients(str(path))[:2] == loaded[:2]


def test_shipped_calibration_is_found_by_model_name(tmp_path, monkeypatch):
    data = tmp_path / "package" / "efficiency"
    data.mkdir(parents=True)
    (data / "calibration_smollm2.json").write_text(json.dumps(
        {"slope": 0.4, "intercept": 0.25, "model": "smollm2", "model_fingerprint": "smollm2-fp:float32"}))
    monkeypatch.setattr(efficiency.resources, "files", lambda package: tmp_path / "package")
    assert coefficients_for("smollm2")[:2] == (0.4, 0.25)
    assert coefficients_for("smollm2-fp:float32")[:2] == (0.4, 0.25)
    with pytest.raises(TunewiseError, match="no coefficients"):
        coefficients_for("tiny-random")


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such calibration file"), ("{", "malformed JSON"), ("[1, 2]", "JSON object"),
     ('{"slope": 0.5}', "finite number"), ('{"slope": "0.5", "intercept": 0.2}', "finite number")],
)
def test_read_calibration_errors(tmp_path, content, message):
    path = tmp_path / "calibration.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TunewiseError, match=message) as raised:
        read_calibration(path)
    assert raised.value.file == str(path)


def test_load_coefficients_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_coefficients("paper:qwen2.5-14b") == paper_coefficients("qwen2.5-14b")
    with pytest.raises(TunewiseError, match="did you mean 'llama-3.1-8b'"):
        load_coefficients("paper:llama-3-8b")
    with pytest.raises(TunewiseError) as raised:
        load_coefficients("llama-3.1-8b")
    assert "paper:llama-3.1-8b" in raised.value.fix


def test_coefficients_are_a_plain_pair_too():
    assert predict_auc(0.5, Coefficients(0.5, 0.1, "test")) == predict_auc(0.5, (0.5, 0.1))
