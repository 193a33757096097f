"""bench/study_difficulty_v2.py's helpers on synthetic cells: the even accuracy subset, the pass
order, the t intervals, per-tertile aggregation, the best bucket and the verdict (no model runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
study = pytest.importorskip("study_difficulty_v2")


def cell(arm: str, budget: int, seed: int, ll: float, tertiles: dict | None = None, accuracy: float | None = None) -> dict:
    metrics = {"log_likelihood": {"score": ll, "tertiles": tertiles or {"easy": ll + 0.1, "medium": ll, "hard": ll - 0.1},
                                  "n": 200, "seconds": 100.0}}
    if accuracy is not None:
        metrics["accuracy"] = {"score": accuracy, "tertiles": {"easy": accuracy, "medium": accuracy, "hard": accuracy},
                               "n": 100, "seconds": 400.0}
    return {"arm": arm, "budget": budget, "seed": seed, "metrics": metrics,
            "training": {"seconds": budget * 2.0, "tokens_per_second": 165.0}, "seconds": budget * 2.0 + 500}


def grid(scores: dict[tuple[str, int], list[float]]) -> list[dict]:
    """(arm, budget) → one log-likelihood per seed 0, 1, …"""
    return [cell(arm, budget, seed, value) for (arm, budget), values in scores.items() for seed, value in enumerate(values)]


def test_stratified_subset_takes_the_tertiles_evenly_in_test_order():
    ids = [f"x{i}" for i in range(12)]
    tertile_of = {i: t for i, t in zip(ids, ["hard", "easy", "easy", "easy", "easy", "medium", "hard", "easy",
                                             "medium", "hard", "medium", "easy"])}
    subset = study.stratified_subset(ids, tertile_of, 6)
    assert subset == ["x0", "x1", "x2", "x5", "x6", "x8"]  # two of each, the first of each tertile, in test order
    assert [tertile_of[i] for i in study.stratified_subset(ids, tertile_of, 7)].count("easy") == 3
    assert study.stratified_subset(ids, tertile_of, 50) == ids
    assert study.stratified_subset(ids, tertile_of, 0) == []


def test_stratified_subset_fills_from_the_others_when_a_tertile_runs_out():
    ids = ["a", "b", "c", "d", "e"]
    tertile_of = {"a": "easy", "b": "easy", "c": "easy", "d": "easy", "e": "hard"}
    assert study.stratified_subset(ids, tertile_of, 4) == ["a", "b", "c", "e"]


def test_passes_put_seed_zero_of_every_arm_at_every_budget_first():
    passes = study.plan_passes([256, 64], [2, 0, 1])
    assert passes[0] == [(arm, 64, 0) for arm in study.ARMS]
    assert passes[1] == [(arm, 256, 0) for arm in study.ARMS]
    assert passes[2] == [(arm, 64, seed) for seed in (1, 2) for arm in study.ARMS]
    assert passes[3] == [(arm, 256, seed) for seed in (1, 2) for arm in study.ARMS]
    every = [c for cells in passes for c in cells]
    assert len(every) == len(set(every)) == 4 * 2 * 3
    assert study.plan_passes([64], [0]) == [[(arm, 64, 0) for arm in study.ARMS]]


def test_mean_interval_is_the_student_t_interval():
    block = study.mean_interval([1.0, 2.0, 3.0])
    assert block["mean"] == pytest.approx(2.0)
    # sd 1, n 3, t(0.975, 2) = 4.3027
    assert block["ci_low"] == pytest.approx(2 - 4.302653 / 3 ** 0.5, abs=1e-5)
    assert block["ci_high"] == pytest.approx(2 + 4.302653 / 3 ** 0.5, abs=1e-5)
    assert study.mean_interval([1.5]) == {"mean": 1.5, "ci_low": None, "ci_high": None, "n": 1}
    assert study.mean_interval([])["mean"] is None


def test_summary_aggregates_each_test_tertile_over_seeds_and_pairs_gains_with_random():
    cells = [cell("random", 64, 0, -1.0, {"easy": -0.5, "medium": -1.0, "hard": -1.5}),
             cell("random", 64, 1, -1.2, {"easy": -0.7, "medium": -1.2, "hard": -1.7}),
             cell("easy", 64, 0, -0.9, {"easy": -0.3, "medium": -0.9, "hard": -1.6}),
             cell("easy", 64, 1, -1.0, {"easy": -0.4, "medium": -1.0, "hard": -1.8}),
             cell("hard", 64, 0, -1.1)]
    summary = study.summarise(cells, "log_likelihood")["64"]
    assert summary["random"]["easy"]["mean"] == pytest.approx(-0.6)
    assert summary["easy"]["easy"]["per_seed"] == {"0": -0.3, "1": -0.4}
    assert summary["easy"]["hard"]["mean"] == pytest.approx(-1.7)
    assert summary["easy"]["overall"]["gain_over_random"]["mean"] == pytest.approx(0.15)
    assert summary["easy"]["easy"]["gain_over_random"]["mean"] == pytest.approx(0.25)
    assert summary["easy"]["hard"]["gain_over_random"]["mean"] == pytest.approx(-0.1)
    assert "gain_over_random" not in summary["random"]["overall"]
    assert summary["hard"]["overall"]["n"] == 1 and "medium" not in summary
    assert study.summarise(cells, "accuracy") == {"64": {}}  # no cell measured accuracy


def test_best_bucket_needs_a_common_seed_and_says_whether_it_is_clear():
    assert study.best_bucket(grid({("easy", 64): [-1.0], ("medium", 64): [-1.1]}), "log_likelihood", 64) is None
    clear = study.best_bucket(grid({("easy", 64): [-1.0, -1.1, -1.05], ("medium", 64): [-1.2, -1.3, -1.26],
                                    ("hard", 64): [-1.4, -1.5, -1.45]}), "log_likelihood", 64)
    assert clear["best"] == "easy" and clear["runner_up"] == "medium" and clear["clear"] and not clear["tied"]
    noisy = study.best_bucket(grid({("easy", 64): [-1.0, -1.3, -1.05], ("medium", 64): [-1.2, -1.1, -1.1],
                                    ("hard", 64): [-1.4, -1.5, -1.45]}), "log_likelihood", 64)
    assert noisy["best"] == "easy" and not noisy["clear"]
    tied = study.best_bucket(grid({("easy", 64): [0.0], ("medium", 64): [0.0], ("hard", 64): [0.0]}),
                             "log_likelihood", 64)
    assert tied["tied"] and tied["best"] == "easy/medium/hard"


def _two_budgets(hard_gain_at_256: list[float]) -> list[dict]:
    """easy best at 64 for every seed; at 256 hard − easy = the given values."""
    return grid({("easy", 64): [-1.0, -1.0, -1.0], ("medium", 64): [-1.1, -1.1, -1.1],
                 ("hard", 64): [-1.2, -1.2, -1.2], ("easy", 256): [-0.9, -0.9, -0.9],
                 ("medium", 256): [-0.95, -0.95, -0.95],
                 ("hard", 256): [-0.9 + gain for gain in hard_gain_at_256]})


def test_verdict_says_not_enough_seeds_below_three():
    cells = [c for c in _two_budgets([0.1, 0.12, 0.11]) if c["seed"] < 2]
    result = study.verdict(cells, "log_likelihood")
    assert result["answer"].startswith("not enough seeds yet (2 of the 3")
    assert result["contrast"]["n"] == 2 and result["contrast"]["mean"] == pytest.approx(0.31)


def test_verdict_answers_yes_when_hard_gains_over_easy_with_the_budget():
    result = study.verdict(_two_budgets([0.1, 0.12, 0.11]), "log_likelihood")
    assert result["answer"].startswith("yes:")
    assert result["contrast"]["mean"] == pytest.approx(0.31) and result["contrast"]["ci_low"] > 0
    assert result["best"]["64"]["best"] == "easy" and result["best"]["256"]["best"] == "hard"


def test_verdict_answers_no_when_the_contrast_interval_holds_zero_or_lies_below():
    assert study.verdict(_two_budgets([-0.25, -0.1, -0.2]), "log_likelihood")["answer"].startswith("no move detected")
    assert study.verdict(_two_budgets([-0.3, -0.31, -0.32]), "log_likelihood")["answer"].startswith("no, it moves easier")


def test_verdict_needs_two_budgets_and_a_moving_score():
    one_budget = [c for c in _two_budgets([0.1, 0.1, 0.1]) if c["budget"] == 64]
    assert study.verdict(one_budget, "log_likelihood")["answer"].startswith("not enough budgets yet")
    flat = grid({(arm, budget): [0.0, 0.0, 0.0] for arm in study.BUCKETS for budget in (64, 256)})
    assert study.verdict(flat, "log_likelihood")["answer"].startswith("cannot tell: every bucket's fine-tune scores 0.0000")


def test_report_of_a_partial_study_folder(tmp_path):
    cells = _two_budgets([0.1, 0.12, 0.11]) + grid({("random", 64): [-1.05, -1.05, -1.02]})
    (tmp_path / "cells").mkdir()
    for c in cells:
        (tmp_path / "cells" / study.cell_name(c["arm"], c["budget"], c["seed"])).write_text(json.dumps(c))
    planned = [list(c) for cells_ in study.plan_passes([64, 256], [0, 1, 2]) for c in cells_]
    (tmp_path / "plan.json").write_text(json.dumps({"settings": {"model": "m"}, "cells": planned}))
    report = study.write_report(tmp_path)
    assert report["cells_planned"] == 24 and report["cells_done"] == 21
    assert report["cells_missing"] == [["random", 256, 0], ["random", 256, 1], ["random", 256, 2]]
    assert not report["zero_shot_done"]
    text = (tmp_path / "report.md").read_text()
    assert "**Does the best bucket move harder as the budget grows?** yes:" in text
    assert "| easy | -1.0000 [-1.0000, -1.0000] (n=3) | +0.0400" in text
    assert "no fine-tune has finished" not in text.lower().split("## accuracy")[0]
    assert json.loads((tmp_path / "report.json").read_text())["verdict"]["accuracy"]["answer"].startswith("not enough budgets")
    assert (tmp_path / "report.png").stat().st_size > 10_000  # the figure, drawn from the same report


def test_a_tiny_study_runs_resumes_and_reports(tmp_path):
    """The whole command on the tiny random model and a 30-example GSM8K pool: every cell and the
    zero-shot baseline written once, a second run redoes none of them, and the report is there."""
    pytest.importorskip("torch")
    from conftest import require_shared_data

    require_shared_data("gsm8k", "train.jsonl")
    out = tmp_path / "study"
    argv = ["--model", "tiny-random", "--out", str(out), "--pool-size", "30", "--budgets", "2,4,50", "--seeds", "0",
            "--test-size", "6", "--accuracy-items", "3", "--max-new-tokens", "4", "--max-seq-length", "1400"]
    study.main(argv)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["budgets"] == [2, 4]  # 50 is more than a tertile of 30 holds
    assert plan["settings"]["accuracy_items"] == 3 and plan["settings"]["test_size"] == 6
    written = {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}
    assert set(written) == {"zero_shot.json"} | {study.cell_name(arm, b, 0) for arm in study.ARMS for b in (2, 4)}
    easy = json.loads((out / "cells" / "easy__b2__s0.json").read_text())
    assert easy["selection"]["length_max"] <= plan["pool_tertiles_by_length"]["easy"]["max"]
    assert easy["metrics"]["accuracy"]["n"] == 3 and easy["metrics"]["log_likelihood"]["n"] == 6
    assert set(easy["metrics"]["log_likelihood"]["tertiles"]) == set(study.TERTILES)
    study.main(argv)
    assert {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")} == written
    report = json.loads((out / "report.json").read_text())
    assert report["cells_done"] == report["cells_planned"] == 8 and report["zero_shot_done"]
    assert report["verdict"]["log_likelihood"]["answer"].startswith(("not enough seeds yet", "cannot tell"))
    with pytest.raises(SystemExit, match="accuracy_items"):
        study.main([*argv[:-6], "--accuracy-items", "2", *argv[-4:]])
