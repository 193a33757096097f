"""`sweep --engine processes`: the local engine's records from worker processes, resumable; errors raised as they were."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from tunewise.errors import TunewiseError
from tunewise.training.process_sweep import check_device, threads_per_worker
from tunewise.training.sweep import SweepRun, run_file_name, run_sweep, start_sweep

from test_sweep import generated_examples
from test_sweep_ray import SWEEP, read_records, without_timings


@pytest.mark.integration
def test_the_processes_engine_writes_the_local_engines_records_and_resumes(tmp_path):
    pool, test = generated_examples(10), generated_examples(4, offset=100)
    local = run_sweep(pool, test, run_dir=tmp_path / "local", **SWEEP)
    labels = []
    parallel = run_sweep(pool, test, run_dir=tmp_path / "processes", engine="processes", workers=2,
                         progress=lambda done, total, label: labels.append((done, total, label)), **SWEEP)

    local_records, parallel_records = read_records(tmp_path / "local"), read_records(tmp_path / "processes")
    assert sorted(parallel_records) == sorted(["zero_shot.json", run_file_name("random", 4, 0),
                                               run_file_name("task_diversity", 4, 0)])
    assert {name: without_timings(r) for name, r in parallel_records.items()} == \
        {name: without_timings(r) for name, r in local_records.items()}
    assert without_timings(parallel) == without_timings(local)
    # The zero-shot evaluation is one of the workers' pieces of work, not done before them.
    assert labels[0] == (0, 3, "3 to run in 2 worker processes, 1 thread each")
    assert labels[-1] == (3, 3, "done") and [label[0] for label in labels] == [0, 1, 2, 3, 3]

    missing = tmp_path / "processes" / "runs" / run_file_name("task_diversity", 4, 0)
    missing.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "processes" / "runs").iterdir()}
    labels.clear()
    run_sweep(pool, test, run_dir=tmp_path / "processes", engine="processes", workers=2,
              progress=lambda done, total, label: labels.append((done, total, label)), **SWEEP)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "processes" / "runs").iterdir() if p.name in kept} == kept
    assert labels[0] == (2, 3, "1 to run in 2 worker processes, 1 thread each")
    assert without_timings(json.loads(missing.read_text())) == \
        without_timings(local_records[run_file_name("task_diversity", 4, 0)])


@pytest.mark.integration
def test_a_started_sweep_runs_while_this_process_works_and_a_workers_error_arrives_whole(tmp_path):
    pool, test = generated_examples(10), generated_examples(4, offset=100)
    # Sequences of at most 4 tokens, not truncated: the fine-tune in the worker refuses the pool.
    options = {**SWEEP, "finetune_config": dataclasses.replace(SWEEP["finetune_config"], max_seq_length=4)}
    with start_sweep(pool, test, run_dir=tmp_path / "sweep", engine="processes", workers=2, **options) as sweep:
        assert sweep.loaded is None  # the workers have their own models; this process keeps none for the runs
        with pytest.raises(TunewiseError) as caught:
            sweep.finish()
    assert "do not fit" in caught.value.message and caught.value.fix
    # Nothing half-written: the only records are of work that finished (the zero-shot one at most).
    runs = tmp_path / "sweep" / "runs"
    assert {p.name for p in (runs.iterdir() if runs.exists() else [])} <= {"zero_shot.json"}


def test_the_processes_engine_runs_on_the_cpu_and_shares_its_cores(monkeypatch):
    check_device(SimpleNamespace(type="cpu"))
    with pytest.raises(TunewiseError) as caught:
        check_device(SimpleNamespace(type="cuda"))
    assert caught.value.field == "engine" and "--engine local" in caught.value.fix
    monkeypatch.setattr("tunewise.training.process_sweep.cpu_cores", lambda: 8)
    assert [threads_per_worker(w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert SweepRun(engine="processes", workers=3).workers == 3
    with pytest.raises(TunewiseError):
        SweepRun(engine="threads")
