"""`tunewise select` end to end on small generated scores files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import tunewise.cli
from tunewise.cli.app import app
from tunewise.data.pool import read_pool
from tunewise.data.table import SCALAR_INDICATORS, write_scores
from tunewise.select.manifest import read_selection

PROVENANCE = {"model": "fake-model", "indicators": {"loss": 1}}


@pytest.fixture(scope="module", autouse=True)
def commands():
    tunewise.cli._register_commands()


def invoke(*args):
    return CliRunner().invoke(app, ["select", *map(str, args)])


def write_generated_scores(path, ids=None, tasks=None, rows=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = ids or [f"ex{i:03d}" for i in range(rows)]
    tasks = tasks or [("arith", "code", "qa")[i % 3] for i in range(len(ids))]
    frame = pd.DataFrame({"id": ids, "task": tasks})
    for name in SCALAR_INDICATORS:
        frame[name] = rng.random(len(ids))
    frame["ppl"] = np.nan
    frame["embedding"] = list(rng.standard_normal((len(ids), 4)).astype(np.float32))
    write_scores(frame, path, PROVENANCE)
    return frame


@pytest.fixture
def scores_file(tmp_path):
    path = tmp_path / "scores.parquet"
    write_generated_scores(path)
    return path


def test_select_writes_one_row_per_pick_and_the_provenance(tmp_path, scores_file):
    output = tmp_path / "out" / "selection.jsonl"
    result = invoke(scores_file, "--budget", 12, "--strategy", "task_diversity", "--seed", 3, "-o", output)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["position"] for row in rows] == list(range(12))
    assert {row["task"] for row in rows} == {"arith", "code", "qa"}
    assert len({row["id"] for row in rows}) == 12
    assert set(rows[0]["scores"]) == set(SCALAR_INDICATORS)
    assert rows[0]["scores"]["ppl"] is None and isinstance(rows[0]["scores"]["loss"], float)
    assert all(row["reason"].startswith("task '") for row in rows)

    meta = json.loads((tmp_path / "out" / "selection.meta.json").read_text())
    assert meta["strategy"] == "task_diversity"
    assert meta["params"] == {"within": {"strategy": "random"}}
    assert (meta["seed"], meta["budget"], meta["selected"], meta["pool"]) == (3, 12, 12, 40)
    assert meta["tasks"] == {
        "arith": {"pool": 14, "selected": 4},
        "code": {"pool": 13, "selected": 4},
        "qa": {"pool": 13, "selected": 4},
    }
    assert meta["scores"]["provenance"] == PROVENANCE
    assert meta["tunewise_version"] == tunewise.__version__
    for task in ("arith", "code", "qa", "total"):
        assert task in result.stdout


def test_the_same_seed_gives_byte_identical_files(tmp_path, scores_file):
    outputs = [tmp_path / f"run{i}" / "selection.jsonl" for i in range(2)]
    for output in outputs:
        result = invoke(
            scores_file, "--budget", 20, "--strategy", "weighted_task_diversity", "--seed", 7, "-o", output
        )
        assert result.exit_code == 0, result.output
    for name in ("selection.jsonl", "selection.meta.json"):
        assert (tmp_path / "run0" / name).read_bytes() == (tmp_path / "run1" / name).read_bytes()


def test_fraction_and_read_selection_round_trip(tmp_path, scores_file):
    output = tmp_path / "picks.jsonl"
    result = invoke(
        scores_file, "--fraction", 0.25, "--strategy", "top_k", "--indicator", "ifd", "--direction", "asc",
        "-o", output,
    )
    assert result.exit_code == 0, result.output
    frame, meta = read_selection(output)
    assert len(frame) == 10 and meta["params"] == {"indicator": "ifd", "direction": "asc"}
    assert frame["ifd"].is_monotonic_increasing
    assert frame["ppl"].isna().all()
    assert list(frame.columns[:4]) == ["position", "id", "task", "reason"]


def test_a_budget_beyond_the_pool_capped_to_the_pool_selects_everything_and_says_so(tmp_path, scores_file):
    output = tmp_path / "selection.jsonl"
    result = invoke(scores_file, "--budget", 500, "--strategy", "random", "--cap-to-pool", "-o", output)
    assert result.exit_code == 0, result.output
    assert len(output.read_text().splitlines()) == 40
    assert "larger than the pool" in result.stderr


def test_flags_reach_the_within_strategy(tmp_path, scores_file):
    output = tmp_path / "selection.jsonl"
    result = invoke(
        scores_file, "--budget", 9, "--strategy", "task_diversity", "--within", "difficulty_window",
        "--c0", 0.6, "--difficulty", "cot_length", "-o", output,
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "selection.meta.json").read_text())
    assert meta["params"] == {"within": {"strategy": "difficulty_window", "c0": 0.6, "difficulty": "cot_length",
                                         "beta": 0.0, "n0": 100.0}}


def test_bucket_and_weights_file_flags_reach_the_within_strategy(tmp_path, scores_file):
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"weights": {"loss": 1.0}, "set_diversity": True}))
    for name, arguments in (("bucket", ["--within", "difficulty_bucket", "--bucket", "hard"]),
                            ("weights", ["--within", "weighted_indicators", "--weights", weights])):
        output = tmp_path / name / "selection.jsonl"
        result = invoke(scores_file, "--budget", 6, "--strategy", "task_diversity", *arguments, "-o", output)
        assert result.exit_code == 0, result.output
        within = json.loads((tmp_path / name / "selection.meta.json").read_text())["params"]["within"]
        expected = ({"strategy": "difficulty_bucket", "bucket": "hard", "difficulty": "length"} if name == "bucket"
                    else {"strategy": "weighted_indicators", "weights": {"loss": 1.0}, "orientation": None,
                          "set_diversity": True})
        assert within == expected


def test_weights_file_for_weighted_indicators(tmp_path, scores_file):
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"weights": {"loss": 0.7, "confidence": 0.3}}))
    output = tmp_path / "selection.jsonl"
    result = invoke(
        scores_file, "--budget", 5, "--strategy", "weighted_indicators", "--weights", weights, "-o", output
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "selection.meta.json").read_text())
    assert meta["params"] == {"weights": {"loss": 0.7, "confidence": 0.3}, "orientation": None, "set_diversity": False}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--budget", 5, "--fraction", 0.1, "--strategy", "random"], "exactly one of --budget and --fraction"),
        (["--strategy", "random"], "exactly one of --budget and --fraction"),
        (["--budget", -3, "--strategy", "random"], "--budget must be"),
        (["--fraction", 0, "--strategy", "random"], "--fraction must be"),
        (["--budget", 5, "--strategy", "randon"], "did you mean 'random'"),
        (["--budget", 5, "--strategy", "random", "--gamma", 2], "--gamma does not apply"),
        (["--budget", 5, "--strategy", "task_diversity", "--bucket", "hard"], "--bucket does not apply"),
        (["--budget", 5, "--strategy", "efficiency"], "needs predicted learning curves"),
        (["--budget", 5, "--strategy", "top_k", "--within", "random"], "--within does not apply"),
        (["--budget", 5, "--strategy", "task_diversity", "--within", "nope"], "invalid parameter within='nope'"),
        (["--budget", 5, "--strategy", "difficulty_window", "--c0", 1.5], "invalid parameter c0=1.5"),
        (["--budget", 5, "--strategy", "top_k", "--indicator", "ppl"], "column 'ppl' is NaN in 40 of 40 rows"),
        (["--budget", 5, "--strategy", "random", "--export", "messages"], "--export needs the pool"),
        (["--budget", 5, "--strategy", "random", "--export", "csv", "--pool", "x"], "unknown export format"),
    ],
)
def test_bad_input_exits_2_and_leaves_no_files(tmp_path, scores_file, arguments, message):
    out = tmp_path / "out"
    out.mkdir()
    result = invoke(scores_file, *arguments, "-o", out / "selection.jsonl")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert list(out.iterdir()) == []


def test_missing_scores_and_bad_weights_files_exit_2(tmp_path, scores_file):
    out = tmp_path / "out"
    out.mkdir()
    result = invoke(tmp_path / "absent.parquet", "--budget", 5, "--strategy", "random", "-o", out / "s.jsonl")
    assert result.exit_code == 2 and "no such scores file" in result.stderr
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"weights": {"loss": 0.6, "ifd": 0.6}}))
    result = invoke(
        scores_file, "--budget", 5, "--strategy", "weighted_indicators", "--weights", weights,
        "-o", out / "s.jsonl",
    )
    assert result.exit_code == 2 and "sum to 1.2" in result.stderr and str(weights) in result.stderr
    assert list(out.iterdir()) == []


def write_pool(path, labelled=True):
    records = []
    for i in range(12):
        task = ("arith", "chat")[i % 2]
        if task == "arith":
            answer = str(2 * i) if labelled else None
            records.append({"instruction": f"Add {i} and {i}.", "input": "", "output": answer, "task": task})
        else:
            messages = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Hi {i}"},
                {"role": "assistant", "content": f"Hello {i}"},
                {"role": "user", "content": f"Bye {i}?"},
            ]
            if labelled:
                messages.append({"role": "assistant", "content": f"Bye {i}!"})
            records.append({"messages": messages, "task": task})
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in records))
    return read_pool(path, task_field="task")


@pytest.fixture
def pool_and_scores(tmp_path):
    pool_path = tmp_path / "pool.jsonl"
    pool = write_pool(pool_path)
    scores_path = tmp_path / "scores.parquet"
    write_generated_scores(scores_path, ids=[e.id for e in pool.examples], tasks=[e.task for e in pool.examples])
    return pool_path, pool, scores_path


def test_export_messages_in_selection_order(tmp_path, pool_and_scores):
    pool_path, pool, scores_path = pool_and_scores
    output = tmp_path / "selection.jsonl"
    result = invoke(
        scores_path, "--budget", 6, "--strategy", "task_diversity", "--pool", pool_path, "--task-field", "task",
        "--export", "messages", "-o", output,
    )
    assert result.exit_code == 0, result.output
    picks = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    exported = [json.loads(line) for line in (tmp_path / "selection.messages.jsonl").read_text().splitlines()]
    by_id = pool.by_id()
    assert exported == [{"messages": by_id[i].messages, "id": i, "tunewise_id": i, "task": by_id[i].task}
                        for i in picks]
    assert all(record["messages"][-1]["role"] == "assistant" for record in exported)


def test_export_alpaca_keeps_system_and_history(tmp_path, pool_and_scores):
    pool_path, pool, scores_path = pool_and_scores
    target = tmp_path / "train" / "data.json"
    result = invoke(
        scores_path, "--budget", 12, "--strategy", "random", "--pool", pool_path, "--task-field", "task",
        "--export", "alpaca", "--export-path", target, "-o", tmp_path / "selection.jsonl",
    )
    assert result.exit_code == 0, result.output
    records = json.loads(target.read_text())
    assert len(records) == 12
    ids = {"id", "tunewise_id", "task"}
    arith = next(r for r in records if r["instruction"] == "Add 2 and 2.")
    assert {k: v for k, v in arith.items() if k not in ids} == {"instruction": "Add 2 and 2.", "input": "", "output": "4"}
    chat = next(r for r in records if r["instruction"] == "Bye 1?")
    assert {k: v for k, v in chat.items() if k not in ids} == {
        "instruction": "Bye 1?",
        "input": "",
        "output": "Bye 1!",
        "system": "Be brief.",
        "history": [["Hi 1", "Hello 1"]],
    }
    assert chat["task"] == "chat" and chat["id"] == chat["tunewise_id"]


def test_export_refuses_unlabelled_examples_and_unknown_ids(tmp_path, pool_and_scores):
    pool_path, _, scores_path = pool_and_scores
    out = tmp_path / "out"
    out.mkdir()
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled_pool = write_pool(unlabelled, labelled=False)
    unlabelled_scores = tmp_path / "unlabelled.parquet"
    write_generated_scores(
        unlabelled_scores,
        ids=[e.id for e in unlabelled_pool.examples],
        tasks=[e.task for e in unlabelled_pool.examples],
    )
    result = invoke(
        unlabelled_scores, "--budget", 4, "--strategy", "random", "--pool", unlabelled, "--task-field", "task",
        "--export", "messages", "-o", out / "selection.jsonl",
    )
    assert result.exit_code == 2 and "have no response" in result.stderr
    result = invoke(
        scores_path, "--budget", 4, "--strategy", "random", "--pool", unlabelled, "--task-field", "task",
        "--export", "messages", "-o", out / "selection.jsonl",
    )
    assert result.exit_code == 2 and "selected ids are not in the pool" in result.stderr
    assert list(out.iterdir()) == []


def test_every_strategy_parameter_with_a_flag_is_a_select_flag_with_its_help():
    from tunewise.select import STRATEGIES

    result = CliRunner().invoke(app, ["select", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    for strategy in STRATEGIES.values():
        for name, param in strategy.parameters.items():
            if param.flag is not None and strategy.command_line:
                assert "--" + name.replace("_", "-") in result.output
                assert param.help in result.output
    assert "earlier [question, answer] pairs" in result.output  # help is plain text, not Rich markup


def test_a_new_strategy_gets_its_flags_without_command_line_code(monkeypatch):
    import typer

    from tunewise.cli.options import with_strategy_options
    from tunewise.select import STRATEGIES
    from tunewise.select.base import Param, Strategy, integer

    class EveryNth(Strategy):
        name = "every_nth"
        parameters = {"step": Param("a whole number ≥ 1", integer(1), flag=int, help="take every step-th row.")}

        def __init__(self, step: int = 2) -> None:
            self.step = step

    monkeypatch.setitem(STRATEGIES, EveryNth.name, EveryNth)
    seen = {}
    command = typer.Typer()

    @command.command()
    @with_strategy_options()
    def pick(strategy_flags=None) -> None:
        seen.update(strategy_flags.params())

    help_text = CliRunner().invoke(command, ["--help"], env={"COLUMNS": "400"}).output
    assert "every_nth: take every step-th row." in help_text
    result = CliRunner().invoke(command, ["--step", "3", "--c0", "0.4"])
    assert result.exit_code == 0, result.output
    assert seen == {"step": (3, "--step"), "c0": (0.4, "--c0")}


def test_export_reads_a_renamed_field_pool_with_the_column_flags_and_records_them(tmp_path):
    from tunewise.data.pool import Columns

    mapping = {"prompt_field": "ask", "response_field": "reply", "id_field": "key"}
    pool_path = tmp_path / "pool.jsonl"
    pool_path.write_text("".join(json.dumps({"ask": f"Add {i} and {i}.", "reply": str(2 * i), "key": f"u{i}",
                                             "task": ("a", "b")[i % 2]}) + "\n" for i in range(10)))
    pool = read_pool(pool_path, task_field="task", columns=Columns(**mapping))
    scores_path = tmp_path / "scores.parquet"
    write_generated_scores(scores_path, ids=[e.id for e in pool.examples], tasks=[e.task for e in pool.examples])
    output = tmp_path / "selection.jsonl"
    flags = ["--prompt-field", "ask", "--response-field", "reply", "--id-field", "key"]
    result = invoke(scores_path, "--budget", 4, "--strategy", "task_diversity", "--pool", pool_path, "--task-field",
                    "task", *flags, "--export", "messages", "-o", output)
    assert result.exit_code == 0, result.output
    by_id = pool.by_id()
    picks = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    exported = [json.loads(line) for line in (tmp_path / "selection.messages.jsonl").read_text().splitlines()]
    assert [(r["messages"], r["id"], r["tunewise_id"]) for r in exported] == [
        (by_id[i].messages, by_id[i].user_id, i) for i in picks]
    assert json.loads((tmp_path / "selection.meta.json").read_text())["columns"] == mapping
    without_export = invoke(scores_path, "--budget", 4, "--strategy", "random", "--prompt-field", "ask",
                            "-o", tmp_path / "other.jsonl")
    assert without_export.exit_code == 2
    assert "--prompt-field says how to read the --pool" in " ".join(without_export.output.split())


def test_select_with_the_pool_writes_the_users_ids_and_fields_as_plan_does(tmp_path):
    """Issue 16: `select --pool` writes the manifest rows `plan` writes (same code), the user's own id
    and other fields included, and the export carries them too."""
    import tunewise as tw
    from tunewise.data.pool import Columns
    from tunewise.model.fake import FakeBackend

    pool_path = tmp_path / "pool.jsonl"
    pool_path.write_text("".join(json.dumps({"ask": f"Add {i} and {i}.", "reply": str(2 * i), "ref": f"mine-{i}",
                                             "source": f"sheet {i}", "grade": i % 4, "task": ("a", "b")[i % 2]})
                                 + "\n" for i in range(10)))
    columns = Columns(prompt_field="ask", response_field="reply", id_field="ref")
    pool = read_pool(pool_path, task_field="task", columns=columns)
    config = tw.PlanConfig(budget=4, strategy="random", coslow=False, seed=3)
    tw.plan(pool, FakeBackend(), config, tmp_path / "run")
    planned = (tmp_path / "run" / "selection.jsonl").read_text()

    flags = ["--prompt-field", "ask", "--response-field", "reply", "--id-field", "ref", "--task-field", "task"]
    output = tmp_path / "selection.jsonl"
    result = invoke(tmp_path / "run" / "scores.parquet", "--budget", 4, "--strategy", "random", "--seed", 3,
                    "--pool", pool_path, *flags, "--export", "alpaca", "-o", output)
    assert result.exit_code == 0, result.output
    assert output.read_text() == planned
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    by_id = pool.by_id()
    assert [(row["user_id"], row["fields"]) for row in rows] == [
        (f"mine-{n}", {"source": f"sheet {n}", "grade": n % 4})
        for n in (int(by_id[row["id"]].user_id.split("-")[1]) for row in rows)]
    exported = json.loads((tmp_path / "selection.alpaca.json").read_text())
    assert [(r["id"], r["tunewise_id"], r["source"], r["grade"]) for r in exported] == [
        (row["user_id"], row["id"], row["fields"]["source"], row["fields"]["grade"]) for row in rows]
    assert json.loads((tmp_path / "selection.meta.json").read_text())["columns"] == columns.used()
    assert json.loads((tmp_path / "run" / "selection.meta.json").read_text())["columns"] == columns.used()
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["provenance"]["columns"] == columns.used()

    manifest_only = tmp_path / "manifest_only.jsonl"  # --pool alone: the ids and fields, no export
    result = invoke(tmp_path / "run" / "scores.parquet", "--budget", 4, "--strategy", "random", "--seed", 3,
                    "--pool", pool_path, *flags, "-o", manifest_only)
    assert result.exit_code == 0, result.output
    assert manifest_only.read_text() == planned
    as_scored = tmp_path / "as_scored.jsonl"  # no field flags: --pool is read as the scores record it was
    result = invoke(tmp_path / "run" / "scores.parquet", "--budget", 4, "--strategy", "random", "--seed", 3,
                    "--pool", pool_path, "--task-field", "task", "-o", as_scored)
    assert result.exit_code == 0, result.output
    assert as_scored.read_text() == planned
    assert "scored with: --prompt-field ask --response-field reply --id-field ref" in " ".join(result.stderr.split())
    other_tasks = invoke(tmp_path / "run" / "scores.parquet", "--budget", 4, "--strategy", "random", "--seed", 3,
                         "--pool", pool_path, "-o", tmp_path / "other_tasks.jsonl")
    assert other_tasks.exit_code == 2 and "another task in the pool than in the scores" in other_tasks.stderr
    assert not (tmp_path / "other_tasks.jsonl").exists()
    without_pool = tmp_path / "without_pool.jsonl"
    result = invoke(tmp_path / "run" / "scores.parquet", "--budget", 4, "--strategy", "random", "--seed", 3,
                    "-o", without_pool)
    assert result.exit_code == 0, result.output
    assert [{k: v for k, v in row.items() if k not in ("user_id", "fields")} for row in rows] == [
        json.loads(line) for line in without_pool.read_text().splitlines()]


def test_select_refuses_unreadable_field_flags_in_the_scores_provenance(tmp_path, pool_and_scores):
    pool_path, pool, _ = pool_and_scores
    scores_path = tmp_path / "edited.parquet"
    frame = write_generated_scores(tmp_path / "plain.parquet", ids=[e.id for e in pool.examples],
                                   tasks=[e.task for e in pool.examples])
    write_scores(frame, scores_path, {**PROVENANCE, "columns": {"prompt_feld": "ask"}})
    result = invoke(scores_path, "--budget", 2, "--strategy", "random", "--pool", pool_path, "--task-field", "task",
                    "-o", tmp_path / "selection.jsonl")
    assert result.exit_code == 2 and "unreadable field flags" in result.stderr
    assert not (tmp_path / "selection.jsonl").exists()


def test_select_reads_the_pool_with_kept_duplicates_as_it_was_scored(tmp_path):
    from tunewise.data.pool import Columns

    pool_path = tmp_path / "pool.jsonl"
    records = [{"prompt": f"Say {i % 3}.", "response": str(i % 3), "ref": f"r{i}"} for i in range(4)]  # r3 repeats r0
    pool_path.write_text("".join(json.dumps(record) + "\n" for record in records))
    pool = read_pool(pool_path, columns=Columns(id_field="ref"), keep_duplicates=True)
    scores_path = tmp_path / "scores.parquet"
    write_generated_scores(scores_path, ids=[e.id for e in pool.examples], tasks=[e.task for e in pool.examples])
    common = [scores_path, "--budget", 4, "--strategy", "random", "--pool", pool_path, "--id-field", "ref"]
    merged = invoke(*common, "-o", tmp_path / "merged.jsonl")
    assert merged.exit_code == 2 and "selected ids are not in the pool" in merged.stderr
    kept = invoke(*common, "--keep-duplicates", "-o", tmp_path / "kept.jsonl")
    assert kept.exit_code == 0, kept.output
    rows = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert sorted(row["user_id"] for row in rows) == ["r0", "r1", "r2", "r3"]
    alone = invoke(scores_path, "--budget", 4, "--strategy", "random", "--split", "train", "-o", tmp_path / "x.jsonl")
    assert alone.exit_code == 2 and "--split says how to read the --pool" in " ".join(alone.stderr.split())
