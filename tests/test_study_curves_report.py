"""bench/study_curves_report.py on a synthetic study folder: cells counted, partial curves kept out of
the AUC, predictors compared only from the fourth task on (no model runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunewise.efficiency.curve import curve_auc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
study_curves_report = pytest.importorskip("study_curves_report")


def _write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _record(task: str, budget: int, score: float) -> dict:
    return {"strategy": "zero_shot" if budget == 0 else "random", "budget": budget, "seed": None if budget == 0 else 0,
            "score": score, "scores": {task: score}, "evaluation_seconds": 1.0,
            "results": {task: {"choice": score, "chance": 0.5}},
            **({} if budget == 0 else {"training": {"seconds": 2.0, "best_step": 48}})}


def make_study(out: Path, finished: dict[str, dict[int, float]]) -> None:
    """A study of five tasks on budgets 16 and 64; ``finished`` gives each task's scores on disk
    (budget 0 = zero-shot) and its predictors are written whenever it has a zero-shot score."""
    tasks = {f"t{i}": {"task": f"t{i}", "pool": 400, "test": 200, "budgets": [16, 64], "seeds": [0],
                       "ceiling": 0.9, "ceiling_source": "stated target", "choices": "label set of 2"}
             for i in range(5)}
    _write(out / "plan.json", {"settings": {}, "tasks": tasks, "skipped": {"t9": "no option list"},
                               "order": list(tasks), "commands": []})
    for number, (task, scores) in enumerate(finished.items()):
        runs = out / "tasks" / task / "sweep" / "runs"
        for budget, score in scores.items():
            name = "zero_shot.json" if budget == 0 else f"random__b{budget}__s0.json"
            _write(runs / name, _record(task, budget, score))
        if 0 in scores:
            _write(out / "tasks" / task / "coslow.json",
                   {"coslow": 0.1 * (number + 1), "coslow_random": 0.3 - 0.05 * number, "grad_norm": 5.0 + number % 2,
                    "mean_confidence": 0.5 + 0.01 * number ** 2, "confidence_seconds": 3.0, "gradient_seconds": 4.0})


def test_cells_are_counted_and_a_partial_curve_gets_no_full_auc(tmp_path):
    make_study(tmp_path, {"t0": {0: 0.5, 16: 0.6, 64: 0.7}, "t1": {0: 0.5, 16: 0.55}})
    report = study_curves_report.build_report(tmp_path)
    assert report["cells"]["planned"] == {"zero_shot": 5, "predictors": 5, "finetunes": 10}
    assert report["cells"]["finished"] == {"zero_shot": 2, "predictors": 2, "finetunes": 3}
    rows = {row["task"]: row for row in report["tasks"]}
    assert rows["t0"]["auc"] == pytest.approx(curve_auc({0: 0.5, 16: 0.6, 64: 0.7}, ceiling=0.9, max_budget=64,
                                                        grid=[16, 64]))
    assert rows["t1"]["auc"] is None
    assert rows["t1"]["auc_first"] == pytest.approx(curve_auc({0: 0.5, 16: 0.55}, ceiling=0.9, max_budget=16, grid=[16]))
    assert rows["t2"]["zero_shot"] is None and rows["t2"]["coslow"] is None
    assert "fit" not in report["comparisons"]["auc@16"] and "2 task(s)" in report["comparisons"]["auc@16"]["note"]
    assert "7 of 20 cells finished" in study_curves_report.markdown(report).replace("*", "")


def test_predictors_are_compared_from_the_fourth_task_with_the_library_calibration(tmp_path):
    scores = [0.58, 0.62, 0.75, 0.66, 0.80]
    make_study(tmp_path, {f"t{i}": {0: 0.5, 16: score} for i, score in enumerate(scores)})
    report = study_curves_report.build_report(tmp_path)
    comparison = report["comparisons"]["auc@16"]
    assert comparison["tasks"] == [f"t{i}" for i in range(5)]
    reports = {entry["predictor"]: entry for entry in comparison["fit"]["predictors"]}
    assert set(reports) == {"coslow", "coslow_random", "grad_norm", "mean_confidence"}
    # The mean predictor's error is the same for every predictor: all are judged on the same tasks.
    assert len({round(entry["mean_mae"], 12) for entry in reports.values()}) == 1
    assert reports["coslow"]["pearson"] > 0.5 and reports["coslow_random"]["pearson"] < -0.5
    assert "not compared" in study_curves_report.markdown(report)  # no complete curve yet on the full grid


def test_a_folder_without_a_plan_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="plan.json"):
        study_curves_report.build_report(tmp_path)


def test_a_task_planned_on_more_seeds_is_compared_on_the_seeds_done_and_reports_their_spread(tmp_path):
    make_study(tmp_path, {"t0": {0: 0.5, 16: 0.6, 64: 0.7}})
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["tasks"]["t0"]["seeds"] = [0, 1, 2]
    _write(tmp_path / "plan.json", plan)
    runs = tmp_path / "tasks" / "t0" / "sweep" / "runs"
    _write(runs / "random__b16__s1.json", _record("t0", 16, 0.8))  # seed 1 at 64 not finished yet
    row = study_curves_report.build_report(tmp_path)["tasks"][0]
    assert row["auc_seeds"] == 1 and row["auc_per_seed"] == []
    assert row["auc"] == pytest.approx(curve_auc({0: 0.5, 16: 0.6, 64: 0.7}, ceiling=0.9, max_budget=64, grid=[16, 64]))

    _write(runs / "random__b64__s1.json", _record("t0", 64, 0.6))
    report = study_curves_report.build_report(tmp_path)
    row = report["tasks"][0]
    seed_curves = [{0: 0.5, 16: 0.6, 64: 0.7}, {0: 0.5, 16: 0.8, 64: 0.6}]
    assert row["auc_seeds"] == 2
    assert row["auc"] == pytest.approx(curve_auc(seed_curves, ceiling=0.9, max_budget=64, grid=[16, 64]))
    assert row["auc_per_seed"] == pytest.approx([curve_auc(curve, ceiling=0.9, max_budget=64, grid=[16, 64])
                                                 for curve in seed_curves])
    text = study_curves_report.markdown(report)
    assert "seed-to-seed spread" in text and "(64, 2 seeds)" in text


def test_the_report_draws_its_figure(tmp_path):
    scores = [0.58, 0.62, 0.75, 0.66, 0.80]
    make_study(tmp_path, {f"t{i}": {0: 0.5, 16: score, 64: score + 0.05} for i, score in enumerate(scores)})
    study_curves_report.main([str(tmp_path)])
    assert (tmp_path / "report.png").stat().st_size > 10_000
