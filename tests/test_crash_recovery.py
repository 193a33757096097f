"""Kill-and-resume for ``tunewise score`` (issue 8): SIGKILL at several points, run again, and the
scores equal an uninterrupted run's exactly, with no temporary file left behind.

The kill points are set by progress, not by the clock: the test polls the score cache (SQLite,
committed batches only) and kills the process once k examples are in. The same cache is killed
at three growing points in a row, so resuming a resumed run is covered too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from tunewise.data.table import read_scores

pytestmark = pytest.mark.integration

ENTRY_POINT = Path(sys.executable).with_name("tunewise")
EXAMPLES = 300
KILL_AFTER = (1, 100, 200)  # committed examples at which each successive run is killed
WORDS = "the a model learns from examples tasks budget label select score pool answer why how".split()


def write_pool(path: Path) -> Path:
    rng = random.Random(0)
    lines = []
    for i in range(EXAMPLES):
        question = f"{i}. " + " ".join(rng.choices(WORDS, k=rng.randint(2, 12)))
        answer = "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(1, 6))) for _ in range(rng.randint(1, 3)))
        lines.append(json.dumps({"question": question, "answer": answer if i % 10 else None,
                                 "task": f"task{i % 3}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def score_command(pool: Path, output: Path, cache: Path) -> list[str]:
    return [str(ENTRY_POINT), "score", str(pool), "-o", str(output), "--model", "tiny-random", "--task-field", "task",
            "--indicators", "loss,ifd,confidence,length,cot_length,embedding", "--batch-tokens", "512",
            "--max-new-tokens", "4", "--device", "cpu", "--dtype", "fp32", "--cache-dir", str(cache)]


def environment() -> dict:
    # One thread in every run: the thread count must not differ between the runs compared.
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def committed_examples(database: Path) -> int:
    """Examples whose loss is committed to the cache; 0 while the cache does not exist yet."""
    if not database.exists():
        return 0
    # Closed explicitly: a reader left open would keep the last writer from removing the WAL files.
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as connection:
            return connection.execute("SELECT COUNT(*) FROM scores WHERE output = 'loss'").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created, or the file is brand new
        return 0


def run_and_kill_after(command: list[str], database: Path, examples: int, timeout: float = 120) -> int:
    """Start the command, SIGKILL it once ``examples`` are committed; the examples committed then."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment())
    deadline = time.monotonic() + timeout
    try:
        while committed_examples(database) < examples:
            if process.poll() is not None:
                pytest.fail(f"the run ended before {examples} examples were committed "
                            f"(exit {process.returncode}): {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {examples} examples committed after {timeout} s")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    return committed_examples(database)


def run_to_completion(command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, env=environment(), timeout=300)
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]


def test_killed_runs_resume_to_exactly_the_uninterrupted_scores(tmp_path):
    if not ENTRY_POINT.exists():
        pytest.skip(f"the tunewise entry point is not installed at {ENTRY_POINT}")
    pool = write_pool(tmp_path / "pool.jsonl")

    reference_output = tmp_path / "reference" / "scores.parquet"
    run_to_completion(score_command(pool, reference_output, tmp_path / "reference-cache"))

    output_folder, cache = tmp_path / "resumed", tmp_path / "cache"
    output = output_folder / "scores.parquet"
    command = score_command(pool, output, cache)
    committed = [run_and_kill_after(command, cache / "scores.sqlite", k) for k in KILL_AFTER]
    assert committed == sorted(committed) and committed[-1] < EXAMPLES  # every kill landed mid-run
    assert not output.exists()  # a killed run never leaves a scores file, whole or partial

    run_to_completion(command)

    expected, expected_provenance = read_scores(reference_output)
    resumed, provenance = read_scores(output)
    pd.testing.assert_frame_equal(resumed.drop(columns="embedding"), expected.drop(columns="embedding"),
                                  check_exact=True)
    assert all((a == b).all() for a, b in zip(resumed["embedding"], expected["embedding"]))
    assert len(resumed) == EXAMPLES and resumed["id"].is_unique
    assert provenance == expected_provenance

    assert sorted(p.name for p in output_folder.iterdir()) == ["scores.parquet"]
    assert sorted(p.name for p in cache.iterdir()) == ["scores.sqlite"]
    with closing(sqlite3.connect(cache / "scores.sqlite")) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        counts = connection.execute("SELECT output, COUNT(*), COUNT(DISTINCT example) FROM scores GROUP BY output")
        assert {(total, distinct) for _, total, distinct in counts} == {(EXAMPLES, EXAMPLES)}


# -- issue 19: plan and streaming score ----------------------------------------------------------


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp")) if folder.exists() else []


def run_and_kill_when(command: list[str], ready, cwd: Path | None = None, timeout: float = 120) -> bool:
    """Start the command, SIGKILL it once ``ready()`` holds; False when it finished first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment(), cwd=cwd)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                assert process.returncode == 0, process.stderr.read().decode()[-2000:]
                return False
            if time.monotonic() > deadline:
                pytest.fail(f"the kill point was not reached after {timeout} s")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        return True
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


STREAMING_EXAMPLES = 30_000  # four batches of the streaming reader


def test_a_killed_streaming_score_leaves_a_temporary_the_next_run_removes(tmp_path):
    if not ENTRY_POINT.exists():
        pytest.skip(f"the tunewise entry point is not installed at {ENTRY_POINT}")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"question": f"Question {i}: " + " ".join(WORDS[: i % 9 + 1]),
                                        "answer": "\n".join(WORDS[: i % 4 + 1])}) + "\n"
                            for i in range(STREAMING_EXAMPLES)), encoding="utf-8")

    def command(output: Path, cache: Path) -> list[str]:
        return [str(ENTRY_POINT), "score", str(pool), "-o", str(output), "--model", "tiny-random",
                "--indicators", "length,cot_length", "--cache-dir", str(cache)]

    reference = tmp_path / "reference" / "scores.parquet"
    run_to_completion(command(reference, tmp_path / "reference-cache"))

    folder = tmp_path / "resumed"
    output = folder / "scores.parquet"
    resumed = command(output, tmp_path / "cache")
    # First kill: the writer has opened its temporary.
    assert run_and_kill_when(resumed, lambda: bool(temporaries(folder))), "the run finished before the kill point"
    # Second kill: the next run has written to a temporary of its own. The first run's stale
    # temporary (told apart by its inode) must not trigger it: the second run removes that one
    # first, and a kill in between would leave no temporary at all.
    stale = {(path, path.stat().st_ino) for path in temporaries(folder)}

    def written_by_the_second_run() -> bool:
        try:
            return any((path, path.stat().st_ino) not in stale and path.stat().st_size > 50_000
                       for path in temporaries(folder))
        except FileNotFoundError:  # removed between the listing and the stat
            return False

    assert run_and_kill_when(resumed, written_by_the_second_run), "the run finished before the kill point"
    assert temporaries(folder) and not output.exists()  # what the kills left: temporaries, no scores file

    run_to_completion(resumed)

    assert sorted(p.name for p in folder.iterdir()) == ["scores.parquet"]  # the stale temporaries are gone
    assert output.read_bytes() == reference.read_bytes()


PLAN_KILL_AFTER = (1, 150)  # committed examples at which the scoring of successive runs is killed


def test_killed_plans_resume_to_the_same_run_folder_with_no_stray_files(tmp_path):
    if not ENTRY_POINT.exists():
        pytest.skip(f"the tunewise entry point is not installed at {ENTRY_POINT}")

    def command() -> list[str]:
        # Relative paths, run from each folder: the run folders record them (plan.json, config.yaml)
        # and must match byte for byte.
        return [str(ENTRY_POINT), "plan", "pool.jsonl", "--task-field", "task", "--budget", "20", "-o", "runs/plan",
                "--model", "tiny-random", "--indicators", "loss,ifd,confidence,length,embedding",
                "--batch-tokens", "512", "--max-new-tokens", "4", "--device", "cpu", "--dtype", "fp32",
                "--cache-dir", "cache"]

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    for folder in (reference, resumed):
        folder.mkdir()
        write_pool(folder / "pool.jsonl")
    completed = subprocess.run(command(), capture_output=True, env=environment(), timeout=300, cwd=reference)
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]

    cache = resumed / "cache"
    run_folder = resumed / "runs" / "plan"
    for examples in PLAN_KILL_AFTER:
        assert run_and_kill_when(command(), lambda k=examples: committed_examples(cache / "scores.sqlite") >= k,
                                 cwd=resumed)
        assert not run_folder.exists()  # killed while scoring: no run folder, not even an empty one
    # Killed once the run folder starts being written (or, on a fast machine, just after it was).
    run_and_kill_when(command(), lambda: run_folder.exists(), cwd=resumed)

    completed = subprocess.run(command(), capture_output=True, env=environment(), timeout=300, cwd=resumed)
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]

    expected = reference / "runs" / "plan"
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in run_folder.iterdir()) == names  # no temporaries, nothing else
    assert ".tunewise-files.json" in names and "to_label.jsonl" in names
    for name in names:
        assert (run_folder / name).read_bytes() == (expected / name).read_bytes(), name
