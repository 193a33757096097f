"""``tunewise score`` end to end through the Typer app (tiny-random model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import _register_commands, app
from tunewise.indicators.registry import DEFAULT_INDICATORS
from tunewise.data.pool import example_id
from tunewise.data.table import read_scores

_register_commands()

POOL = [
    {"question": "What is 2 + 2?", "answer": "2 + 2 = 4.\n#### 4", "task": "math"},
    {"question": "Name a primary colour.", "answer": "Red.", "task": "trivia"},
    {"question": "What is 3 * 5?", "answer": "3 * 5 = 15.\n#### 15", "task": "math"},
    {"question": "Capital of Italy?", "answer": "Rome.", "task": "trivia"},
    {"question": "Is 7 prime?", "task": "math"},
]


def write_pool(path: Path, records=POOL, extra_lines=()) -> Path:
    lines = [json.dumps(record) for record in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_score(*args: str):
    return CliRunner().invoke(app, ["score", *map(str, args)])


def assert_user_error(result, output_file: Path, *fragments: str) -> None:
    """Exit code 2, the fragments in the message, no traceback, and nothing written."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"
    assert not output_file.exists()
    assert [p.name for p in output_file.parent.glob("*.tmp")] == []


@pytest.mark.integration
def test_score_writes_the_scores_and_prints_a_summary_per_task(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    output = tmp_path / "out" / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", "tiny-random", "--task-field", "task", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    scores, provenance = read_scores(output)
    assert scores["id"].tolist() == [example_id([{"role": "user", "content": r["question"]}], r.get("answer"))
                                     for r in POOL]
    assert scores["task"].tolist() == [r["task"] for r in POOL]
    assert {"loss", "ppl", "ifd", "confidence", "length", "prompt_length", "cot_length"} <= set(scores.columns)
    assert scores["loss"].isna().tolist() == [False, False, False, False, True]
    assert scores["confidence"].notna().all()
    assert provenance["model_fingerprint"].startswith("tiny-random")
    assert set(provenance["indicators"]) == set(DEFAULT_INDICATORS)
    assert provenance["pool"] == str(pool)
    assert "Scores per task" in result.output
    assert "math" in result.output and "trivia" in result.output
    assert "5 examples scored" in result.output
    assert sorted(p.name for p in output.parent.iterdir()) == ["scores.parquet"]


@pytest.mark.integration
def test_limit_and_skip_bad_list_the_skipped_lines_and_score_the_rest(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", POOL[:2], ['{"question": "broken', '{"title": "unknown shape"}',
                                                          json.dumps(POOL[2])])
    output = tmp_path / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", "tiny-random", "--indicators", "loss,length", "--skip-bad",
                       "--limit", "3", "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    assert f"skipped {pool}:3: malformed JSON" in result.output
    assert f"skipped {pool}:4: unrecognised record shape" in result.output
    scores, _ = read_scores(output)
    assert len(scores) == 3 and list(scores.columns) == ["id", "task", "loss", "ppl", "length", "prompt_length"]


@pytest.mark.integration
def test_a_second_run_reuses_the_cache_and_writes_the_same_scores(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    for output in (first, second):
        result = run_score(pool, "-o", output, "--model", "tiny-random", "--cache-dir", tmp_path / "cache",
                           "--indicators", "loss,ifd,confidence", "--max-new-tokens", "3")
        assert result.exit_code == 0, result.output
    assert read_scores(first)[0].equals(read_scores(second)[0])


# -- user errors: exit code 2, where and what, no output ------------------------------------------


def test_malformed_json_line_names_file_and_line(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", POOL[:1], ['{"question": "cut off', json.dumps(POOL[1])])
    output = tmp_path / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", "tiny-random")
    assert_user_error(result, output, f"{pool}:2", "malformed JSON", "fix:")


def test_missing_field_names_file_line_and_field(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", [POOL[0], {"question": None, "answer": "4"}])
    output = tmp_path / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", "tiny-random")
    assert_user_error(result, output, f"{pool}:2", "field 'question'", "missing or empty", "fix:")


def test_empty_file_is_refused(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(b"")
    output = tmp_path / "scores.parquet"
    assert_user_error(run_score(pool, "-o", output, "--model", "tiny-random"), output, str(pool), "the file is empty")


def test_unknown_task_field_suggests_the_right_one(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    output = tmp_path / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", "tiny-random", "--task-field", "tsak")
    assert_user_error(result, output, f"{pool}:1", "field 'tsak'", "did you mean 'task'")


def test_unknown_model_suggests_the_closest_name(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    output = tmp_path / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", "tiny-randm")
    assert_user_error(result, output, "unknown model 'tiny-randm'", "field 'model'", "did you mean 'tiny-random'")


def test_unknown_indicator_suggests_the_closest_name(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    output = tmp_path / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", "tiny-random", "--indicators", "loss,confidense")
    assert_user_error(result, output, "unknown indicator 'confidense'", "field 'indicators'",
                      "did you mean 'confidence'")


def test_model_folder_without_weights_is_refused(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer.json").write_text("{}")
    output = tmp_path / "scores.parquet"
    result = run_score(pool, "-o", output, "--model", folder)
    assert_user_error(result, output, str(folder), "field 'model'", "no weights")
