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


@pytest.mark.integration
def test_the_demo_in_worker_processes_writes_what_it_writes_in_one_process(tmp_path, monkeypatch, lively_model_dir):
    """``--workers 2`` (fine-tunes in two worker processes while this one measures CoS-Low) against
    ``--workers 1`` (one step after another), both on one thread (conftest): the same bytes in
    every file, wall-clock fields aside."""
    import tunewise.cli.demo as demo
    import tunewise.efficiency.predict as predict
    from test_sweep_ray import without_timings

    shipped = predict.coefficients_for("smollm2")
    monkeypatch.setattr(predict, "coefficients_for", lambda name, calibration_file=None: shipped)
    monkeypatch.setattr(demo, "QUICK", dataclasses.replace(demo.QUICK, pool_per_task=demo.FULL.pool_per_task))
    tunewise.cli._register_commands()
    # Both into the same folder (the files record its path), the first moved aside before the second.
    parallel, serial = tmp_path / "demo", tmp_path / "serial"
    for workers in (1, 2):
        result = CliRunner().invoke(app, ["demo", "--model", str(lively_model_dir), "--quick", "--out", str(parallel),
                                          "--workers", str(workers)])
        assert result.exit_code == 0, result.output
        if workers == 1:
            parallel.rename(serial)
    assert ("in 2 worker processes" in " ".join(result.output.split())) and "Plan:" in result.stdout
    # The report shows and the ledger hashes files that hold wall-clock fields; every other file is compared.
    files = sorted(p.relative_to(serial) for p in serial.rglob("*")
                   if p.is_file() and p.suffix != ".html" and p.name != ".tunewise-files.json")
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*")
                           if p.is_file() and p.suffix != ".html" and p.name != ".tunewise-files.json")
    assert len([f for f in files if f.parts[:2] == ("sweep", "runs")]) == 5  # zero-shot and 2 strategies x 2 budgets
    plan = json.loads((parallel / "plan.json").read_text())
    assert set(plan["coslow"]) == set(DEMO_TASKS) and plan["provenance"]["torch_threads"] == 1
    for name in files:
        if name.suffix == ".json":
            assert without_timings(json.loads((parallel / name).read_text())) == \
                without_timings(json.loads((serial / name).read_text())), name
        else:
            assert (parallel / name).read_bytes() == (serial / name).read_bytes(), name


def test_the_demo_runs_in_two_worker_processes_on_a_cpu_and_in_one_on_a_gpu(monkeypatch):
    from types import SimpleNamespace

    from tunewise.cli.demo import demo_workers
    from tunewise.errors import TunewiseError

    cpu, gpu = SimpleNamespace(device=SimpleNamespace(type="cpu")), SimpleNamespace(device=SimpleNamespace(type="cuda"))
    for cores, expected in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr("tunewise.training.process_sweep.cpu_cores", lambda cores=cores: cores)
        assert demo_workers(None, cpu) == expected
    assert demo_workers(3, cpu) == 3 and demo_workers(None, gpu) == 1 and demo_workers(1, gpu) == 1
    with pytest.raises(TunewiseError) as caught:
        demo_workers(2, gpu)
    assert caught.value.field == "workers"
