"""Streaming pools (DESIGN.md §6): batch by batch, the same examples, errors and scores file as the
in-memory path."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tunewise.model import load_backend
from tunewise.model.fake import FakeBackend
from tunewise.cli import _register_commands, app
from tunewise.errors import TunewiseError
from tunewise.data.pool import read_pool
from tunewise.data.table import read_scores, write_scores
from tunewise.indicators.score import score_pool, scores_provenance
from tunewise.indicators.streaming import iter_pool_batches, score_pool_streaming, streamable

_register_commands()

MODEL_FREE = ["cot_length", "length"]


def write_pool(path: Path, count: int = 40, extra_lines: dict[int, str] | None = None) -> Path:
    """``count`` records over three tasks, some unlabelled; ``extra_lines`` are inserted at positions."""
    lines = []
    for i in range(count):
        record = {"question": f"Question {i}: " + "how " * (i % 5), "task": f"task{i % 3}"}
        if i % 7 != 6:
            record["answer"] = "\n".join(f"Step {k}." for k in range(1 + i % 4)) + f"\n#### {i}"
        lines.append(json.dumps(record))
    for position, line in sorted((extra_lines or {}).items()):
        lines.insert(position, line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def in_memory_scores_file(pool: Path, backend, output: Path, cache_dir: Path) -> Path:
    examples = read_pool(pool, "task")
    scores = score_pool(examples, backend, MODEL_FREE, cache_dir=cache_dir)
    write_scores(scores, output, scores_provenance(backend, MODEL_FREE, str(pool)))
    return output


def assert_same_scores_file(streamed: Path, in_memory: Path) -> None:
    streamed_table, in_memory_table = pq.read_table(streamed), pq.read_table(in_memory)
    assert streamed_table.schema.equals(in_memory_table.schema, check_metadata=True)
    # pandas compares NaN (an unlabelled example's cot_length) as equal; Arrow's equals does not.
    assert streamed_table.to_pandas().equals(in_memory_table.to_pandas())
    streamed_frame, streamed_provenance = read_scores(streamed)
    in_memory_frame, in_memory_provenance = read_scores(in_memory)
    assert streamed_provenance == in_memory_provenance
    assert streamed_frame.equals(in_memory_frame)


def test_only_model_free_indicators_stream():
    assert streamable(["cot_length", "length"])
    assert not streamable(["length", "loss"])
    assert not streamable(["embedding"])


def test_streamed_scores_file_equals_the_in_memory_one(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    backend = FakeBackend()
    in_memory = in_memory_scores_file(pool, backend, tmp_path / "in_memory.parquet", tmp_path / "cache_a")

    streamed = tmp_path / "streamed.parquet"
    reported = []
    rows = score_pool_streaming(iter_pool_batches(pool, "task", batch_size=7), backend, MODEL_FREE, streamed,
                                scores_provenance(backend, MODEL_FREE, str(pool)), cache_dir=tmp_path / "cache_b",
                                progress=lambda done, total: reported.append(done))

    assert rows == 40
    assert reported == [7, 14, 21, 28, 35, 40]
    assert pq.ParquetFile(streamed).num_row_groups == 6
    assert_same_scores_file(streamed, in_memory)


def test_batches_accept_skip_and_refuse_records_as_read_pool_does(tmp_path):
    duplicate_of_line_2 = json.dumps({"question": "Question 1: how ", "task": "task1",
                                      "answer": "Step 0.\nStep 1.\n#### 1"})
    pool = write_pool(tmp_path / "pool.jsonl", extra_lines={5: "{not json", 30: duplicate_of_line_2})

    in_memory = read_pool(pool, "task", skip_bad=True)
    skipped, duplicates = [], []
    batches = list(iter_pool_batches(pool, "task", batch_size=4, skip_bad=True, on_skipped=skipped.append,
                                     on_duplicate=lambda line, kept: duplicates.append((line, kept))))
    assert [e for batch in batches for e in batch] == in_memory.examples
    assert all(len(batch) == 4 for batch in batches[:-1])
    assert skipped == in_memory.skipped
    assert [s.line for s in skipped] == [6]
    # the repeat is met in a later batch than its original, and merged the same way
    assert duplicates == in_memory.duplicates == [(31, 2)]

    for limit in (1, 9):
        limited = [e for batch in iter_pool_batches(pool, "task", batch_size=4, skip_bad=True, limit=limit)
                   for e in batch]
        assert limited == read_pool(pool, "task", skip_bad=True, limit=limit).examples

    assert_same_error(lambda: read_pool(pool, "task"), lambda: iter_pool_batches(pool, "task", batch_size=4))


def assert_same_error(read_whole, read_in_batches) -> None:
    with pytest.raises(TunewiseError) as expected:
        read_whole()
    with pytest.raises(TunewiseError) as streamed:
        list(read_in_batches())
    assert str(streamed.value) == str(expected.value)


def test_pool_wide_checks_match_read_pool(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", count=5)
    assert_same_error(lambda: read_pool(pool, "tsak", skip_bad=True),
                      lambda: iter_pool_batches(pool, "tsak", skip_bad=True))
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("{broken\n[1, 2]\n", encoding="utf-8")
    assert_same_error(lambda: read_pool(only_bad, skip_bad=True),
                      lambda: iter_pool_batches(only_bad, skip_bad=True))


def test_an_unreadable_file_is_reported_before_any_batch_is_asked_for(tmp_path):
    with pytest.raises(TunewiseError, match="no such file"):
        iter_pool_batches(tmp_path / "absent.jsonl")


def test_a_failure_midway_leaves_no_scores_file(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", extra_lines={25: "{not json"})
    output = tmp_path / "scores.parquet"
    backend = FakeBackend()
    with pytest.raises(TunewiseError, match="malformed JSON"):
        score_pool_streaming(iter_pool_batches(pool, "task", batch_size=4), backend, MODEL_FREE, output,
                             scores_provenance(backend, MODEL_FREE, str(pool)), cache_dir=tmp_path / "cache")
    assert list(tmp_path.glob("*.parquet")) == []
    assert list(tmp_path.glob(".*.tmp")) == []


def test_model_indicators_are_refused(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", count=3)
    with pytest.raises(TunewiseError, match="loss"):
        score_pool_streaming(iter_pool_batches(pool), FakeBackend(), ["loss", "length"], tmp_path / "s.parquet", {})


@pytest.mark.integration
def test_the_cli_streams_model_free_indicators_to_the_in_memory_result(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", count=30)
    output = tmp_path / "streamed.parquet"
    result = CliRunner().invoke(app, ["score", str(pool), "-o", str(output), "--model", "tiny-random",
                                      "--task-field", "task", "--indicators", "cot_length,length",
                                      "--cache-dir", str(tmp_path / "cache_cli")])
    assert result.exit_code == 0, result.output
    assert "30 examples scored" in result.output

    backend = load_backend("tiny-random")
    in_memory = in_memory_scores_file(pool, backend, tmp_path / "in_memory.parquet", tmp_path / "cache_lib")
    assert_same_scores_file(output, in_memory)
