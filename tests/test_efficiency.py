"""Prediction from CoS-Low, calibration and labels needed (DESIGN.md §2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    normalised_target,
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
    # The folds' coefficients: slopes 0.2, 0.4, 0.6 (std 0.2), intercepts 0.4, 0.2, 0.2 (std 0.2/√3).
    assert [(fit.loto_slope, fit.loto_intercept) for fit in result.tasks] == [
        pytest.approx((0.2, 0.4)), pytest.approx((0.4, 0.2)), pytest.approx((0.6, 0.2))]
    assert (result.slope_spread.min, result.slope_spread.max) == pytest.approx((0.2, 0.6))
    assert result.slope_spread.std == pytest.approx(0.2)
    assert (result.intercept_spread.min, result.intercept_spread.max) == pytest.approx((0.2, 0.4))
    assert result.intercept_spread.std == pytest.approx(0.2 / math.sqrt(3))
    # CoS-Low is the only predictor given, and its report repeats the same errors.
    (coslow_report,) = result.predictors
    assert coslow_report.predictor == "coslow" and coslow_report.tasks == 3
    assert coslow_report.loto_mae == pytest.approx(0.5 / 3) and coslow_report.mean_mae == pytest.approx(0.7 / 3)


def test_leave_one_task_out_prediction_is_not_clipped():
    # Without t3 the fit is c + 0.1, which predicts 1.1 for t3: an absolute error of 0.2, as the
    # released code's abs_diff (misc_utils.py:52-65) computes it; clipping into (0, 1) would hide half.
    result = calibrate([("t1", 0.0, 0.1), ("t2", 0.1, 0.2), ("t3", 1.0, 0.9)])
    assert result.tasks[2].loto_predicted_auc == pytest.approx(1.1)
    assert abs(result.tasks[2].loto_predicted_auc - result.tasks[2].measured_auc) == pytest.approx(0.2)


def test_other_predictors_are_compared_on_the_tasks_that_have_them():
    rows = [{"task": "a", "coslow": 0.1, "auc": 0.2, "grad_norm": 4.0, "coslow_random": None},
            {"task": "b", "coslow": 0.3, "auc": 0.5, "grad_norm": 3.0, "coslow_random": 0.1},
            {"task": "c", "coslow": 0.5, "auc": 0.4, "grad_norm": 2.0, "coslow_random": 0.2},
            {"task": "d", "coslow": 0.7, "auc": 0.7, "grad_norm": 1.0}]
    reports = {report.predictor: report for report in calibrate(rows).predictors}
    assert list(reports) == ["coslow", "coslow_random", "grad_norm"]
    # grad_norm falls as the AUC mostly rises: Spearman −0.8 (ranks 4,3,2,1 against 1,3,2,4).
    assert reports["grad_norm"].spearman == pytest.approx(-0.8)
    assert reports["grad_norm"].pearson == pytest.approx(float(np.corrcoef([4, 3, 2, 1], [0.2, 0.5, 0.4, 0.7])[0, 1]))
    # Measured on two tasks only: reported, but no correlation or error is made up.
    assert reports["coslow_random"].tasks == 2
    assert reports["coslow_random"].pearson is None and reports["coslow_random"].loto_mae is None


def test_paper_a_mean_baseline_is_about_12_5_auc_points_not_percent():
    # Paper A's released AUCs (all 100, tests/data/paper_a_curves.json): predicting each held-out
    # task by the others' mean AUC errs by 12.4 (Mistral) and 12.6 (Qwen) AUC points, the 12.5 the
    # paper sets against CoS-Low's 8.6; as a relative error the same baseline is 34 % and 60 %.
    # (CoS-Low values are not released; the mean baseline does not use them.)
    fixture = json.loads((Path(__file__).parent / "data" / "paper_a_curves.json").read_text(encoding="utf-8"))
    aucs = {}
    for curve in fixture["curves"]:
        aucs.setdefault(curve["model"], []).append((curve["task"], curve["published_auc"]))
    expected = {"mistral": (12.43, 33.8), "qwen": (12.62, 60.2)}
    for model, (points, relative) in expected.items():
        rows = [(task, i / 100, auc) for i, (task, auc) in enumerate(aucs[model])]
        result = calibrate(rows)
        assert 100 * result.mean_mae == pytest.approx(points, abs=0.01)
        assert result.mean_relative_error == pytest.approx(relative, abs=0.1)


def test_normalised_target_by_hand_and_its_refusals():
    assert normalised_target(0.8, 0.4, 0.9) == pytest.approx(0.8)
    assert normalised_target(0.9, 0.4, 0.9) == 1.0
    for target, zero_shot, ceiling, message in ((0.4, 0.4, 0.9, "needs no labels"), (0.3, 0.4, 0.9, "not above"),
                                                (0.95, 0.4, 0.9, "above the ceiling"), (0.5, 0.6, 0.6, "ceiling"),
                                                (math.nan, 0.4, 0.9, "finite")):
        with pytest.raises(TunewiseError, match=message):
            normalised_target(target, zero_shot, ceiling)


def test_leave_one_task_out_drops_every_row_of_the_task():
    rows = [("a", 0.0, 0.2), ("a", 0.1, 0.3), ("b", 0.5, 0.5), ("c", 1.0, 0.6), ("d", 0.7, 0.45)]
    result = calibrate(rows)
    without_a = fit_coefficients([0.5, 1.0, 0.7], [0.5, 0.6, 0.45])
    predicted_for_a = [fit.loto_predicted_auc for fit in result.tasks if fit.task == "a"]
    assert predicted_for_a == pytest.approx([without_a.intercept, 0.1 * without_a.slope + without_a.intercept])


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


def test_curve_predictor_fit_returns_self_with_trailing_underscore_state():
    from tunewise.efficiency.predict import CurvePredictor

    rows = [("a", 0.1, 0.30), ("b", 0.2, 0.40), ("c", 0.3, 0.50), ("d", 0.4, 0.60)]
    predictor = CurvePredictor()
    with pytest.raises(TunewiseError, match="not fitted"):
        predictor.predict_auc(0.2)
    assert predictor.fit(rows) is predictor
    assert predictor.coef_ == pytest.approx(1.0) and predictor.intercept_ == pytest.approx(0.2)
    assert predictor.loto_mae_ == pytest.approx(0.0, abs=1e-12)
    assert predictor.predict_auc(0.25) == pytest.approx(0.45)
    paper = CurvePredictor.from_paper("llama-3.1-8b")
    assert (paper.coef_, paper.intercept_) == (0.545, 0.310)
    assert paper.labels_needed(0.3, 0.9) == pytest.approx(labels_needed(predict_auc(0.3, paper.coefficients_), 0.9))
