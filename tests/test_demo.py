"""`tunewise demo` end to end on tiny-random, and the built-in pool it runs on."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from typer.testing import CliRunner

import tunewise.cli
from tunewise.cli.app import app
from tunewise.data.demo import DEMO_TASKS, demo_records


def test_demo_pool_is_deterministic_distinct_and_graded():
    pool, test = demo_records(pool_per_task=30, test_per_task=10, seed=4)
    assert (pool, test) == demo_records(pool_per_task=30, test_per_task=10, seed=4)
    assert pool != demo_records(pool_per_task=30, test_per_task=10, seed=5)[0]
    assert Counter(r["task"] for r in pool) == dict.fromkeys(DEMO_TASKS, 30)
    assert Counter(r["task"] for r in test) == dict.fromkeys(DEMO_TASKS, 10)
    prompts = [r["prompt"] for r in pool + test]
    assert len(set(prompts)) == len(prompts)
    for task in DEMO_TASKS:
        assert len({r["level"] for r in pool if r["task"] == task}) >= 3, task
    assert [r["task"] for r in pool[:5]] == list(DEMO_TASKS)  # interleaved: every prefix holds every task
    answers = {r["task"]: r for r in pool}
    assert answers["uppercase"]["response"].isupper() and len(answers["first_letter"]["response"]) == 1


@pytest.mark.integration
def test_demo_runs_end_to_end_on_tiny_random(tmp_path):
    tunewise.cli._register_commands()
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--model", "tiny-random", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("pool.jsonl", "test.jsonl", "scores.parquet", "plan.json", "selection.jsonl", "report.html",
                 "sweep/sweep.json"):
        assert (out / name).is_file(), name
    plan = json.loads((out / "plan.json").read_text())
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert set(sweep["strategies"]) == {"random", plan["strategy"]}
    assert len(sweep["budgets"]) == 2 and max(sweep["budgets"]) == plan["selected"]
    page = (out / "report.html").read_text()
    assert "Selection against random" in page and all(task in page for task in DEMO_TASKS)
    assert "Plan:" in result.stdout and f"report → {out / 'report.html'}" in result.stdout


def test_the_full_demo_pool_is_large_enough_for_cos_low():
    from tunewise.cli.demo import FULL
    from tunewise.efficiency.coslow import DEFAULT_K

    pool, _ = demo_records(FULL.pool_per_task, FULL.test_per_task, seed=0)
    assert Counter(r["task"] for r in pool) == dict.fromkeys(DEMO_TASKS, FULL.pool_per_task)
    assert FULL.pool_per_task >= DEFAULT_K and max(FULL.budgets) <= FULL.pool_per_task * len(DEMO_TASKS)


@pytest.mark.integration
def test_the_demo_plan_gives_labels_needed_per_task_with_the_calibrations_caveat(tmp_path, monkeypatch,
                                                                                 lively_model_dir):
    """With a calibration for its model, the demo's plan predicts every task's curve from CoS-Low and says
    beside it what the calibration is worth (the shipped SmolLM2 one's caveat)."""
    import tunewise.cli.demo as demo
    import tunewise.efficiency.predict as predict

    shipped = predict.coefficients_for("smollm2")
    monkeypatch.setattr(predict, "coefficients_for", lambda name, calibration_file=None: shipped)
    # The full demo's pool (CoS-Low's 32 labelled examples per task) with the quick demo's fine-tunes.
    monkeypatch.setattr(demo, "QUICK", dataclasses.replace(demo.QUICK, pool_per_task=demo.FULL.pool_per_task))
    tunewise.cli._register_commands()
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--model", str(lively_model_dir), "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["coslow"]) == set(DEMO_TASKS)
    for task, entry in plan["tasks"].items():
        assert entry["coslow"] == plan["coslow"][task]["coslow"] and entry["labels_needed"] >= 1, task
        assert "No learning-curve prediction" not in entry["why"], task
    assert plan["coefficients"]["caveat"] == shipped.caveat
    assert f"About the predicted curves: {shipped.caveat[:40]}" in " ".join(result.output.split())
    page = (out / "report.html").read_text()
    assert shipped.caveat[:40] in page and "No learning-curve prediction" not in page
