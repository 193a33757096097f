"""bench/study_weights_v2.py: the pass order, the cost projection, the arms' intervals and gains,
the proxy check's points and correlation, and the report, on run records made up here as test
fixtures (no model runs); then the whole command on the tiny random model, resumed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
study = pytest.importorskip("study_weights_v2")


def run(arm: str, seed: int, ll: float, accuracy: float | None = None, trial: int | None = None,
        j: float | None = None) -> dict:
    """A fabricated run record (test fixture), shaped as the script writes them."""
    metrics = {"log_likelihood": {"score": ll, "tertiles": {}, "n": 200, "seconds": 60.0}}
    if accuracy is not None:
        metrics["accuracy"] = {"score": accuracy, "tertiles": {}, "n": 100, "seconds": 170.0}
    record = {"arm": arm, "seed": seed, "metrics": metrics, "examples": 300,
              "training": {"seconds": 800.0, "tokens_per_second": 160.0}}
    if trial is not None:
        record.update(trial=trial, J=j, J_spread=0.01, weights={"loss": 1.0})
    return record


def test_cell_names():
    assert study.cell_name("zero_shot") == "zero_shot.json"
    assert study.cell_name("tuned", 2) == "tuned__s2.json"
    assert study.cell_name("check", 0, 17) == "check__t17.json"


def test_passes_run_seed_zero_of_every_arm_then_the_check_then_the_other_seeds():
    passes = study.plan_passes([2, 0, 1], [5, 3])
    assert [label for label, _ in passes] == ["seed 0 of every arm", "proxy check", "seeds 1-2 of tuned and random",
                                              "seeds 1-2 of all"]
    assert passes[0][1] == [("tuned", 0, None), ("random", 0, None), ("all", 0, None)]
    assert passes[1][1] == [("check", 0, 5), ("check", 0, 3)]
    assert passes[2][1] == [("tuned", 1, None), ("random", 1, None), ("tuned", 2, None), ("random", 2, None)]
    assert passes[3][1] == [("all", 1, None), ("all", 2, None)]
    every = [cell for _, cells in passes for cell in cells]
    assert len(every) == len(set(every)) == 3 * 3 + 2
    # one seed: no later passes; an undecided check is a placeholder per setting
    assert study.plan_passes([0], [None, None]) == [passes[0], ("proxy check", [("check", 0, None)] * 2)]


def test_projected_hours_follow_the_cost_model():
    passes = [("a", [("tuned", 0, None), ("all", 0, None)]), ("b", [("check", 0, 7), ("check", 0, 8)])]
    tokens = {"tuned": 250.0, "random": 200.0, "all": 200.0, "check": 200.0, ("check", 7): 300.0}
    rows = study.projected_hours(passes, {"tuned": 300, "random": 300, "check": 300, "all": 1000}, tokens, 2, 200, 100)
    rate = study.TRAIN_TOKENS_PER_SECOND
    arm_eval = 200 * study.LOG_LIKELIHOOD_SECONDS_PER_ITEM + 100 * study.ACCURACY_SECONDS_PER_ITEM
    assert rows[0]["train_h"] == pytest.approx((2 * 300 * 250 + 2 * 1000 * 200) / rate / 3600)
    assert rows[0]["eval_h"] == pytest.approx(2 * arm_eval / 3600)
    # the checks: their own selection's tokens when known, log-likelihood only
    assert rows[1]["train_h"] == pytest.approx((2 * 300 * 300 + 2 * 300 * 200) / rate / 3600)
    assert rows[1]["eval_h"] == pytest.approx(2 * 200 * study.LOG_LIKELIHOOD_SECONDS_PER_ITEM / 3600)
    assert rows[1]["total_h"] == pytest.approx(rows[1]["train_h"] + rows[1]["eval_h"])


def test_setup_hours_add_scoring_and_the_search():
    row = study.setup_hours(460_000, 1000, 46_000, 4_600, 30, 3, 200, 100)
    parts = row["parts_h"]
    assert parts["pool_scoring"] == pytest.approx((1000 + 1000 * study.CONFIDENCE_SECONDS_PER_PROMPT) / 3600)
    assert parts["dev_embedding"] == pytest.approx(100 / 3600)
    assert parts["search"] == pytest.approx(30 * 3 * 4_600 / study.PROXY_TOKENS_PER_SECOND / 3600)
    assert row["total_h"] == pytest.approx(sum(parts.values()))


def _arms() -> list[dict]:
    return [run("tuned", 0, -1.10, 0.02), run("tuned", 1, -1.12, 0.03), run("tuned", 2, -1.11, 0.01),
            run("random", 0, -1.15, 0.02), run("random", 1, -1.16, 0.02), run("random", 2, -1.14, 0.02),
            run("all", 0, -1.00, 0.04)]


def test_summary_gives_means_t_intervals_and_paired_gains():
    summary = study.summarise_arms(_arms(), "log_likelihood")
    tuned = summary["tuned"]
    assert tuned["mean"] == pytest.approx(-1.11) and tuned["n"] == 3
    # sd 0.01, t(0.975, 2) = 4.3027
    assert tuned["ci_high"] - tuned["mean"] == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, rel=1e-4)
    assert tuned["gain_over_random"]["mean"] == pytest.approx(0.04)
    assert tuned["gain_over_random"]["ci_low"] > 0
    # all has one seed: its gains pair on seed 0 only, with no interval
    assert tuned["gain_over_all"] == {"mean": pytest.approx(-0.10), "ci_low": None, "ci_high": None, "n_seeds": 1,
                                      "seeds": [0]}
    assert summary["all"]["gain_over_random"]["mean"] == pytest.approx(0.15)
    assert summary["all"]["ci_low"] is None
    assert "gain_over_random" not in summary["random"] and "gain_over_all" not in summary["random"]
    answers = study.answers(summary)
    assert answers["tuned_vs_random"].startswith("tuned is better: tuned − random = +0.0400 [")
    assert answers["tuned_vs_all"].startswith("not enough seeds yet: tuned − all = -0.1000 over 1 seed(s)")
    assert study.answers({})["tuned_vs_random"] == "not measured yet."


def test_answers_say_when_the_interval_holds_zero_or_lies_below():
    holds = [run("tuned", s, v) for s, v in enumerate([-1.10, -1.20, -1.15])] + \
            [run("random", s, v) for s, v in enumerate([-1.15, -1.14, -1.16])]
    assert study.answers(study.summarise_arms(holds, "log_likelihood"))["tuned_vs_random"].startswith(
        "no difference detected")
    below = [run("tuned", s, v) for s, v in enumerate([-1.20, -1.21, -1.22])] + \
            [run("all", s, v) for s, v in enumerate([-1.00, -1.00, -1.01])]
    assert study.answers(study.summarise_arms(below, "log_likelihood"))["tuned_vs_all"].startswith("tuned is worse")
    # accuracy was not measured on these runs
    assert study.summarise_arms(below, "accuracy") == {}


def _check_runs(n: int) -> list[dict]:
    """n − 1 check runs and the tuned runs of seeds 0 and 1: J and the score rise together."""
    runs = [run("check", 0, -1.3 + 0.01 * k, trial=10 + k, j=-1.1 + 0.01 * k) for k in range(n - 1)]
    return runs + [run("tuned", 0, -1.0, 0.0, trial=3, j=-0.9), run("tuned", 1, -2.0, 0.0, trial=3, j=-0.9)]


def test_proxy_points_are_the_checks_and_the_tuned_run_of_their_seed():
    points = study.proxy_points(_check_runs(8), 0)
    assert [p["trial"] for p in points] == [10, 11, 12, 13, 14, 15, 16, 3]
    assert points[-1] == {"trial": 3, "J": -0.9, "J_spread": 0.01, "score": -1.0, "run": "tuned__s0.json"}
    assert points[0]["run"] == "check__t10.json"
    check = study.proxy_check(_check_runs(8), 0)
    assert check["points"] == 8 and check["spearman"] == pytest.approx(1.0)
    assert check["spearman_p"] < 0.001 and check["verdict"].startswith("strong")


def test_proxy_check_is_incomplete_below_eight_settings_and_reports_a_flat_score():
    partial = study.proxy_check(_check_runs(5), 0)
    assert partial["verdict"].startswith("incomplete: 5 of the 8 weight settings fine-tuned so far; so far strong")
    assert study.proxy_check([], 0)["verdict"] == "incomplete: 0 of the 8 weight settings fine-tuned so far"
    flat = [run("check", 0, -1.2, trial=k, j=-1.0 + 0.01 * k) for k in range(7)] + [run("tuned", 0, -1.2, trial=9, j=0.0)]
    result = study.proxy_check(flat, 0)
    assert result["spearman"] is None and result["verdict"].startswith("undefined")


def test_report_of_a_partial_study_folder(tmp_path):
    cells = _arms() + _check_runs(8)[:-2]  # the check runs without the tuned ones (those are in _arms)
    cells[0].update(trial=3, J=-0.9, J_spread=0.0, weights={"loss": 1.0})
    (tmp_path / "cells").mkdir()
    for c in cells:
        (tmp_path / "cells" / study.cell_name(c["arm"], c["seed"], c.get("trial"))).write_text(json.dumps(c))
    (tmp_path / "cells" / "zero_shot.json").write_text(json.dumps(
        {"arm": "zero_shot", "seed": None, "metrics": run("x", 0, -1.45, 0.01)["metrics"]}))
    passes = study.plan_passes([0, 1, 2], list(range(10, 17)))
    (tmp_path / "plan.json").write_text(json.dumps({
        "settings": {"pool_examples": 1000, "fraction": 0.3, "test_size": 200, "accuracy_items": 100},
        "seeds": [0, 1, 2], "passes": [{"pass": label, "cells": [list(c) for c in cs]} for label, cs in passes],
        "projected_cpu_hours": [{"pass": "seed 0 of every arm", "runs": 3, "train_h": 1.0, "eval_h": 0.2,
                                 "total_h": 1.2}]}))
    report = study.write_report(tmp_path)
    assert [(p["finished"], p["planned"]) for p in report["passes"]] == [(3, 3), (7, 7), (4, 4), (0, 2)]
    assert report["zero_shot"] == {"log_likelihood": -1.45, "accuracy": 0.01}
    assert report["proxy_check"]["points"] == 8
    assert report["measured"]["evaluation_seconds_per_item_median"]["log_likelihood"] == pytest.approx(0.3)
    text = (tmp_path / "report.md").read_text()
    assert "**Tuned 30 % against random 30 %:** tuned is better" in text
    assert "| tuned | 3 | -1.1100 [" in text and "| zero-shot | — | -1.4500 |" in text
    assert "| 3 | -0.9000 | 0.0000 | -1.1000 | tuned__s0.json |" in text
    assert json.loads((tmp_path / "report.json").read_text())["answers"]["accuracy"]["tuned_vs_all"].startswith(
        "not enough seeds")
    assert (tmp_path / "report.png").stat().st_size > 10_000  # the figure, drawn from the same report


def test_a_tiny_study_runs_resumes_and_reports(tmp_path):
    """The whole command on the tiny random model, a 20-example GSM8K pool and a 4-trial search:
    every run written once, a second run redoes none of them, other settings are refused."""
    pytest.importorskip("torch")
    pytest.importorskip("optuna")
    from conftest import require_shared_data

    require_shared_data("gsm8k", "train.jsonl")
    out = tmp_path / "study"
    argv = ["--model", "tiny-random", "--out", str(out), "--pool-size", "20", "--dev-size", "8", "--test-size", "4",
            "--accuracy-items", "2", "--max-new-tokens", "4", "--max-seq-length", "1400", "--trials", "4",
            "--anchors", "3", "--repeats", "1", "--demos", "1", "--proxy-checks", "3", "--epochs", "1",
            "--seeds", "0"]
    study.main([*argv, "--plan-only"])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["settings"]["selection_size"] == 6 and plan["weight_settings"]["chosen"] is None
    assert plan["passes"][1]["cells"] == [["check", 0, None]] * 2
    assert plan["projected_cpu_hours_total"] > 0 and not (out / "cells").exists()
    study.main(argv)
    setup = json.loads((out / "setup.json").read_text())
    checks = [c["trial"] for c in setup["check_settings"] if c["trial"] != setup["tuned"]["trial"]]
    written = {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}
    assert set(written) == {"zero_shot.json", "tuned__s0.json", "random__s0.json", "all__s0.json",
                            *(f"check__t{t}.json" for t in checks)}
    tuned = json.loads((out / "cells" / "tuned__s0.json").read_text())
    assert tuned["examples"] == 6 and tuned["trial"] == setup["search"]["best_trial"]
    assert tuned["metrics"]["accuracy"]["n"] == 2 and tuned["metrics"]["log_likelihood"]["n"] == 4
    if checks:
        assert set(json.loads((out / "cells" / f"check__t{checks[0]}.json").read_text())["metrics"]) == {"log_likelihood"}
    assert json.loads((out / "weights.json").read_text())["selection_size"] == 6
    study.main(argv)
    assert {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")} == written
    report = json.loads((out / "report.json").read_text())
    assert all(p["finished"] == p["planned"] for p in report["passes"])
    assert report["proxy_check"]["points"] == len(checks) + 1
    with pytest.raises(SystemExit, match="trials"):
        study.main([value if value != "4" or argv[i - 1] != "--trials" else "5" for i, value in enumerate(argv)])
