"""Coefficients predict AUCs on the budget axis they were fitted on (N and grid), everywhere they are used."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest
from typer.testing import CliRunner

import tunewise.cli.efficiency  # noqa: F401  (registers the commands)
from tunewise.cli.app import app
from tunewise.efficiency.curve import DEFAULT_GRID, DEFAULT_MAX_BUDGET
from tunewise.efficiency.predict import (SUPERSEDED, Coefficients, calibrate, coefficients_for, labels_needed,
                                         predict_auc, read_calibration, write_calibration)
from tunewise.errors import TunewiseError
from tunewise.pipeline import make_plan
from tunewise.data.pool import parse_record
from tunewise.data.table import ExampleTable

SMALL_GRID = (8, 16, 32, 64)


def small_calibration(tmp_path):
    fitted = calibrate([("a", 0.1, 0.3), ("b", 0.3, 0.5), ("c", 0.5, 0.6)], max_budget=64, grid=SMALL_GRID)
    return write_calibration(fitted, tmp_path / "calibration.json")


def test_calibration_file_keeps_its_max_budget_and_grid(tmp_path):
    coefficients = read_calibration(small_calibration(tmp_path))
    assert (coefficients.max_budget, coefficients.grid) == (64, SMALL_GRID)


def test_a_file_without_them_means_the_design_axis_and_bad_values_are_refused(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"slope": 0.5, "intercept": 0.3}))
    assert read_calibration(path)[3:5] == (DEFAULT_MAX_BUDGET, DEFAULT_GRID)
    path.write_text(json.dumps({"slope": 0.5, "intercept": 0.3, "max_budget": 1}))
    with pytest.raises(TunewiseError, match="whole number"):
        read_calibration(path)
    path.write_text(json.dumps({"slope": 0.5, "intercept": 0.3, "grid": [8, "16"]}))
    with pytest.raises(TunewiseError, match="positive whole numbers"):
        read_calibration(path)


def test_plan_predicts_on_the_calibration_axis():
    examples = [parse_record({"task": task, "prompt": f"{task} {i}", "response": str(i)}, "task")
                for task in ("fast", "slow") for i in range(100)]
    import pandas as pd

    scores = pd.DataFrame({"id": [e.id for e in examples], "task": [e.task for e in examples],
                           "confidence": [0.5] * len(examples)})
    coefficients = Coefficients(1.0, 0.0, "test", 64, SMALL_GRID)
    coslow = {"fast": 0.7, "slow": 0.4}
    table = ExampleTable(tuple(examples), scores, "generated")
    plan = make_plan(table, 150, strategy="efficiency", coefficients=coefficients,
                     coslow_values=coslow, target=0.9)
    assert plan.document["max_budget"] == 64 and plan.strategy.max_budget == 64
    for task, entry in plan.tasks.items():
        assert entry["labels_needed"] == math.ceil(labels_needed(predict_auc(coslow[task], coefficients), 0.9, 64))
        shown = str(min(entry["budget"], 64))  # a budget past N is shown at N
        assert set(entry["predicted_curve"]) == {"8", "16", "32", "64", shown}
        assert entry["predicted_at_budget"] == entry["predicted_curve"][shown] <= 1
    assert max(entry["budget"] for entry in plan.tasks.values()) > 64
    # Without coefficients nothing is predicted, and the axis is DESIGN's.
    assert make_plan(table, 10).document["max_budget"] == DEFAULT_MAX_BUDGET


def test_estimate_uses_the_calibration_axis_unless_told_otherwise(tmp_path):
    path = small_calibration(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["estimate", "--coslow", "0.3", "--coefficients", str(path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    auc = document["predicted_auc"]
    assert document["max_budget"] == 64 and set(document["predicted_curve"]) == {"8", "16", "32", "64"}
    assert document["labels_needed"]["0.9"] == math.ceil(labels_needed(auc, 0.9, 64))
    stretched = runner.invoke(app, ["estimate", "--coslow", "0.3", "--coefficients", str(path), "--max-budget",
                                    "5000"])
    assert stretched.exit_code == 0 and "N = 64" in stretched.output


def test_shipped_smollm2_calibration_carries_its_axis_and_its_caveat():
    entry = resources.files("tunewise") / "efficiency" / "calibration_smollm2.json"
    assert entry.is_file(), "the SmolLM2 calibration (issue 7, study 1) is package data"
    document = json.loads(entry.read_text(encoding="utf-8"))
    coefficients = coefficients_for("smollm2")
    assert coefficients[:2] == (document["slope"], document["intercept"])
    assert coefficients.max_budget == document["max_budget"] and list(coefficients.grid) == document["grid"]
    assert "python bench/study_curves.py" in document["how_it_was_made"]["command"]
    assert coefficients.caveat == document["caveat"] and "leave-one-task-out" in coefficients.caveat


def test_a_caveat_reaches_the_estimate_and_the_plan_notes_only_with_predictions(tmp_path):
    path = small_calibration(tmp_path)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "caveat": "fitted on three made-up tasks"}))
    result = CliRunner().invoke(app, ["estimate", "--coslow", "0.3", "--coefficients", str(path)])
    assert result.exit_code == 0 and "caveat: fitted on three made-up tasks" in result.output
    coefficients = read_calibration(path)
    examples = [parse_record({"task": task, "prompt": f"{task} {i}", "response": str(i)}, "task")
                for task in ("a", "b") for i in range(40)]
    import pandas as pd

    scores = pd.DataFrame({"id": [e.id for e in examples], "task": [e.task for e in examples],
                           "confidence": [0.5] * len(examples)})
    table = ExampleTable(tuple(examples), scores, "generated")
    predicted = make_plan(table, 20, coefficients=coefficients, coslow_values={"a": 0.2, "b": 0.4})
    assert "About the predicted curves: fitted on three made-up tasks" in predicted.document["notes"]
    assert predicted.document["coefficients"]["caveat"] == "fitted on three made-up tasks"
    unpredicted = make_plan(table, 20, coefficients=coefficients)
    assert not any("made-up" in note for note in unpredicted.document["notes"])
    path.write_text(json.dumps({**document, "caveat": 3}))
    with pytest.raises(TunewiseError, match="not a text"):
        read_calibration(path)


def test_shipped_smollm2_calibration_is_fitted_with_ceilings_and_states_its_errors():
    """Study 1 v2's refit (issue 14): every task has a human or target ceiling, the file says how it
    was made, and its caveat gives the fit's own leave-one-task-out errors in AUC points."""
    document = json.loads((resources.files("tunewise") / "efficiency" / "calibration_smollm2.json").read_text())
    assert "superseded" not in document and document["tasks_without_ceiling"] == []
    made = document["how_it_was_made"]
    assert made["study_commit"] and made["calibrate_command"].startswith("tunewise calibrate")
    assert made["tasks"] == [t["task"] for t in document["tasks"]]
    coefficients = coefficients_for("smollm2")
    assert coefficients.caveat == document["caveat"] and not coefficients.caveat.startswith(SUPERSEDED)
    refit = calibrate([(t["task"], t["coslow"], t["measured_auc"]) for t in document["tasks"]])
    assert (refit.coefficients.slope, refit.coefficients.intercept) == pytest.approx(
        (document["slope"], document["intercept"]))
    assert f"{100 * refit.loto_mae:.1f} AUC points against {100 * refit.mean_mae:.1f}" in coefficients.caveat
    result = CliRunner().invoke(app, ["estimate", "--coslow", "0.3", "--model", "smollm2"])
    assert result.exit_code == 0 and f"caveat: {coefficients.caveat[:40]}" in " ".join(result.output.split())


def test_a_superseded_file_always_says_so(tmp_path):
    path = small_calibration(tmp_path)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "superseded": True, "caveat": "old fit"}))
    assert read_calibration(path).caveat == f"{SUPERSEDED} old fit"
    path.write_text(json.dumps({**document, "superseded": "yes"}))
    with pytest.raises(TunewiseError, match="not true or false"):
        read_calibration(path)
