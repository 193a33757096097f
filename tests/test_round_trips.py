"""Outputs that plug in, and come back (issue 16): plan → export → read back gives the same ids and
prompt tokens; to_label → filled in (tunewise, Label Studio, Argilla) → read back as a labelled pool."""

from __future__ import annotations

import json

import pytest

import tunewise as tw
from tunewise.data.export import export_examples
from tunewise.data.label import to_label_records
from tunewise.data.pool import Columns, read_pool
from tunewise.model.fake import FakeBackend

RECORDS = [
    {"uid": f"u{i}", "instruction": f"Add {i} and 1.", "output": str(i + 1), "task": "add" if i % 2 else "sum",
     "system": "Be exact.", "history": [["Hi", "Hello"]] if i % 3 == 0 else [], "source": f"web {i}"}
    for i in range(8)
]


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return read_pool(path, "task", columns=Columns(id_field="uid"))


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "alpaca"])
def test_export_reads_back_with_the_same_ids_prompts_and_answers(tmp_path, pool, fmt):
    path = tmp_path / ("train.json" if fmt == "alpaca" else "train.jsonl")
    path.write_bytes(export_examples(pool.examples, fmt))
    back = read_pool(path, "task", columns=Columns(id_field="id"))
    assert [e.user_id for e in back.examples] == [f"u{i}" for i in range(8)]
    assert [e.prompt for e in back.examples] == [e.prompt for e in pool.examples]
    assert [e.response for e in back.examples] == [e.response for e in pool.examples]
    assert [e.metadata["source"] for e in back.examples] == [f"web {i}" for i in range(8)]


def test_plan_export_writes_training_data_and_llamafactory_entry(tmp_path, pool):
    result = tw.plan(pool, FakeBackend(), tw.PlanConfig(budget=4, export="messages", coslow=False), tmp_path / "run")
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "train.messages.jsonl").read_text().splitlines()]
    picked = [pool.examples[p] for p in result.selection.positions]
    assert [line["id"] for line in lines] == [e.user_id for e in picked]
    info = json.loads((run / "dataset_info.json").read_text())
    assert info["tunewise_plan"]["file_name"] == "train.messages.jsonl"
    selection = [json.loads(line) for line in (run / "selection.jsonl").read_text().splitlines()]
    assert [row["user_id"] for row in selection] == [e.user_id for e in picked]


@pytest.mark.parametrize("fmt", ["tunewise", "label-studio", "argilla"])
def test_to_label_filled_in_reads_back_as_a_labelled_pool(tmp_path, pool, fmt):
    unlabelled = [e.__class__(e.id, e.task, e.prompt, None, e.metadata, e.user_id) for e in pool.examples]
    records = to_label_records(unlabelled, fmt)
    for record, example in zip(records, pool.examples):  # a person types the answers
        if fmt == "tunewise":
            record["response"] = example.response
        elif fmt == "label-studio":
            record["annotations"] = [{"result": [{"from_name": "response", "to_name": "prompt", "type": "textarea",
                                                  "value": {"text": [example.response]}}]}]
        else:
            record["responses"] = {"response": [{"value": example.response, "status": "submitted"}]}
    path = tmp_path / "filled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    back = read_pool(path, "task", columns=Columns(id_field="id"))
    assert back.labelled
    assert [e.user_id for e in back.examples] == [f"u{i}" for i in range(8)]
    assert [e.prompt for e in back.examples] == [e.prompt for e in pool.examples]
    assert [e.response for e in back.examples] == [e.response for e in pool.examples]
    assert [e.id for e in back.examples] == [e.id for e in pool.examples]  # the content ids match the pool's
    assert back.unused_fields == {"source": 8}


@pytest.mark.integration
def test_plan_config_yaml_reproduces_the_run(tmp_path):
    from typer.testing import CliRunner

    import tunewise.cli
    from tunewise.cli.app import app

    tunewise.cli._register_commands()
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = tmp_path / "run.yaml"
    config.write_text(f"pool_path: {path}\nbudget: 4\ntask_field: task\nmodel: tiny-random\nno_coslow: true\n")
    bad = CliRunner().invoke(app, ["plan", "--config", str(config), "-o", str(tmp_path / "a")])
    assert bad.exit_code == 2 and "'no_coslow' is not a flag" in bad.output
    config.write_text("budget: 4\ntask_field: task\nmodel: tiny-random\ncoslow: false\nseed: 3\n")
    first = CliRunner().invoke(app, ["plan", str(path), "--config", str(config), "-o", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["plan", str(path), "--config", str(tmp_path / "a" / "config.yaml"),
                                     "-o", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a" / "selection.jsonl").read_bytes() == (tmp_path / "b" / "selection.jsonl").read_bytes()
    assert "seed: 3" in (tmp_path / "b" / "config.yaml").read_text()


def test_sweep_takes_its_flags_from_a_yaml_config(tmp_path):
    from typer.testing import CliRunner

    import tunewise.cli
    from tunewise.cli.app import app

    tunewise.cli._register_commands()
    config = tmp_path / "sweep.yaml"
    config.write_text("budgets: [4, 8]\nseeds: [0]\nbudgetz: 3\n")
    result = CliRunner().invoke(app, ["sweep", "pool.jsonl", "--test", "t.jsonl", "-o", str(tmp_path / "s"),
                                      "--config", str(config)])
    assert result.exit_code == 2 and "'budgetz' is not a flag" in result.output and "did you mean 'budgets'" in result.output


def test_user_fields_of_any_parquet_type_are_written_as_json(tmp_path):
    """A Parquet pool's dates, decimals, binaries and lists survive into the manifest, the
    to-label file and the export as JSON values (they used to stop the run with a TypeError)."""
    import datetime
    import decimal

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunewise.data.export import user_fields
    from tunewise.data.pool import Example

    table = pa.table({
        "prompt": [f"Add {i} and 1." for i in range(4)], "response": ["1", None, "3", None],
        "when": [datetime.datetime(2020, 1, i + 1, 12, 30) for i in range(4)],
        "price": pa.array([decimal.Decimal(f"{i}.10") for i in range(4)], pa.decimal128(5, 2)),
        "raw": [b"ok", b"\xff\x00", b"ok", b"ok"], "tags": [[i, i + 1] for i in range(4)],
    })
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path)
    pool = read_pool(path)
    tw.plan(pool, FakeBackend(), tw.PlanConfig(budget=4, strategy="random", coslow=False, export="messages"),
            tmp_path / "run")
    expected = {f"Add {i} and 1.": {"when": f"2020-01-0{i + 1}T12:30:00", "price": f"{i}.10",
                                    "raw": "ok" if i != 1 else "/wA=", "tags": [i, i + 1]} for i in range(4)}
    run = tmp_path / "run"
    prompts = {e.id: e.prompt[0]["content"] for e in pool.examples}
    assert [len((run / name).read_text().splitlines()) for name in
            ("selection.jsonl", "to_label.jsonl", "train.messages.jsonl")] == [4, 2, 2]
    for row in map(json.loads, (run / "selection.jsonl").read_text().splitlines()):
        assert row["fields"] == expected[prompts[row["id"]]]
    for row in map(json.loads, (run / "to_label.jsonl").read_text().splitlines()):
        assert {key: row[key] for key in ("when", "price", "raw", "tags")} == expected[row["prompt"]]
    for row in map(json.loads, (run / "train.messages.jsonl").read_text().splitlines()):
        assert {key: row[key] for key in ("when", "price", "raw", "tags")} == expected[row["messages"][0]["content"]]
    odd = Example("x", "t", ({"role": "user", "content": "q"},), "a",
                  {"n": float("nan"), "v": np.float32(0.5), "m": np.arange(2), "d": datetime.date(2021, 5, 6)})
    assert user_fields(odd) == {"n": None, "v": 0.5, "m": [0, 1], "d": "2021-05-06"}


def test_a_records_own_id_field_is_the_exports_id_without_the_id_flag(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"id": f"row-{i}", "prompt": f"q{i}", "response": f"a{i}"}) + "\n"
                            for i in range(3)) + json.dumps({"id": " ", "prompt": "q3", "response": "a3"}) + "\n")
    pool = read_pool(path)
    records = [json.loads(line) for line in export_examples(pool.examples, "messages").decode().splitlines()]
    assert [r["id"] for r in records] == ["row-0", "row-1", "row-2", pool.examples[3].id]
    assert [r["tunewise_id"] for r in records] == [e.id for e in pool.examples]
