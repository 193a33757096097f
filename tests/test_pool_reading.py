"""How a pool is read is the same on every command (issue 16): the pool-reading flags (field
mapping, --split, --dataset-config, --keep-duplicates) come from one declaration, reach every read
of a pool, test or dev set, and are recorded in the outputs' provenance; user ids are unique."""

from __future__ import annotations

import inspect
import json

import pytest
import typer
from typer.testing import CliRunner

import tunewise.cli
from tunewise.cli.app import app
from tunewise.data.pool import Columns, PoolReading, read_pool
from tunewise.errors import TunewiseError

#: Every command that reads a pool, a test set or a dev set.
POOL_COMMANDS = ("score", "plan", "select", "tune-weights", "finetune", "evaluate", "sweep", "coslow", "anchors",
                 "calibrate-difficulty")
READING_FLAGS = ("--prompt-field", "--response-field", "--messages-field", "--system-field", "--history-field",
                 "--id-field", "--split", "--dataset-config", "--keep-duplicates")


@pytest.fixture(scope="module", autouse=True)
def commands():
    tunewise.cli._register_commands()


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def sums(numbers, task="add"):
    return [{"question": f"What is {n} + {n}?", "answer": str(2 * n), "task": task} for n in numbers]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# --- the library ---------------------------------------------------------------------------------


def test_keep_duplicates_through_pool_reading_keeps_repeats_and_records_how_the_pool_was_read(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [*sums([1, 2]), sums([1])[0]])
    merged = PoolReading().read(path)
    assert len(merged) == 2 and merged.duplicates == [(3, 1)] and merged.provenance() == {}
    reading = PoolReading(Columns(prompt_field="question", response_field="answer"), keep_duplicates=True)
    kept = reading.read(path)
    assert [e.id for e in kept.examples] == [merged.examples[0].id, merged.examples[1].id,
                                             merged.examples[0].id + "~2"]
    assert kept.duplicates == []
    assert kept.provenance() == {"columns": {"prompt_field": "question", "response_field": "answer"},
                                 "keep_duplicates": True}
    # The pool says how it was read, and that reads a test set the same way (and round-trips provenance).
    assert kept.reading == reading == PoolReading.from_provenance(kept.provenance())


def test_a_saved_datasetdict_split_is_recorded_in_the_pools_provenance(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(sums([1, 2, 3])),
                          "test": datasets.Dataset.from_list(sums([4]))}).save_to_disk(tmp_path / "dd")
    pool = PoolReading(split="test").read(tmp_path / "dd", "task")
    assert [e.prompt[-1]["content"] for e in pool.examples] == ["What is 4 + 4?"]
    assert pool.provenance() == {"split": "test"} and pool.source == f"{tmp_path / 'dd'}[test]"


def test_a_repeated_user_id_is_refused_naming_both_lines_the_field_and_the_fix(tmp_path):
    records = [{**r, "ref": ref} for r, ref in zip(sums([1, 2, 3]), ("a", "b", "a"))]
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    with pytest.raises(TunewiseError) as raised:
        read_pool(path, columns=Columns(id_field="ref"))
    error = raised.value
    assert (error.file, error.line, error.field) == (str(path), 3, "ref")
    assert "'a' is the id of line 1 too" in error.message and "its own id" in error.fix
    # Without --id-field the field is plain metadata, and nothing needs to be unique.
    assert len(read_pool(path)) == 3
    # --skip-bad skips the clash and lists it, like any bad record.
    skipped = read_pool(path, columns=Columns(id_field="ref"), skip_bad=True)
    assert [e.user_id for e in skipped.examples] == ["a", "b"] and [s.line for s in skipped.skipped] == [3]


def test_an_exact_repeat_with_its_originals_id_is_merged_not_refused_unless_duplicates_are_kept(tmp_path):
    records = [{**sums([1])[0], "ref": "a"}, {**sums([2])[0], "ref": "b"}, {**sums([1])[0], "ref": "a"}]
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    pool = read_pool(path, columns=Columns(id_field="ref"))
    assert [e.user_id for e in pool.examples] == ["a", "b"] and pool.duplicates == [(3, 1)]
    # Kept apart, the repeat would be a second example under the same id.
    with pytest.raises(TunewiseError, match="'a' is the id of line 1 too") as raised:
        read_pool(path, columns=Columns(id_field="ref"), keep_duplicates=True)
    assert raised.value.line == 3 and "--keep-duplicates" in raised.value.fix


def test_a_user_id_repeated_across_the_files_of_a_glob_names_the_other_file(tmp_path):
    write_jsonl(tmp_path / "part-1.jsonl", [{**sums([1])[0], "ref": "a"}])
    second = write_jsonl(tmp_path / "part-2.jsonl", [{**sums([2])[0], "ref": "a"}])
    with pytest.raises(TunewiseError, match="line 1 of .*part-1.jsonl") as raised:
        read_pool(str(tmp_path / "part-*.jsonl"), columns=Columns(id_field="ref"))
    assert (raised.value.file, raised.value.line) == (str(second), 1)


def test_the_streaming_reader_refuses_a_repeated_user_id_too(tmp_path):
    from tunewise.indicators.streaming import iter_pool_batches

    path = write_jsonl(tmp_path / "pool.jsonl", [{**r, "ref": "same"} for r in sums([1, 2, 3])])
    with pytest.raises(TunewiseError, match="'same' is the id of line 1 too") as raised:
        list(iter_pool_batches(path, columns=Columns(id_field="ref"), batch_size=1))
    assert raised.value.line == 2
    # Across the files of a glob as well.
    write_jsonl(tmp_path / "part-1.jsonl", [{**sums([1])[0], "ref": "a"}])
    write_jsonl(tmp_path / "part-2.jsonl", [{**sums([2])[0], "ref": "a"}])
    with pytest.raises(TunewiseError, match="line 1 of .*part-1.jsonl"):
        list(iter_pool_batches(str(tmp_path / "part-*.jsonl"), columns=Columns(id_field="ref")))


# --- the command line: one declaration, every command ---------------------------------------------


@pytest.mark.parametrize("name", POOL_COMMANDS)
def test_every_pool_command_has_the_same_generated_pool_reading_flags(name):
    from tunewise.cli.options import with_pool_options

    command = next(c for c in app.registered_commands if c.name == name)
    flags = {flag for param in typer.main.get_command(app).commands[name].params for flag in param.opts}
    assert set(READING_FLAGS) <= flags
    # The flags' options are the ones with_pool_options generates, not a hand-declared copy.
    generated = with_pool_options()(lambda reading=None: None).__signature__.parameters
    declared = inspect.signature(command.callback).parameters
    for key in ("split", "dataset_config", "keep_duplicates", "id_field"):
        assert declared[key].default.help == generated[key].default.help
        assert declared[key].default.param_decls == generated[key].default.param_decls


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pool and a test set saved with DatasetDict.save_to_disk (splits 'train' and 'other'), and
    scores of the pool's 'train' split written by `tunewise score --split train`."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path_factory.mktemp("saved")

    def save(name, train, other):
        datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                              "other": datasets.Dataset.from_list(other)}).save_to_disk(folder / name)
        return folder / name

    pool = save("pool", [*sums([1, 2, 3, 4]), *sums([51, 52, 53, 54], "double")], sums([99], "other"))
    test = save("test", [*sums([7]), *sums([77], "double")], sums([98], "other"))
    scores = folder / "scores.parquet"
    result = invoke("score", pool, "--split", "train", "--task-field", "task", "--model", "tiny-random",
                    "--indicators", "length", "-o", scores)
    assert result.exit_code == 0, result.output
    return {"pool": pool, "test": test, "scores": scores, "dir": folder}


def command_line(name, files, out):
    """A run of command ``name`` on the saved pool (and test or dev set) with tiny-random."""
    pool, test, tiny = files["pool"], files["test"], ("--model", "tiny-random")
    return {
        "score": ["score", pool, *tiny, "--indicators", "length", "-o", out / "s.parquet"],
        "plan": ["plan", pool, *tiny, "--budget", 2, "-o", out / "run"],
        "select": ["select", files["scores"], "--strategy", "random", "--budget", 2, "--pool", pool,
                   "-o", out / "selection.jsonl"],
        "tune-weights": ["tune-weights", files["scores"], "--pool", pool, "--dev", test, *tiny, "--trials", 1,
                         "-o", out / "weights.json"],
        "finetune": ["finetune", pool, *tiny, "--max-steps", 1, "-o", out / "adapter"],
        "evaluate": ["evaluate", test, *tiny, "-o", out / "results.json"],
        "sweep": ["sweep", pool, "--test", test, "--budgets", 2, "--strategies", "random", "--seeds", 0, *tiny,
                  "--max-steps", 1, "-o", out / "sweep"],
        "coslow": ["coslow", pool, *tiny, "-o", out / "coslow"],
        "anchors": ["anchors", test, *tiny, "-m", 1, "-o", out / "anchors.jsonl"],
        "calibrate-difficulty": ["calibrate-difficulty", pool, "--test", test, *tiny, "--budgets", "2,3",
                                 "-o", out / "calibration"],
    }[name] + ["--task-field", "task"]


@pytest.mark.parametrize("name", POOL_COMMANDS)
def test_every_pool_command_reads_the_split_it_is_given(name, saved, tmp_path):
    """--split reaches the read of every command: a split the DatasetDict lacks stops it (exit 2,
    naming the splits there are) before any model is loaded or file written."""
    result = invoke(*command_line(name, saved, tmp_path), "--split", "nosuch")
    assert result.exit_code == 2, result.output
    assert "has the splits train, other, not 'nosuch'" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_score_then_select_read_the_split_and_record_it(saved, tmp_path):
    from tunewise.data.table import read_scores

    scores, provenance = read_scores(saved["scores"])
    assert len(scores) == 8 and provenance["split"] == "train"
    # select --pool reads the pool as it was scored (its split from the scores' provenance) and exports the picks.
    result = invoke(*command_line("select", saved, tmp_path), "--export", "messages")
    assert result.exit_code == 0, result.output
    assert "it was scored with: --split train" in result.output
    meta = json.loads((tmp_path / "selection.meta.json").read_text())
    assert meta["split"] == "train"
    assert len((tmp_path / "selection.messages.jsonl").read_text().splitlines()) == 2


def test_evaluate_and_finetune_and_anchors_read_the_split_and_record_it(saved, tmp_path):
    result = invoke(*command_line("evaluate", saved, tmp_path), "--split", "train", "--max-new-tokens", 1)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["split"] == "train" and results["config"]["n_samples"] == 2
    result = invoke(*command_line("finetune", saved, tmp_path), "--split", "train")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "adapter" / "tunewise_adapter.json").read_text())["split"] == "train"
    result = invoke(*command_line("anchors", saved, tmp_path), "--split", "train", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dev"] == 2 and report["split"] == "train"


def test_a_repeated_user_id_stops_a_command_with_exit_2(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{**r, "ref": "same"} for r in sums([1, 2])])
    result = invoke("score", pool, "--id-field", "ref", "--model", "tiny-random", "--indicators", "length",
                    "-o", tmp_path / "s.parquet")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'same' is the id of line 1 too" in result.output and ":2" in result.output
    assert not (tmp_path / "s.parquet").exists()


def test_plan_and_sweep_read_the_split_and_record_it(saved, tmp_path):
    result = invoke(*command_line("plan", saved, tmp_path), "--split", "train")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["provenance"]["split"] == "train" and plan["provenance"]["pool"] == f"{saved['pool']}[train]"
    assert json.loads((tmp_path / "run" / "selection.meta.json").read_text())["split"] == "train"
    # The test set is read with the same --split as the pool (its 'train' split here).
    result = invoke(*command_line("sweep", saved, tmp_path), "--split", "train", "--max-new-tokens", 1)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "sweep" / "sweep_config.json").read_text())
    assert settings["split"] == "train" and "test_reading" not in settings
    assert settings["pool"]["examples"] == 8 and settings["test"]["examples"] == 2
