"""`sweep --engine ray`: the local engine's records, written to the same folder, resumable."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tunewise.cli import _register_commands, app
from tunewise.errors import TunewiseError
from tunewise.training.finetune import FinetuneConfig
from tunewise.training.ray_sweep import _task_resources
from tunewise.training.sweep import SweepRun, run_file_name, run_sweep

from test_sweep import generated_examples

_register_commands()

# Two runs: one per strategy, budget 4, seed 0.
SWEEP = dict(budgets=[4], strategies=["random", "task_diversity"], seeds=[0], model_name="tiny-random",
             finetune_config=FinetuneConfig(learning_rate=5e-2, epochs=2, batch_size=2), max_new_tokens=3)


def without_timings(value):
    """A record with every wall-clock figure left out: those are the only fields allowed to differ."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items()
                if "seconds" not in key and "per_second" not in key}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def read_records(folder) -> dict:
    return {path.name: json.loads(path.read_text()) for path in sorted((folder / "runs").iterdir())}


@pytest.mark.integration
def test_ray_sweep_writes_the_local_engines_records_and_resumes(tmp_path):
    pytest.importorskip("ray", reason="the Ray engine needs the optional extra: pip install 'tunewise[ray]'")
    pool, test = generated_examples(10), generated_examples(4, offset=100)
    local = run_sweep(pool, test, run_dir=tmp_path / "local", **SWEEP)
    labels = []
    distributed = run_sweep(pool, test, run_dir=tmp_path / "ray", engine="ray", workers=2,
                            progress=lambda done, total, label: labels.append((done, total, label)), **SWEEP)

    local_records, ray_records = read_records(tmp_path / "local"), read_records(tmp_path / "ray")
    assert sorted(ray_records) == sorted(["zero_shot.json", run_file_name("random", 4, 0),
                                          run_file_name("task_diversity", 4, 0)])
    assert {name: without_timings(r) for name, r in ray_records.items()} == \
        {name: without_timings(r) for name, r in local_records.items()}
    assert ray_records[run_file_name("random", 4, 0)]["selected_ids"] != \
        ray_records[run_file_name("task_diversity", 4, 0)]["selected_ids"]
    assert without_timings(distributed) == without_timings(local)
    assert labels[-1] == (3, 3, "done") and labels[1][:2] == (1, 3) and labels[1][2].startswith("Ray: 2 to run, 2 at a time")

    # Resumable as the local engine is: only the missing run is redone, the others are left untouched.
    missing = tmp_path / "ray" / "runs" / run_file_name("task_diversity", 4, 0)
    missing.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "runs").iterdir()}
    labels.clear()
    run_sweep(pool, test, run_dir=tmp_path / "ray", engine="ray", workers=2,
              progress=lambda done, total, label: labels.append((done, total, label)), **SWEEP)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "runs").iterdir() if p.name in kept} == kept
    assert labels[0][:2] == (2, 3) and labels[0][2].startswith("Ray: 1 to run")
    assert without_timings(json.loads(missing.read_text())) == \
        without_timings(local_records[run_file_name("task_diversity", 4, 0)])


def test_the_ray_engine_without_ray_exits_2_before_any_model_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if not installed
    pool, test = tmp_path / "pool.jsonl", tmp_path / "test.jsonl"
    pool.write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(4)))
    test.write_text(json.dumps({"question": "held out", "answer": "a"}) + "\n")
    output = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", str(pool), "--test", str(test), "-o", str(output), "--budgets", "2",
                                      "--strategies", "random", "--seeds", "0", "--model", "tiny-random",
                                      "--engine", "ray"])
    assert result.exit_code == 2, result.output
    assert "pip install 'tunewise[ray]'" in result.output and "Traceback" not in result.output
    assert not output.exists()


@pytest.mark.parametrize("engine, workers", [("spark", 2), ("ray", 0), ("ray", True)])
def test_an_unknown_engine_or_worker_count_is_refused(engine, workers):
    with pytest.raises(TunewiseError) as raised:
        SweepRun(engine=engine, workers=workers)
    assert raised.value.field == ("engine" if engine == "spark" else "workers")


def fake_ray(cpus: float, gpus: float = 0):
    node = {"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}
    return SimpleNamespace(cluster_resources=lambda: {"CPU": cpus, "GPU": gpus}, nodes=lambda: [node])


def test_each_task_gets_one_gpu_on_cuda_or_its_share_of_the_cpu_threads():
    assert _task_resources(fake_ray(16, gpus=4), "cuda", workers=2) == ({"num_gpus": 1, "num_cpus": 1}, None, "cuda")
    assert _task_resources(fake_ray(16), "cpu", workers=2) == ({"num_cpus": 8.0}, 8, "cpu")
    # A share is rounded down to Ray's four decimals, so three tasks of 2/3 CPU fit two CPUs.
    assert _task_resources(fake_ray(2), "cpu", workers=3) == ({"num_cpus": 0.6666}, 1, "cpu")
    with pytest.raises(TunewiseError, match="no GPU"):
        _task_resources(fake_ray(16), "cuda", workers=2)
