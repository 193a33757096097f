"""Cached indicator scoring on the fake backend (DESIGN.md §1 "Indicators", "cache")."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewise.model import plan_batches
from tunewise.model.fake import FakeBackend
from tunewise.indicators.cache import ScoreCache
from tunewise.errors import TunewiseError
from tunewise.indicators.registry import DEFAULT_INDICATORS
from tunewise.data.pool import Example, parse_record, read_pool
from tunewise.data.table import read_scores, write_scores
from tunewise.indicators.score import score_pool

# Batches of a few examples each, so that interruption and resumption have something to cut.
SMALL_BATCH_TOKENS = 200


def make_examples(count: int = 30) -> list[Example]:
    """Labelled and unlabelled examples of varied lengths over two tasks."""
    examples = []
    for i in range(count):
        record = {"question": f"Question {i}: " + "why " * (i % 7), "task": "math" if i % 3 else "prose"}
        if i % 5 != 4:
            steps = "\n".join(f"Step {k}." for k in range(1 + i % 4))
            record["answer"] = f"{steps}\n#### {i}"
        examples.append(parse_record(record, task_field="task"))
    return examples


def fake_model_outputs(example: Example) -> dict:
    """What the fake model says about one example scored on its own (the independent reference)."""
    backend = FakeBackend()
    (encoded,) = backend.encode([example.prompt], [example.response])
    outputs = backend.score_batch([encoded], {"loss", "loss_unconditional", "confidence"})
    return {name: values[0] for name, values in outputs.items()} | {
        "length": encoded.response_length, "prompt_length": encoded.prompt_length,
    }


def cached_rows(cache_dir: Path) -> pd.DataFrame:
    with closing(sqlite3.connect(cache_dir / "scores.sqlite")) as connection:
        return pd.read_sql_query("SELECT output, example, value FROM scores", connection)


# -- values ---------------------------------------------------------------------------------------


def test_default_indicators_give_the_documented_columns(tmp_path):
    scores = score_pool(make_examples(), FakeBackend(), DEFAULT_INDICATORS, cache_dir=tmp_path)
    assert list(scores.columns) == ["id", "task", "loss", "ppl", "ifd", "confidence", "length", "prompt_length",
                                    "cot_length"]


def test_values_follow_their_definitions(tmp_path):
    examples = make_examples()
    scores = score_pool(examples, FakeBackend(), DEFAULT_INDICATORS, cache_dir=tmp_path, max_batch_tokens=300)
    for example, row in zip(examples, scores.itertuples()):
        reference = fake_model_outputs(example)
        assert row.confidence == pytest.approx(reference["confidence"], abs=1e-12)
        assert row.prompt_length == reference["prompt_length"]
        if example.response is None:
            assert all(math.isnan(value) for value in (row.loss, row.ppl, row.ifd, row.length, row.cot_length))
            continue
        assert row.loss == pytest.approx(reference["loss"], abs=1e-12)
        assert row.ppl == pytest.approx(math.exp(reference["loss"]), rel=1e-12)
        assert row.ifd == pytest.approx(math.exp(reference["loss"] - reference["loss_unconditional"]), rel=1e-12)
        assert row.length == len(example.response)  # the fake backend's tokens are characters
        # cot_length counts the "Step k." lines, leaving out the final "#### answer" line
        assert row.cot_length == example.response.count("Step ")


@pytest.mark.parametrize(("response", "steps"), [
    ("First add.\n\nThen divide.\n#### 4", 2.0),
    ("Add them. Then halve it. 6 is the answer.", 3.0),
    ("42", 1.0),
    ("#### 7", 0.0),
])
def test_cot_length_counts_lines_or_sentences(tmp_path, response, steps):
    example = parse_record({"question": "q", "answer": response})
    scores = score_pool([example], FakeBackend(), ["cot_length"], cache_dir=tmp_path)
    assert scores["cot_length"].tolist() == [steps]


def test_ppl_alias_and_repeated_names_resolve_to_one_loss(tmp_path):
    scores = score_pool(make_examples(4), FakeBackend(), ["ppl", "loss", "ppl"], cache_dir=tmp_path)
    assert list(scores.columns) == ["id", "task", "loss", "ppl"]


def test_unknown_indicator_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(TunewiseError, match="did you mean 'confidence'"):
        score_pool(make_examples(2), FakeBackend(), ["confidense"], cache_dir=tmp_path)


def test_embeddings_are_unit_vectors(tmp_path):
    scores = score_pool(make_examples(6), FakeBackend(), ["embedding"], cache_dir=tmp_path)
    matrix = np.stack(scores["embedding"].to_numpy())
    assert matrix.shape == (6, FakeBackend().embedding_dim) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)


def test_pool_order_is_kept_although_batches_are_length_sorted(tmp_path):
    examples = make_examples()
    backend = FakeBackend()
    scores = score_pool(examples, backend, ["loss", "length"], cache_dir=tmp_path, max_batch_tokens=SMALL_BATCH_TOKENS)
    assert backend.batches_run > 3
    assert scores["id"].tolist() == [e.id for e in examples]
    assert scores["task"].tolist() == [e.task for e in examples]
    expected_lengths = [np.nan if e.response is None else len(e.response) for e in examples]
    np.testing.assert_array_equal(scores["length"].to_numpy(), expected_lengths)


def test_a_pool_object_is_accepted_like_a_list(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{"question": "c"}\n', encoding="utf-8")
    pool = read_pool(path)
    pd.testing.assert_frame_equal(score_pool(pool, FakeBackend(), cache_dir=tmp_path / "c1"),
                                  score_pool(pool.examples, FakeBackend(), cache_dir=tmp_path / "c2"))


def test_scores_file_round_trips_with_provenance(tmp_path):
    scores = score_pool(make_examples(5), FakeBackend(), [*DEFAULT_INDICATORS, "embedding"], cache_dir=tmp_path)
    write_scores(scores, tmp_path / "scores.parquet", {"model_fingerprint": "fake-v1"})
    read, provenance = read_scores(tmp_path / "scores.parquet")
    assert provenance == {"model_fingerprint": "fake-v1"}
    pd.testing.assert_frame_equal(read.drop(columns="embedding"), scores.drop(columns="embedding"))
    np.testing.assert_array_equal(np.stack(read["embedding"]), np.stack(scores["embedding"]))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# -- the cache ------------------------------------------------------------------------------------


def test_a_second_run_does_no_model_work_and_gives_the_same_table(tmp_path):
    examples = make_examples()
    first = score_pool(examples, FakeBackend(), [*DEFAULT_INDICATORS, "embedding"], cache_dir=tmp_path)
    again = FakeBackend()
    second = score_pool(examples, again, [*DEFAULT_INDICATORS, "embedding"], cache_dir=tmp_path)
    assert again.batches_run == 0
    pd.testing.assert_frame_equal(first.drop(columns="embedding"), second.drop(columns="embedding"))
    np.testing.assert_array_equal(np.stack(first["embedding"]), np.stack(second["embedding"]))


def test_only_new_examples_are_scored_when_the_pool_grows(tmp_path):
    examples = make_examples(40)
    score_pool(examples[:20], FakeBackend(), ["loss"], cache_dir=tmp_path, max_batch_tokens=SMALL_BATCH_TOKENS)
    backend = FakeBackend()
    calls = []
    score_pool(examples, backend, ["loss"], cache_dir=tmp_path, max_batch_tokens=SMALL_BATCH_TOKENS,
               progress=lambda done, total: calls.append((done, total)))
    assert 0 < backend.batches_run
    assert calls[-1][0] == calls[-1][1] < len(examples)  # fewer than the whole pool went through the model


def test_cache_is_keyed_by_model_fingerprint_and_generation_length(tmp_path):
    examples = make_examples(6)
    score_pool(examples, FakeBackend(), ["loss", "confidence"], cache_dir=tmp_path)
    other_model = FakeBackend(fingerprint="fake-v2")
    score_pool(examples, other_model, ["loss"], cache_dir=tmp_path)
    assert other_model.batches_run > 0
    longer_answers = FakeBackend(max_new_tokens=16)
    score_pool(examples, longer_answers, ["confidence"], cache_dir=tmp_path)
    assert longer_answers.batches_run > 0
    same_again = FakeBackend()
    score_pool(examples, same_again, ["loss", "confidence"], cache_dir=tmp_path)
    assert same_again.batches_run == 0


def test_progress_reports_every_batch_up_to_the_total(tmp_path):
    calls = []
    score_pool(make_examples(), FakeBackend(), ["loss"], cache_dir=tmp_path, max_batch_tokens=SMALL_BATCH_TOKENS,
               progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 3
    assert [total for _, total in calls] == [30] * len(calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1] == (30, 30)


class FailingBackend(FakeBackend):
    """The fake model, crashing on the batch after ``fail_after`` successful ones."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    def score_batch(self, batch, wanted):
        if self.batches_run >= self.fail_after:
            raise RuntimeError("simulated crash")
        return super().score_batch(batch, wanted)


@pytest.mark.parametrize("fail_after", [0, 1, 4])
def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, fail_after):
    examples = make_examples()
    indicators = [*DEFAULT_INDICATORS, "embedding"]
    reference_backend = FakeBackend()
    reference = score_pool(examples, reference_backend, indicators, cache_dir=tmp_path / "reference",
                           max_batch_tokens=SMALL_BATCH_TOKENS)
    total_batches = reference_backend.batches_run

    cache = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        score_pool(examples, FailingBackend(fail_after), indicators, cache_dir=cache,
                   max_batch_tokens=SMALL_BATCH_TOKENS)
    scored_before_crash = cached_rows(cache).query("output == 'loss'")["example"].nunique()
    assert (scored_before_crash > 0) == (fail_after > 0)

    resumed_backend = FakeBackend()
    resumed = score_pool(examples, resumed_backend, indicators, cache_dir=cache, max_batch_tokens=SMALL_BATCH_TOKENS)
    assert resumed_backend.batches_run == total_batches - fail_after

    pd.testing.assert_frame_equal(resumed.drop(columns="embedding"), reference.drop(columns="embedding"))
    np.testing.assert_array_equal(np.stack(resumed["embedding"]), np.stack(reference["embedding"]))
    rows = cached_rows(cache)
    per_output = rows.groupby("output")["example"].agg(["count", "nunique"])
    assert (per_output["count"] == len(examples)).all() and (per_output["nunique"] == len(examples)).all()


# -- two processes sharing one cache --------------------------------------------------------------


class SlowFakeBackend(FakeBackend):
    """The fake model with a pause per batch, so that two processes' batches interleave."""

    def score_batch(self, batch, wanted):
        import time

        time.sleep(0.01)
        return super().score_batch(batch, wanted)


def score_in_child(pool_path: str, cache_dir: str, output: str, barrier) -> None:
    pool = read_pool(pool_path, task_field="task")
    barrier.wait(timeout=60)
    scores = score_pool(pool, SlowFakeBackend(), [*DEFAULT_INDICATORS, "embedding"], cache_dir=cache_dir,
                        max_batch_tokens=SMALL_BATCH_TOKENS)
    write_scores(scores, output, {})


def test_two_processes_sharing_a_cache_folder_both_finish_with_identical_tables(tmp_path):
    import json

    examples = make_examples(120)
    pool_path = tmp_path / "pool.jsonl"
    pool_path.write_text("".join(
        json.dumps({"messages": e.messages, "task": e.task}) + "\n" for e in examples), encoding="utf-8")
    cache = tmp_path / "shared-cache"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    outputs = [tmp_path / f"scores-{i}.parquet" for i in range(2)]
    workers = [context.Process(target=score_in_child, args=(str(pool_path), str(cache), str(out), barrier))
               for out in outputs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]

    first, second = (read_scores(out)[0] for out in outputs)
    pd.testing.assert_frame_equal(first.drop(columns="embedding"), second.drop(columns="embedding"))
    reference = score_pool(read_pool(pool_path, task_field="task"), FakeBackend(), DEFAULT_INDICATORS,
                           cache_dir=tmp_path / "alone", max_batch_tokens=SMALL_BATCH_TOKENS)
    pd.testing.assert_frame_equal(first.drop(columns="embedding"), reference)

    with closing(sqlite3.connect(cache / "scores.sqlite")) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    per_output = cached_rows(cache).groupby("output")["example"].agg(["count", "nunique"])
    assert (per_output["count"] == len(examples)).all() and (per_output["nunique"] == len(examples)).all()


def open_cache_and_write(folder: str, barrier) -> None:
    barrier.wait(timeout=60)
    with ScoreCache(folder) as cache:
        cache.put("model", "loss", 1, [("example", 1.0)])


def test_processes_creating_one_new_cache_at_the_same_moment_all_succeed(tmp_path):
    # Switching a fresh database to WAL from several processes at once used to fail at once with
    # "database is locked" in some of them (SQLite skips the busy handler there).
    context = multiprocessing.get_context("spawn")
    for trial in range(2):
        barrier = context.Barrier(6)
        workers = [context.Process(target=open_cache_and_write, args=(str(tmp_path / f"cache-{trial}"), barrier))
                   for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [worker.exitcode for worker in workers] == [0] * 6


# -- batch planning -------------------------------------------------------------------------------

lengths_lists = st.lists(st.integers(0, 600), max_size=80)


@settings(max_examples=300, deadline=None)
@given(lengths=lengths_lists, budget=st.integers(1, 3000), max_rows=st.integers(1, 40))
def test_plan_batches_covers_every_position_once_within_the_budget(lengths, budget, max_rows):
    batches = plan_batches(lengths, budget, max_rows)
    flat = [position for batch in batches for position in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        padded_tokens = len(batch) * max(max(1, lengths[p]) for p in batch)
        assert padded_tokens <= budget or len(batch) == 1  # only a single oversize row may exceed it


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_lists, budget=st.integers(1, 3000))
def test_plan_batches_sorts_longest_first_and_is_deterministic(lengths, budget):
    batches = plan_batches(lengths, budget)
    flat = [position for batch in batches for position in batch]
    assert flat == sorted(range(len(lengths)), key=lambda p: -lengths[p])  # stable: ties keep pool order
    assert plan_batches(list(lengths), budget) == batches


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=60), budget=st.integers(50, 3000))
def test_plan_batches_does_not_split_batches_that_fit(lengths, budget):
    """Greedy packing: a batch is closed only because the next row would break the budget or size."""
    batches = plan_batches(lengths, budget, max_batch_size=256)
    for batch, following in zip(batches, batches[1:]):
        grown = batch + following[:1]
        assert len(grown) * max(lengths[p] for p in grown) > budget
