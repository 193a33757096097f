"""`tunewise demo` end to end on tiny-random, and the built-in pool it runs on."""

from __future__ import annotations

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
