"""Streaming pools (DESIGN.md §6): chunk by chunk, the same examples, errors and scores file as the
in-memory path, for every indicator; resumable after a crash; bounded in what it holds."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tunewise.model import load_backend
from tunewise.model.fake import FakeBackend
from tunewise.cli import _register_commands, app
from tunewise.errors import TunewiseError
from tunewise.data.pool import Example, read_pool
from tunewise.data.table import read_scores, write_scores
from tunewise.indicators.cache import ScoreCache
from tunewise.indicators.registry import INDICATORS, OUTPUT_VERSIONS
from tunewise.indicators.score import score, score_pool, scores_provenance
from tunewise.indicators.streaming import iter_pool_batches, parts_folder, score_file, score_pool_streaming

_register_commands()

MODEL_FREE = ["cot_length", "length"]
EVERY_INDICATOR = list(INDICATORS)


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


def in_memory_scores_file(pool: Path, backend, output: Path, cache_dir: Path, indicators=MODEL_FREE,
                          **options) -> Path:
    examples = read_pool(pool, "task")
    scores = score_pool(examples, backend, indicators, cache_dir=cache_dir, **options)
    write_scores(scores, output, scores_provenance(backend, indicators, str(pool)))
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


class RecordingBackend(FakeBackend):
    """The fake model, noting the ids it scores and the most examples alive while it works, and
    failing at its ``fail_at``-th batch (a crash mid-way)."""

    def __init__(self, fail_at: int | None = None, source: str | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.source = source
        self.scored: list[bytes] = []
        self.most_alive = 0

    def score_batch(self, batch, wanted):
        if self.fail_at is not None and self.batches_run + 1 == self.fail_at:
            raise RuntimeError("killed")
        self.scored.extend(example.prompt_ids for example in batch)
        self.most_alive = max(self.most_alive, examples_alive(self.source))
        return super().score_batch(batch, wanted)


def examples_alive(source: str | None = None) -> int:
    """Live :class:`Example` objects, only those read from ``source`` when given: other tests in
    the same process may keep examples of their own alive (fixtures, caches)."""
    gc.collect()
    return sum(1 for thing in gc.get_objects() if isinstance(thing, Example)
               and (source is None or (thing.location or ("",))[0] == source))


def test_every_indicator_streams_to_the_in_memory_scores(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    backend = FakeBackend()
    in_memory = in_memory_scores_file(pool, backend, tmp_path / "in_memory.parquet", tmp_path / "cache_a",
                                      EVERY_INDICATOR, window=7)
    streamed = tmp_path / "streamed.parquet"
    rows = score_pool_streaming(iter_pool_batches(pool, "task", batch_size=7), backend, EVERY_INDICATOR, streamed,
                                scores_provenance(backend, EVERY_INDICATOR, str(pool)),
                                cache_dir=tmp_path / "cache_b", window=7)
    assert rows == 40
    assert pq.ParquetFile(streamed).num_row_groups == 6
    assert_same_scores_file(streamed, in_memory)
    assert not parts_folder(streamed).exists()


def test_score_file_gives_the_table_of_score(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    backend = FakeBackend()
    output = tmp_path / "scores.parquet"
    assert score_file(pool, backend, output, ["loss", "confidence", "embedding"], task_field="task",
                      cache_dir=tmp_path / "cache_a", chunk_size=9) == 40
    expected = score(read_pool(pool, "task"), backend, ["loss", "confidence", "embedding"],
                     cache_dir=tmp_path / "cache_b").scores
    streamed, provenance = read_scores(output)
    assert provenance["pool"] == str(pool)
    assert streamed.drop(columns="embedding").equals(expected.drop(columns="embedding"))
    assert all((a == b).all() for a, b in zip(streamed["embedding"], expected["embedding"]))


def test_a_crash_midway_resumes_after_the_last_finished_chunk(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    output = tmp_path / "scores.parquet"
    provenance = scores_provenance(FakeBackend(), EVERY_INDICATOR, str(pool))
    crashing = RecordingBackend(fail_at=4)  # the fake model runs one batch per chunk of 5 here
    with pytest.raises(RuntimeError, match="killed"):
        score_pool_streaming(iter_pool_batches(pool, "task", batch_size=5), crashing, EVERY_INDICATOR, output,
                             provenance, cache_dir=tmp_path / "cache_a")
    assert not output.exists()
    assert sorted(p.name for p in parts_folder(output).iterdir()) == ["000000.parquet", "000001.parquet",
                                                                      "000002.parquet"]

    # A fresh cache: whatever the resumed run does not score must come from the kept parts.
    resumed = RecordingBackend()
    rows = score_pool_streaming(iter_pool_batches(pool, "task", batch_size=5), resumed, EVERY_INDICATOR, output,
                                provenance, cache_dir=tmp_path / "cache_b")
    assert rows == 40
    examples = read_pool(pool, "task").examples
    encoded = resumed.encode([e.prompt for e in examples], [e.response for e in examples])
    assert sorted(resumed.scored) == sorted(e.prompt_ids for e in encoded[15:])
    assert not parts_folder(output).exists()
    uninterrupted = in_memory_scores_file(pool, FakeBackend(), tmp_path / "whole.parquet", tmp_path / "cache_c",
                                          EVERY_INDICATOR)
    assert_same_scores_file(output, uninterrupted)


def test_kept_parts_of_other_settings_are_scored_again(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", count=10)
    output = tmp_path / "scores.parquet"
    with pytest.raises(RuntimeError, match="killed"):
        score_pool_streaming(iter_pool_batches(pool, "task", batch_size=5), RecordingBackend(fail_at=2), ["loss"],
                             output, scores_provenance(FakeBackend(), ["loss"], str(pool)), cache_dir=tmp_path / "a")
    # The kept first chunk has loss only: a run asking for confidence too cannot use it.
    again = RecordingBackend()
    score_pool_streaming(iter_pool_batches(pool, "task", batch_size=5), again, ["loss", "confidence"], output,
                         scores_provenance(again, ["loss", "confidence"], str(pool)), cache_dir=tmp_path / "b")
    assert len(again.scored) == 10
    assert {"loss", "confidence"} <= set(read_scores(output)[0].columns)


def test_streaming_holds_at_most_one_chunk_of_examples(tmp_path):
    pool = tmp_path / "generated.jsonl"
    with pool.open("w") as handle:
        for i in range(300):
            handle.write(json.dumps({"prompt": f"generated prompt {i} " + "word " * (i % 13),
                                     "response": f"answer {i}", "task": f"t{i % 4}"}) + "\n")
    chunk_size = 16
    held = []

    def watched(chunks):
        for chunk in chunks:
            held.append(examples_alive(str(pool)))
            yield chunk

    backend = RecordingBackend(source=str(pool))
    rows = score_pool_streaming(watched(iter_pool_batches(pool, "task", batch_size=chunk_size)), backend,
                                EVERY_INDICATOR, tmp_path / "scores.parquet",
                                scores_provenance(backend, EVERY_INDICATOR, str(pool)), cache_dir=tmp_path / "cache")
    assert rows == 300 and len(held) == 19
    assert max(held) == chunk_size  # each chunk as it arrives, the one before already released
    assert 0 < backend.most_alive <= chunk_size  # and while the model works on it


@pytest.mark.integration
def test_streamed_tiny_model_scores_equal_the_in_memory_ones(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", count=30)
    backend = load_backend("tiny-random", dtype="fp32")
    in_memory = in_memory_scores_file(pool, backend, tmp_path / "in_memory.parquet", tmp_path / "cache_a",
                                      EVERY_INDICATOR, window=8, max_batch_tokens=256)
    streamed = tmp_path / "streamed.parquet"
    score_pool_streaming(iter_pool_batches(pool, "task", batch_size=8), backend, EVERY_INDICATOR, streamed,
                         scores_provenance(backend, EVERY_INDICATOR, str(pool)), cache_dir=tmp_path / "cache_b",
                         window=8, max_batch_tokens=256)
    assert pq.ParquetFile(streamed).num_row_groups == 4
    assert_same_scores_file(streamed, in_memory)


@pytest.mark.integration
def test_the_cli_streams_model_indicators_to_the_in_memory_result(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", count=30)
    output = tmp_path / "streamed.parquet"
    indicators = "loss,ifd,confidence,length,cot_length,embedding"
    result = CliRunner().invoke(app, ["score", str(pool), "-o", str(output), "--model", "tiny-random",
                                      "--dtype", "fp32", "--task-field", "task", "--indicators", indicators,
                                      "--cache-dir", str(tmp_path / "cache_cli")])
    assert result.exit_code == 0, result.output
    assert "30 examples scored" in result.output

    backend = load_backend("tiny-random", dtype="fp32")
    in_memory = in_memory_scores_file(pool, backend, tmp_path / "in_memory.parquet", tmp_path / "cache_lib",
                                      indicators.split(","))
    assert_same_scores_file(output, in_memory)


def test_the_cli_leaves_nothing_after_a_refused_record_and_the_fixed_pool_scores_from_the_cache(tmp_path):
    records = [json.dumps({"question": f"Question {i}?", "answer": f"Answer {i}.", "task": f"t{i % 2}",
                           "source": "forum"}) for i in range(10)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join([*records, records[3], "{not json"]) + "\n", encoding="utf-8")
    output = tmp_path / "out" / "scores.parquet"
    cache = tmp_path / "cache"
    command = ["score", str(pool), "-o", str(output), "--model", "fake", "--task-field", "task",
               "--indicators", "loss,confidence,embedding", "--chunk-size", "4", "--cache-dir", str(cache)]

    failed = CliRunner().invoke(app, command)
    assert failed.exit_code == 2 and "pool.jsonl:12: malformed JSON" in failed.output
    assert not output.parent.exists()  # neither the output nor the two finished chunks, nor the folder
    with ScoreCache(cache) as kept:  # their values are cached
        assert len(kept.get("fake-v1", "loss", OUTPUT_VERSIONS["loss"],
                            [e.id for e in read_pool(pool, "task", skip_bad=True).examples])) == 8

    pool.write_text("\n".join([*records, records[3]]) + "\n", encoding="utf-8")
    finished = CliRunner().invoke(app, command)
    assert finished.exit_code == 0, finished.output
    assert "line 11 repeats line 4" in finished.output
    assert "the text field 'source' of 10 records" in finished.output
    assert "10 examples scored" in finished.output
    assert pq.ParquetFile(output).num_row_groups == 3
    assert not parts_folder(output).exists()
