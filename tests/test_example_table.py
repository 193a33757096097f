"""The example table: examples and their scores travel together (issue 12)."""

from __future__ import annotations

import pytest

import tunewise as tw
from tunewise.data.pool import Pool, parse_record
from tunewise.model.fake import FakeBackend


def pool():
    records = [{"question": f"q{i}", "answer": f"a{i}", "task": "even" if i % 2 == 0 else "odd"} for i in range(6)]
    return Pool("pool.jsonl", [parse_record(r, task_field="task") for r in records])


def test_score_returns_a_new_table_with_examples_and_columns(tmp_path):
    source = pool()
    table = tw.score(source, FakeBackend(), ["loss", "length"], cache_dir=tmp_path)
    assert isinstance(table, tw.ExampleTable)
    assert [e.id for e in table.examples] == [e.id for e in source.examples]
    assert {"id", "task", "loss", "ppl", "length", "prompt_length"} <= set(table.columns)


def test_take_keeps_rows_and_examples_together(tmp_path):
    table = tw.score(pool(), FakeBackend(), ["loss"], cache_dir=tmp_path)
    picked = table.take([4, 1])
    assert [e.id for e in picked.examples] == picked.scores["id"].tolist()
    assert picked.scores["loss"].tolist() == table.scores["loss"].iloc[[4, 1]].tolist()
    assert len(table) == 6  # the original is untouched


def test_join_by_id_and_a_clear_error_for_foreign_scores(tmp_path):
    table = tw.score(pool(), FakeBackend(), ["loss"], cache_dir=tmp_path)
    shuffled = table.scores.iloc[::-1]
    joined = tw.ExampleTable.join(pool(), shuffled)
    assert [e.id for e in joined.examples] == shuffled["id"].tolist()
    other = Pool("other.jsonl", [parse_record({"question": "x", "answer": "y"})])
    with pytest.raises(tw.TunewiseError, match="6 scored ids are not in the pool"):
        tw.ExampleTable.join(other, shuffled)
    with pytest.raises(tw.TunewiseError, match="do not belong"):
        tw.ExampleTable(table.examples, shuffled)


def test_a_selector_picks_the_same_rows_of_a_table_as_of_its_scores_frame(tmp_path):
    from tunewise.select import get_strategy

    table = tw.score(pool(), FakeBackend(), ["loss", "confidence"], cache_dir=tmp_path)
    strategy = get_strategy("weighted_task_diversity", within="random")
    assert (strategy.select(table, 4, seed=1).positions.tolist()
            == strategy.select(table.scores, 4, seed=1).positions.tolist())


def test_the_manifest_of_a_table_keeps_the_users_own_ids(tmp_path):
    from tunewise.data.pool import Columns
    from tunewise.select import get_strategy
    from tunewise.select.manifest import selection_records

    records = [{"question": f"q{i}", "answer": f"a{i}", "ref": f"mine-{i}"} for i in range(4)]
    source = Pool("pool.jsonl", [parse_record(r, columns=Columns(id_field="ref")) for r in records])
    table = tw.score(source, FakeBackend(), ["loss"], cache_dir=tmp_path)
    selection = get_strategy("top_k", indicator="loss").select(table, 2)
    rows = selection_records(table, selection)
    assert [row["user_id"] for row in rows] == [f"mine-{p}" for p in selection.positions]
    assert all("user_id" not in row for row in selection_records(table.scores, selection))
