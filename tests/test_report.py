"""The HTML report, built from hand-made run-folder files (no model)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from tunewise.errors import TunewiseError
from tunewise.report.html import build_report
from tunewise.data.table import write_scores

HOSTILE_TASK = "<script>alert('x')</script> & $\\unknown$ co"


def task_entry(pool, budget, confidence, why, predicted_auc=None, coslow=None):
    return {
        "pool": pool, "labelled": pool, "mean_confidence": confidence, "weight": 0.5, "budget": budget,
        "share": budget / 30, "coslow": coslow, "predicted_auc": predicted_auc,
        "predicted_curve": None if predicted_auc is None else {"50": 0.4, "5000": 1.0},
        "predicted_at_budget": None if predicted_auc is None else 0.31,
        "labels_needed": None if predicted_auc is None else 812, "why": why,
    }


def write_run_folder(folder, sweep_location="sweep.json", with_weights=True):
    tasks = ["arithmetic", HOSTILE_TASK]
    plan = {
        "tunewise_version": "0.1.0",
        "pool": {"source": "pool<1>.jsonl", "examples": 60, "labelled": 60, "tasks": 2},
        "budget": 30, "selected": 30, "strategy": "weighted_task_diversity",
        "params": {"within": "random", "gamma": 1.0}, "within": "random", "seed": 0, "target": 0.9,
        "max_budget": 5000, "coefficients": {"slope": 0.545, "intercept": 0.31, "source": "paper:llama-3.1-8b"},
        "notes": ["a note with <b>markup</b>"],
        "provenance": {"model": "tiny-random", "model_fingerprint": "tiny-random-v1:float32",
                       "indicators": {"loss": 1, "confidence": 1}},
        "tasks": {
            "arithmetic": task_entry(40, 18, 0.41, "Low confidence, so more labels.", predicted_auc=0.47,
                                     coslow=0.29),
            HOSTILE_TASK: task_entry(20, 12, 0.63, "Why <i>not</i>?"),
        },
    }
    (folder / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    rng = np.random.default_rng(0)
    task_of_row = [tasks[0]] * 40 + [tasks[1]] * 20
    scores = pd.DataFrame({"id": [f"id{i}" for i in range(60)], "task": task_of_row,
                           "confidence": rng.uniform(0.2, 0.9, 60), "loss": rng.uniform(0.5, 3, 60)})
    write_scores(scores, folder / "scores.parquet", {"model_fingerprint": "tiny-random-v1:float32"})
    picks = list(range(18)) + list(range(40, 52))
    (folder / "selection.jsonl").write_text(
        "".join(json.dumps({"position": k, "id": f"id{row}", "task": task_of_row[row], "scores": {}, "reason": "r"})
                + "\n" for k, row in enumerate(picks)), encoding="utf-8")
    gain = {"mean": 0.05, "ci_low": 0.012, "ci_high": 0.088, "n_seeds": 3, "seeds": [0, 1, 2]}
    sweep = {
        "budgets": [10, 30], "seeds": [0, 1, 2], "baseline": "random", "ceiling": 0.8, "confidence_level": 0.95,
        "settings": {"model": "tiny-random", "metric": "exact_match", "test": {"examples": 40},
                     "finetune_config": {"learning_rate": 0.001}},
        "zero_shot": {"score": 0.1, "scores": {"arithmetic": 0.1, HOSTILE_TASK: 0.1}},
        "strategies": {
            "random": {"curve": {"0": 0.1, "10": 0.3, "30": 0.5}, "auc": 0.41,
                       "task_curves": {"arithmetic": {"0": 0.1, "10": 0.2, "30": 0.4}}},
            "weighted_task_diversity": {
                "curve": {"0": 0.1, "10": 0.35, "30": 0.55}, "auc": 0.47,
                "task_curves": {"arithmetic": {"0": 0.1, "10": 0.3, "30": 0.5}},
                "gain_over_random": {"10": gain, "30": {**gain, "mean": -0.01, "ci_low": -0.04, "ci_high": 0.02}},
            },
        },
    }
    (folder / sweep_location).parent.mkdir(parents=True, exist_ok=True)
    (folder / sweep_location).write_text(json.dumps(sweep), encoding="utf-8")
    if with_weights:
        weights = {"weights": {"loss": 0.6, "ifd": 0.3, "length": 0.1},
                   "orientation": {"loss": "high", "ifd": "high", "length": "low"}, "trials": 30}
        (folder / "weights.json").write_text(json.dumps(weights), encoding="utf-8")
    return folder


def test_report_has_every_section_and_is_self_contained(tmp_path):
    path = build_report(write_run_folder(tmp_path))
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    for heading in ("The plan, task by task", "Allocation", "Confidence and difficulty", "Learning curves",
                    "Measured", "Selection against random", "Learned indicator weights", "Provenance"):
        assert heading in page, heading
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert len(references) >= 6 and all(ref.startswith("data:image/png;base64,") for ref in references)
    assert "http://" not in page and "https://" not in page
    assert "[+0.012, +0.088]" in page and "beats random" in page and "no clear difference" in page
    assert "812" in page and "paper:llama-3.1-8b" in page and "tiny-random-v1:float32" in page
    for indicator in ("loss", "ifd", "length"):
        assert f"<td>{indicator}</td>" in page


def test_report_escapes_user_text(tmp_path):
    page = build_report(write_run_folder(tmp_path)).read_text(encoding="utf-8")
    assert "<script>" not in page and "alert(&#x27;x&#x27;)" in page
    assert "&lt;script&gt;" in page
    assert "<b>markup</b>" not in page and "&lt;b&gt;markup&lt;/b&gt;" in page
    assert "pool&lt;1&gt;.jsonl" in page and "Why &lt;i&gt;not&lt;/i&gt;?" in page


def test_report_finds_a_demo_sweep_in_its_subfolder_and_does_without_optional_files(tmp_path):
    with_sweep = tmp_path / "demo"
    with_sweep.mkdir()
    page = build_report(write_run_folder(with_sweep, "sweep/sweep.json", with_weights=False)).read_text()
    assert "Selection against random" in page and "Learned indicator weights" not in page

    bare = tmp_path / "bare"
    bare.mkdir()
    write_run_folder(bare, with_weights=False)
    (bare / "sweep.json").unlink()
    (bare / "scores.parquet").unlink()
    page = build_report(bare).read_text()
    assert "No measured curves" in page and "No scores.parquet" in page
    assert "Selection against random" not in page


def test_report_without_a_plan_is_a_clear_error(tmp_path):
    with pytest.raises(TunewiseError, match="no plan.json here"):
        build_report(tmp_path)
    (tmp_path / "plan.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TunewiseError, match="not a readable JSON file"):
        build_report(tmp_path)
