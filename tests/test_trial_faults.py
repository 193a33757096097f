"""Faults a new user's trial found: each bad input is refused with exit code 2, the file, line or
field, and a fix, with no traceback and nothing written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import _register_commands
from tunewise.cli.app import app
from tunewise.data.pool import read_pool
from tunewise.errors import TunewiseError

_register_commands()

RECORDS = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "task": "math" if i % 2 else "trivia"}
           for i in range(6)]
LINES = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()


def run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def assert_user_error(result, output: Path | None, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"
    if output is not None:
        assert not output.exists()
        assert [p.name for p in output.parent.glob("*.tmp")] == []


# -- 1. a .gz or .zst name on a file that is not compressed ----------------------------------------


@pytest.mark.parametrize("suffix, name", [(".gz", "gzip"), (".zst", "zstd")])
def test_a_misnamed_compressed_file_is_refused_with_a_fix(tmp_path, suffix, name):
    pool = tmp_path / f"pool.jsonl{suffix}"
    pool.write_bytes(LINES)
    output = tmp_path / "scores.parquet"
    result = run("score", pool, "-o", output, "--model", "tiny-random")
    assert_user_error(result, output, str(pool), f"not a {name} file", "fix: rename it to pool.jsonl")


def test_a_cut_short_gzip_file_is_refused(tmp_path):
    pool = tmp_path / "pool.jsonl.gz"
    pool.write_bytes(gzip.compress(LINES)[:30])
    with pytest.raises(TunewiseError, match="damaged or cut short") as error:
        read_pool(pool)
    assert error.value.fix


# -- 2. the Python API: nested strategy objects, top-level names, read_pool options, a short repr ----


def test_plan_config_takes_a_nested_strategy_object_and_names_only_by_did_you_mean():
    import tunewise as tw

    config = tw.PlanConfig(budget=20, strategy=tw.TaskDiversity(within=tw.DifficultyWindow(c0=0.4)))
    assert config.strategy_name == "task_diversity"
    with pytest.raises(TunewiseError, match="unknown strategy") as error:
        tw.PlanConfig(budget=20, strategy="task_divrsity")
    assert "did you mean 'task_diversity'" in error.value.fix
    with pytest.raises(TunewiseError, match="got 3 \\(a int\\)"):
        tw.PlanConfig(budget=20, strategy=3)
    with pytest.raises(TunewiseError, match="carries its own within-task order"):
        tw.PlanConfig(budget=20, strategy=tw.TaskDiversity(), within="difficulty_window")


def test_a_plan_made_from_a_strategy_object_matches_the_plan_made_by_name(tmp_path):
    import tunewise as tw
    from tunewise.model.fake import FakeBackend

    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_bytes(LINES)
    pool = read_pool(pool_file, "task")
    by_object = tw.plan(pool, FakeBackend(), tw.PlanConfig(budget=4, coslow=False, strategy=tw.TaskDiversity(
        within=tw.DifficultyWindow())), tmp_path / "object", model_name="fake")
    by_name = tw.plan(pool, FakeBackend(), tw.PlanConfig(budget=4, coslow=False, strategy="task_diversity",
                                                         within="difficulty_window"), tmp_path / "name",
                      model_name="fake")
    assert by_object.document["strategy"] == by_name.document["strategy"] == "task_diversity"
    assert list(by_object.selection.positions) == list(by_name.selection.positions)


def test_the_selector_classes_are_top_level_names_and_import_tunewise_stays_light():
    import subprocess
    import sys

    code = ("import sys, tunewise as tw; assert 'torch' not in sys.modules; "
            "[getattr(tw, n) for n in ('Columns', 'TaskDiversity', 'WeightedTaskDiversity', 'DifficultyWindow', "
            "'DifficultyBucket', 'WeightedIndicators', 'RandomSelection', 'KCenter')]; "
            "assert 'torch' not in sys.modules, 'a selector class imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_read_pool_points_a_column_keyword_at_columns():
    import pandas as pd

    frame = pd.DataFrame([{"question": "q", "answer": "a", "uid": "x1"}])
    with pytest.raises(TunewiseError, match="the record fields go in columns") as error:
        read_pool(frame, id_field="uid")
    assert "columns=Columns(id_field='uid')" in error.value.fix
    with pytest.raises(TunewiseError, match="no option 'skipbad'") as error:
        read_pool(frame, skipbad=True)
    assert "did you mean 'skip_bad'" in error.value.fix


def test_an_example_table_repr_is_one_short_line():
    import pandas as pd

    from tunewise.data.table import ExampleTable

    pool = read_pool(pd.DataFrame(RECORDS * 1), "task")
    scores = pd.DataFrame({"id": [e.id for e in pool.examples], "task": [e.task for e in pool.examples],
                           "loss": [1.0] * len(pool)})
    text = repr(ExampleTable(tuple(pool.examples), scores, pool.source))
    assert text == "ExampleTable(6 rows, 2 tasks, columns: loss, source='<DataFrame>')"


# -- 3. CSV pools: an open quote, a row with too many cells, a row with too few ----------------------


@pytest.mark.parametrize("rows, line, fragment", [
    ('q1,a1,t\n"What is 2,2,t\nq3,a3,t\n', 3, "a quote opened on line 3 is never closed"),
    ("q1,a1,t\nq2,a2,t,extra\n", 3, "4 cells, more than the 3 columns"),
    ("q1,a1,t\nq2,a2\n", 3, "2 cells, fewer than the 3 columns"),
])
def test_a_broken_csv_row_is_refused_with_its_line(tmp_path, rows, line, fragment):
    pool = tmp_path / "pool.csv"
    pool.write_text("question,answer,task\n" + rows, encoding="utf-8")
    output = tmp_path / "scores.parquet"
    result = run("score", pool, "-o", output, "--model", "tiny-random", "--indicators", "length")
    assert_user_error(result, output, f"{pool}:{line}", fragment, "fix:")


def test_csv_rows_keep_their_starting_line_across_quoted_line_breaks_and_blank_lines(tmp_path):
    pool = tmp_path / "pool.csv"
    pool.write_text('question,answer,task\n"multi\nline, ok",a1,t\n\nq2,a2,t\n', encoding="utf-8")
    read = read_pool(pool, "task")
    assert [e.location[1] for e in read.examples] == [2, 5]
    assert read.examples[0].prompt[0]["content"] == "multi\nline, ok"
    assert read_pool(pool.with_name("pool.csv"), "task", skip_bad=True).skipped == []


def test_skip_bad_skips_a_short_csv_row_and_lists_it(tmp_path):
    pool = tmp_path / "pool.csv"
    pool.write_text("question,answer\nq1,a1\nq2\nq3,a3\n", encoding="utf-8")
    read = read_pool(pool, skip_bad=True)
    assert len(read) == 2 and [s.line for s in read.skipped] == [3]


# -- 4. a missing local path is never taken for a Hub dataset id ------------------------------------


@pytest.mark.parametrize("given", ["./d/typo", "../d/typo", "/nonexistent/typo", "~/typo", "d/typo.jsonl", "a/b/c"])
def test_a_missing_local_looking_path_is_no_such_file(tmp_path, monkeypatch, given):
    import datasets

    def no_network(*args, **kwargs):
        raise AssertionError("went to the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "scores.parquet"
    result = run("score", given, "-o", output, "--model", "tiny-random", "--split", "train")
    assert_user_error(result, output, f"{given}: no such file or folder", "fix: check the path")


@pytest.mark.parametrize("given", ["owner/name", "name"])
def test_owner_name_and_bare_names_are_read_as_hub_ids(tmp_path, monkeypatch, given):
    import datasets

    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: asked.append(args) or
                        datasets.Dataset.from_list(RECORDS))
    monkeypatch.chdir(tmp_path)
    assert len(read_pool(given, split="train")) == len(RECORDS)
    assert asked == [(given, None)]


# -- 5. a record without the task field, when other records have it -------------------------------


def test_a_record_missing_a_task_field_others_have_points_at_one_that_has_it(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "a", "completion": "b", "task": "x"}) + "\n"
                    + json.dumps({"prompt": "c", "completion": "d"}) + "\n", encoding="utf-8")
    output = tmp_path / "scores.parquet"
    result = run("score", pool, "-o", output, "--model", "tiny-random", "--task-field", "task")
    assert_user_error(result, output, f"{pool}:2", "no task field 'task'", f"as {pool}:1 has", "--skip-bad")
    assert "choose one of" not in result.output


def test_a_misspelt_task_field_still_gets_did_you_mean(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(LINES)
    with pytest.raises(TunewiseError) as error:
        read_pool(pool, "tsak")
    assert error.value.line == 1 and "did you mean 'task'" in error.value.fix


# -- 6. budgets: one check for plan and select --------------------------------------------------------


def write_scored_pool(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(LINES)
    scores = tmp_path / "scores.parquet"
    assert run("score", pool, "-o", scores, "--model", "tiny-random", "--indicators", "length").exit_code == 0
    return pool, scores


@pytest.mark.parametrize("budget, message", [("0", "--budget 0 selects nothing"),
                                             ("-1", "--budget must be ≥ 1, got -1")])
def test_plan_and_select_refuse_the_same_bad_budget_the_same_way(tmp_path, budget, message):
    pool, scores = write_scored_pool(tmp_path)
    run_dir = tmp_path / "run"
    planned = run("plan", pool, "--budget", budget, "--model", "tiny-random", "-o", run_dir)
    assert_user_error(planned, run_dir, message, "fix: pass --budget 1 or more")
    selection = tmp_path / "selection.jsonl"
    selected = run("select", scores, "--budget", budget, "-s", "random", "-o", selection)
    assert_user_error(selected, selection, message, "fix: pass --budget 1 or more")


def test_a_budget_of_the_wrong_type_shows_its_repr_and_type():
    import tunewise as tw

    with pytest.raises(TunewiseError, match=r"got '10' \(a str\)"):
        tw.PlanConfig(budget="10")


# -- 7. output suffixes; -o for curve and estimate ----------------------------------------------------


def test_score_refuses_a_scores_file_that_is_not_parquet(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(LINES)
    output = tmp_path / "x.txt"
    result = run("score", pool, "-o", output, "--model", "tiny-random", "--indicators", "length")
    assert_user_error(result, output, "does not end in .parquet", f"fix: pass -o {tmp_path / 'x.parquet'}")


def test_curve_and_estimate_write_their_json_result_with_o(tmp_path):
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"0": 0.3, "10": 0.5, "50": 0.6, "100": 0.7}), encoding="utf-8")
    for args, name in [(["curve", curve, "--ceiling", "0.8"], "curve_result.json"),
                       (["estimate", "--coslow", "0.3", "--coefficients", "paper:llama-3.1-8b"], "estimate.json")]:
        printed = run(*args, "--json")
        assert printed.exit_code == 0, printed.output
        written = run(*args, "--json", "-o", tmp_path / name)
        assert written.exit_code == 0, written.output
        assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == json.loads(printed.output)
        refused = tmp_path / (name[:-5] + ".txt")
        assert_user_error(run(*args, "-o", refused), refused, "does not end in .json", "fix: pass -o")
    assert_user_error(run("curve", curve, "-o", curve), None, "would destroy that input")


def test_plan_dev_keeps_a_local_looking_path_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.jsonl").write_bytes(LINES)
    result = run("plan", "pool.jsonl", "--task-field", "task", "--budget", "2", "--model", "tiny-random",
                 "--dev", "./d/typo", "-o", tmp_path / "run")
    assert_user_error(result, tmp_path / "run", "./d/typo: no such file or folder")
