"""Hostile input (issue 8): every malformed input is exit code 2, a message naming what and where,
no traceback and no output file, half-written or otherwise.

Most cases run in-process through the Typer app; the ones where the real process matters (huge
lines, undecodable bytes) run the installed ``tunewise`` entry point. Commands written by other
areas (``select``, ``tune-weights``, ``sweep``, ``plan``) are skipped, saying why, until they are
registered with the options the case needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tunewise.cli import _register_commands, app
from tunewise.data.table import write_scores

_register_commands()

ENTRY_POINT = Path(sys.executable).with_name("tunewise")
GOOD = {"question": "What is 2 + 2?", "answer": "4"}
OTHER = {"question": "Capital of France?", "answer": "Paris"}


@dataclass
class Case:
    """One hostile input: ``build(folder)`` writes the inputs and returns (arguments, fragments).

    The arguments follow the command name and may use ``{out}``, the output path; every fragment
    must appear in the message.
    """

    name: str
    build: Callable[[Path], tuple[list, list[str]]]
    command: str = "score"
    needs_options: tuple[str, ...] = ()
    subprocess: bool = False
    marks: list = field(default_factory=list)
    in_process: bool = False  # a command other than score run through the Typer app, not a new process
    has_output: bool = True  # the command takes -o


# -- input builders -------------------------------------------------------------------------------


def jsonl(folder: Path, *lines, name: str = "pool.jsonl") -> Path:
    path = folder / name
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def record(value) -> str:
    return json.dumps(value)


def score_case(name: str, lines=None, words=(), *, at_line: int | None = None, options=(), pool=None, **kwargs) -> Case:
    """A `tunewise score` case: a JSONL of ``lines`` (or ``pool(folder)``), errors naming the file."""

    def build(folder: Path):
        path = pool(folder) if pool is not None else jsonl(folder, *lines)
        where = f"{path}:{at_line}" if at_line is not None else str(path)
        return [path, "-o", "{out}", "--model", "tiny-random", *options], [where, *words]

    return Case(name, build, **kwargs)


def option_case(name: str, options, words) -> Case:
    """A `tunewise score` case on a good pool with a bad option."""

    def build(folder: Path):
        return [jsonl(folder, record(GOOD)), "-o", "{out}", "--model", "tiny-random", *options], list(words)

    return Case(name, build)


def write_file(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def write_csv(folder: Path, text: str) -> Path:
    return write_file(folder, "pool.csv", text)


def write_parquet(folder: Path, records) -> Path:
    path = folder / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def truncated_parquet(folder: Path) -> Path:
    path = write_parquet(folder, [GOOD, OTHER] * 50)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def parquet_with_damaged_pages(folder: Path) -> Path:
    path = folder / "pool.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"p{i}" * 30, "response": "r" * 60} for i in range(300)]), path)
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4:len(data) - footer] = b"\xab" * (len(data) - footer - 4)
    path.write_bytes(bytes(data))
    return path


def saved_dataset(folder: Path, damage: str) -> Path:
    dataset = folder / "dataset"
    dataset.mkdir()
    table = pa.Table.from_pylist([GOOD, OTHER])
    arrow = dataset / "data-00000-of-00001.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    state = {"_data_files": [{"filename": arrow.name}]}
    if damage == "state_not_json":
        (dataset / "state.json").write_text("{'single': 'quotes'}")
    elif damage == "data_file_missing":
        (dataset / "state.json").write_text(json.dumps({"_data_files": [{"filename": "gone.arrow"}]}))
    else:
        (dataset / "state.json").write_text(json.dumps(state))
    if damage == "arrow_garbage":
        arrow.write_bytes(b"\x00garbage" * 40)
    return dataset


def folder_that_is_not_a_dataset(folder: Path) -> Path:
    target = folder / "notes"
    target.mkdir()
    (target / "readme.md").write_text("hello")
    return target


def model_folder(folder: Path, with_config: bool) -> Path:
    target = folder / "model"
    target.mkdir()
    if with_config:
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (target / "tokenizer.json").write_text("{}")
    return target


def model_case(name: str, with_config: bool, words) -> Case:
    def build(folder: Path):
        model = model_folder(folder, with_config)
        return [jsonl(folder, record(GOOD)), "-o", "{out}", "--model", model], [str(model), *words]

    return Case(name, build)


def fifty_megabyte_line(folder: Path) -> Path:
    path = folder / "pool.jsonl"
    with path.open("wb") as handle:
        handle.write(record(GOOD).encode() + b"\n")
        handle.write(b'{"question": "' + b"x" * (50 * 1024 * 1024) + b"\n")  # a 50 MB line, never closed
    return path


MANY_GOOD_LINES = [record({"question": f"Question {i}?", "answer": str(i)}) for i in range(9000)]
STREAMING = ["--indicators", "length,cot_length"]

SCORE_CASES = [
    # malformed JSON
    score_case("truncated_json_line", [record(GOOD), '{"question": "What is'], ["malformed JSON"], at_line=2),
    score_case("truncated_json_file", pool=lambda f: write_file(f, "pool.json", '[{"question": "a"}, {"qu'),
               words=["malformed JSON"]),
    score_case("json_object_instead_of_list", pool=lambda f: write_file(f, "pool.json", '{"meta": 1}'),
               words=["list of records"]),
    score_case("json_nested_too_deeply", ["[" * 50_000 + "]" * 50_000], ["nested too deeply"], at_line=1),
    score_case("json_integer_too_long", ['{"question": ' + "7" * 6000 + "}"], ["malformed JSON"], at_line=1),
    score_case("fifty_megabyte_line", pool=fifty_megabyte_line, at_line=2, words=["malformed JSON"], subprocess=True),
    # wrong types
    score_case("list_where_object_expected", [record(["question", "answer"])], ["must be an object, got list"],
               at_line=1),
    score_case("string_where_object_expected", [record(GOOD), record("just text")], ["got str"], at_line=2),
    score_case("prompt_is_an_object", [record({"prompt": {"text": "hi"}, "response": "yo"})],
               ["field 'prompt'", "expected text, got dict"], at_line=1),
    score_case("response_is_a_boolean", [record({"prompt": "hi", "response": True})],
               ["field 'response'", "got bool"], at_line=1),
    score_case("messages_is_an_object", [record({"messages": {"role": "user", "content": "hi"}})],
               ["field 'messages'", "list of turns"], at_line=1),
    score_case("turn_is_a_string", [record({"messages": ["hello"]})], ["field 'messages[0]'"], at_line=1),
    score_case("turn_content_is_a_number", [record({"messages": [{"role": "user", "content": 42}]})],
               ["field 'messages[0].content'", "expected text"], at_line=1),
    # missing or empty fields
    score_case("no_known_fields", [record({"text": "hi", "label": 1})],
               ["unrecognised record shape", "label, text"], at_line=1),
    score_case("empty_prompt", [record({"prompt": "", "response": "yo"})], ["field 'prompt'", "missing or empty"],
               at_line=1),
    score_case("null_question", [record(GOOD), record({"question": None, "answer": "4"})],
               ["field 'question'", "missing or empty"], at_line=2),
    score_case("empty_message_list", [record({"messages": []})], ["field 'messages'", "non-empty list"], at_line=1),
    score_case("empty_final_answer", [record({"messages": [{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": "  "}]})],
               ["final assistant turn is empty"], at_line=1),
    score_case("answer_without_prompt", [record({"messages": [{"role": "assistant", "content": "a"}]})],
               ["answer but no prompt"], at_line=1),
    score_case("sharegpt_turn_without_value", [record({"conversations": [{"from": "human"}]})],
               ["field 'conversations[0]'"], at_line=1),
    score_case("unknown_role", [record({"messages": [{"role": "wizard", "content": "q"}]})],
               ["unknown role 'wizard'", "field 'messages[0].role'"], at_line=1),
    # bytes and text that are not what they should be
    score_case("non_utf8_line", [record(GOOD), record(OTHER), b'{"question": "caf\xe9"}'], ["not valid UTF-8"],
               at_line=3, subprocess=True),
    score_case("non_utf8_csv", pool=lambda f: write_file(f, "pool.csv", b"question,answer\ncaf\xe9,x\n"),
               words=["not valid UTF-8"]),
    score_case("unpaired_surrogate", ['{"question": "bad \\udc00 text"}'], ["surrogate"], at_line=1,
               subprocess=True),
    # duplicates, tasks
    score_case("empty_task", [record(dict(GOOD, task="math")), record(dict(OTHER, task=""))],
               ["field 'task'", "task is empty"], at_line=2, options=["--task-field", "task"]),
    score_case("unknown_task_field", [record(dict(GOOD, task="math"))], ["field 'taks'", "did you mean 'task'"],
               at_line=1, options=["--task-field", "taks"]),
    # files that hold nothing usable
    score_case("empty_file", pool=lambda f: write_file(f, "pool.jsonl", b""), words=["the file is empty"]),
    score_case("only_blank_lines", ["", "   ", ""], ["no usable examples"]),
    score_case("everything_skipped", [record({"x": 1}), "not json"], ["no usable examples (2 bad records skipped)"],
               options=["--skip-bad"]),
    score_case("csv_without_known_columns", pool=lambda f: write_csv(f, "text,label\nhello,1\n"),
               words=["unrecognised record shape"], at_line=2),
    score_case("csv_row_missing_its_prompt", pool=lambda f: write_csv(f, "question,answer\nq,a\n,b\n"),
               words=["field 'question'", "missing or empty"], at_line=3),
    # file kinds
    score_case("corrupt_parquet", pool=lambda f: write_file(f, "pool.parquet", b"PAR1" + bytes(range(64)) + b"PAR1"),
               words=["not a readable Parquet file"]),
    score_case("truncated_parquet", pool=truncated_parquet, words=["Parquet"]),
    score_case("parquet_with_damaged_pages", pool=parquet_with_damaged_pages, words=["corrupt Parquet data"]),
    score_case("parquet_of_wrong_types", pool=lambda f: write_parquet(f, [{"prompt": "hi", "response": [1, 2]}]),
               words=["field 'response'", "one assistant message"], at_line=1),
    score_case("folder_that_is_not_a_dataset", pool=folder_that_is_not_a_dataset,
               words=["not a saved Hugging Face dataset"]),
    score_case("dataset_state_not_json", pool=lambda f: saved_dataset(f, "state_not_json"),
               words=["state.json", "unreadable"]),
    score_case("dataset_data_file_missing", pool=lambda f: saved_dataset(f, "data_file_missing"),
               words=["gone.arrow", "does not exist"]),
    score_case("dataset_arrow_garbage", pool=lambda f: saved_dataset(f, "arrow_garbage"),
               words=["data-00000-of-00001.arrow", "not an Arrow stream"]),
    score_case("unsupported_suffix", pool=lambda f: write_file(f, "pool.txt", record(GOOD)),
               words=["unsupported pool file type '.txt'"]),
    score_case("pool_does_not_exist", pool=lambda f: f / "absent.jsonl", words=["no such file"]),
    # models, options and the output path
    model_case("model_folder_without_weights", True, ["no weights"]),
    model_case("model_folder_without_config", False, ["no config.json"]),
    option_case("unknown_model_name", ["--model", "smollm3"], ["unknown model 'smollm3'", "did you mean"]),
    option_case("unknown_indicator", ["--indicators", "loss,ifdd"], ["unknown indicator 'ifdd'", "did you mean 'ifd'"]),
    option_case("no_indicators", ["--indicators", " , "], ["no indicators"]),
    option_case("negative_limit", ["--limit", "-5"], ["--limit"]),
    option_case("zero_limit", ["--limit", "0"], ["--limit"]),
    option_case("batch_budget_too_small", ["--batch-tokens", "3"], ["--batch-tokens"]),
    option_case("unknown_dtype", ["--dtype", "fp8"], ["unknown dtype 'fp8'"]),
    option_case("unknown_device", ["--device", "tpu7"], ["unknown device 'tpu7'"]),
    option_case("unknown_engine", ["--engine", "spark"], ["unknown engine 'spark'"]),
    # model-free indicators stream the pool in batches: a bad record after the first batch was
    # already scored must still leave no output behind
    score_case("late_malformed_line_while_streaming", [*MANY_GOOD_LINES, '{"question": "cut'], ["malformed JSON"],
               at_line=len(MANY_GOOD_LINES) + 1, options=STREAMING),
    score_case("unknown_task_field_while_streaming", [record(GOOD)], ["field 'topic'"], at_line=1,
               options=[*STREAMING, "--task-field", "topic"]),
    Case("output_is_a_folder", lambda f: ([jsonl(f, record(GOOD)), "-o", f, "--model", "tiny-random"],
                                          ["output path is a folder"])),
    Case("output_inside_a_file", lambda f: ([jsonl(f, record(GOOD)), "-o", f / "pool.jsonl" / "s.parquet",
                                             "--model", "tiny-random"], ["folder is a file"])),
]


# -- other commands -------------------------------------------------------------------------------


def scores_file(folder: Path, name: str = "scores.parquet", **overrides) -> Path:
    columns = {"id": [f"ex{i}" for i in range(6)], "task": ["a", "a", "a", "b", "b", "b"],
               "loss": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5], "ifd": [0.9, 1.0, 1.1, 0.8, 0.7, 1.2],
               "confidence": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}
    columns.update(overrides)
    path = folder / name
    write_scores(pd.DataFrame(columns), path, {"model_fingerprint": "fake-v1"})
    return path


def scores_without_id(folder: Path) -> Path:
    path = folder / "s.parquet"
    pq.write_table(pa.table({"task": ["a"], "loss": [1.0]}), path)
    return path


def select_case(name: str, arguments: Callable[[Path], list], words, **kwargs) -> Case:
    def build(folder: Path):
        return ["-o", "{out}", *arguments(folder)], list(words)

    return Case(name, build, command="select", **kwargs)


def weights_file(folder: Path, weights) -> Path:
    path = folder / "weights.json"
    path.write_text(json.dumps({"weights": weights}))
    return path



SELECT_CASES = [
    select_case("select_negative_budget", lambda f: [scores_file(f), "--strategy", "random", "--budget", "-3"],
                ["budget", "-3"]),
    select_case("select_unknown_strategy", lambda f: [scores_file(f), "--strategy", "randum", "--budget", "2"],
                ["unknown strategy 'randum'", "did you mean 'random'"]),
    select_case("select_nan_scores", lambda f: [scores_file(f, confidence=[0.1, np.nan, 0.3, 0.4, 0.5, 0.6]),
                                                "--strategy", "uncertainty", "--budget", "2"],
                ["confidence", "NaN"]),
    select_case("select_infinite_scores", lambda f: [scores_file(f, loss=[1.0, np.inf, 2.0, 2.5, -np.inf, 3.5]),
                                                     "--strategy", "top_k", "--indicator", "loss", "--budget", "2"],
                ["loss", "infinite"]),
    select_case("select_duplicate_ids", lambda f: [scores_file(f, id=["ex0", "ex0", "ex2", "ex3", "ex4", "ex5"]),
                                                   "--strategy", "random", "--budget", "2"],
                ["duplicate", "ex0"]),
    select_case("select_empty_task_names", lambda f: [scores_file(f, task=["a", "", "a", "b", "b", ""]),
                                                      "--strategy", "task_diversity", "--budget", "2"],
                ["task", "empty"]),
    select_case("select_weights_not_summing_to_one",
                lambda f: [scores_file(f), "--strategy", "weighted_indicators", "--budget", "2",
                           "--weights", weights_file(f, {"loss": 0.5, "ifd": 0.2})],
                ["weights.json", "sum to 0.7"]),
    select_case("select_negative_weight",
                lambda f: [scores_file(f), "--strategy", "weighted_indicators", "--budget", "2",
                           "--weights", weights_file(f, {"loss": 1.5, "ifd": -0.5})],
                ["weights.json", "negative"]),
    select_case("select_scores_not_parquet", lambda f: [jsonl(f, record(GOOD)), "--strategy", "random",
                                                        "--budget", "1"], ["pool.jsonl", "not a readable Parquet"]),
    select_case("select_scores_without_id", lambda f: [scores_without_id(f), "--strategy", "random", "--budget", "1"],
                ["s.parquet", "'id'"]),
    select_case("select_fraction_above_one", lambda f: [scores_file(f), "--strategy", "random", "--fraction", "1.5"],
                ["fraction", "1.5"]),
]


def dev_pool(folder: Path) -> Path:
    return jsonl(folder, record(GOOD), record(OTHER), name="dev.jsonl")


def labelled_pool(folder: Path) -> Path:
    """Six labelled examples over two tasks, the pool ``scores_for_pool`` describes."""
    return jsonl(folder, *(record({"question": f"What is {i} + {i}?", "answer": str(2 * i), "task": "ab"[i // 3]})
                           for i in range(6)))


def scores_for_pool(folder: Path, **overrides) -> Path:
    from tunewise.data.pool import read_pool

    ids = [example.id for example in read_pool(labelled_pool(folder)).examples]
    return scores_file(folder, **{"id": ids, **overrides})


def tune_weights_case(name: str, options: Callable[[Path], list], words, marks=()) -> Case:
    def build(folder: Path):
        arguments = [*options(folder), "--pool", labelled_pool(folder), "--dev", dev_pool(folder), "-o", "{out}",
                     "--model", "tiny-random", "--trials", "2", "--anchors", "2", "--features", "loss,ifd,confidence"]
        return arguments, list(words)

    return Case(name, build, command="tune-weights",
                needs_options=("--pool", "--dev", "--model", "--trials", "--anchors", "--fraction", "--features"),
                marks=list(marks))


OTHER_COMMAND_CASES = [
    tune_weights_case("tune_weights_nan_scores",
                      lambda f: [scores_for_pool(f, loss=[1.0, np.nan, 2.0, 2.5, 3.0, 3.5])], ["loss", "NaN"]),
    tune_weights_case("tune_weights_infinite_scores",
                      lambda f: [scores_for_pool(f, ifd=[np.inf, 1.0, 1.1, 0.8, 0.7, 1.2])], ["ifd", "infinite"]),
    tune_weights_case("tune_weights_negative_fraction",
                      lambda f: [scores_for_pool(f), "--fraction", "-0.3"], ["fraction", "-0.3"]),
    tune_weights_case("tune_weights_scores_of_another_pool", lambda f: [scores_file(f)], ["ex0"]),
    Case("sweep_unknown_strategy", lambda f: (
        [jsonl(f, record(GOOD), record(OTHER)), "--test", dev_pool(f), "--budgets", "1", "--strategies",
         "random,cleverest", "--seeds", "0", "--model", "tiny-random", "-o", "{out}"],
        ["unknown strategy 'cleverest'"]),
        command="sweep", needs_options=("--test", "--budgets", "--strategies", "--seeds", "--model")),
    Case("sweep_negative_budget", lambda f: (
        [jsonl(f, record(GOOD), record(OTHER)), "--test", dev_pool(f), "--budgets", "2,-4", "--strategies",
         "random", "--seeds", "0", "--model", "tiny-random", "-o", "{out}"], ["budget", "-4"]),
        command="sweep", needs_options=("--test", "--budgets", "--strategies", "--seeds", "--model")),
    Case("plan_negative_budget", lambda f: (
        [jsonl(f, record(GOOD), record(OTHER)), "--budget", "-10", "--model", "tiny-random", "-o", "{out}"],
        ["budget", "-10"]),
        command="plan", needs_options=("--budget", "--model")),
    Case("plan_unknown_strategy", lambda f: (
        [jsonl(f, record(GOOD), record(OTHER)), "--budget", "1", "--strategy", "cleverest", "--model",
         "tiny-random", "-o", "{out}"], ["unknown strategy 'cleverest'"]),
        command="plan", needs_options=("--budget", "--strategy", "--model")),
    Case("plan_bad_pool", lambda f: (
        [jsonl(f, record(GOOD), '{"question": "cut'), "--budget", "1", "--model", "tiny-random", "-o", "{out}"],
        ["pool.jsonl:2", "malformed JSON"]),
        command="plan", needs_options=("--budget", "--model")),
]

# -- issue 19: damaged settings files, non-finite numbers, unsafe checkpoints, wrong output kinds ---------


def raw_scores(folder: Path, columns: dict, metadata: dict | None = None, name: str = "scores.parquet") -> Path:
    """A scores file written as-is (not through write_scores), as a hand edit would leave it."""
    path = folder / name
    table = pa.table(columns)
    pq.write_table(table.replace_schema_metadata(metadata) if metadata is not None else table, path)
    return path


SIX = {"task": ["a", "a", "a", "b", "b", "b"], "loss": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
       "confidence": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}
IDS = [f"ex{i}" for i in range(6)]


def pickled_model(folder: Path) -> Path:
    """A model folder whose weights are a pickle that would run a command when unpickled."""
    import torch

    from tunewise.model.load import load_model

    target = folder / "model"
    target.mkdir()
    loaded = load_model("tiny-random", device="cpu", dtype="fp32")
    loaded.model.config.save_pretrained(target)
    loaded.tokenizer.save_pretrained(target)
    torch.save({**loaded.model.state_dict(), "payload": _RunsCode()}, target / "pytorch_model.bin")
    return target


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this-should-never-run",))


def adapter_folder(folder: Path, info: str, weights_file: str = "adapter_model.safetensors") -> Path:
    target = folder / "adapter"
    target.mkdir()
    (target / "adapter_config.json").write_text("{}")
    (target / weights_file).write_bytes(b"\0" * 16)
    (target / "tunewise_adapter.json").write_text(info)
    return target


def sweep_folder_with_settings(folder: Path, settings: bytes) -> Path:
    target = folder / "sweep"
    (target / "runs").mkdir(parents=True)
    (target / "sweep_config.json").write_bytes(settings)
    return target


def measured_file(folder: Path) -> Path:
    return write_file(folder, "measured.json", json.dumps([{"task": t, "coslow": c, "auc": a} for t, c, a in
                                                           (("x", 0.1, 0.3), ("y", 0.2, 0.4), ("z", 0.3, 0.6))]))


def selection_with_garbage_meta(folder: Path) -> Path:
    pool = labelled_pool(folder)
    first = read_pool_ids(pool)[0]
    path = jsonl(folder, record({"position": 0, "id": first, "task": "a", "scores": {}, "reason": "r"}),
                 name="selection.jsonl")
    write_file(folder, "selection.meta.json", "{'not': json")
    return path


def read_pool_ids(path: Path) -> list[str]:
    from tunewise.data.pool import read_pool

    return [example.id for example in read_pool(path).examples]


def unwritable_folder() -> Path | None:
    """A folder this process cannot create files in (even as root), or None."""
    candidate = Path("/sys/kernel")
    try:
        (candidate / ".tunewise-probe").touch()
    except OSError:
        return candidate if candidate.is_dir() else None
    (candidate / ".tunewise-probe").unlink()
    return None


NO_UNWRITABLE_FOLDER = pytest.mark.skipif(unwritable_folder() is None,
                                          reason="no folder here refuses writes to this user")
NOT_UTF8 = b'{"slope": 0.5, "intercept": 0.1, "source": "caf\xe9"}'
LABELLED_TWO = [record({"question": "What is 2 + 2?", "answer": "4", "task": "a"}),
                record({"question": "Capital of France?", "answer": "Paris", "task": "b"})]
UNLABELLED_TWO = [record({"question": "What is 2 + 2?", "task": "a"}), record({"question": "Capital?", "task": "b"})]


def case19(name: str, command: str, build, **kwargs) -> Case:
    return Case(name, build, command=command, in_process=True, **kwargs)


ISSUE_19_CASES = [
    # numbers that are not finite, and ids that are not ids
    score_case("json_nan_answer", [record(GOOD), '{"question": "q", "answer": NaN}'], ["NaN is not a JSON value"],
               at_line=2),
    score_case("json_infinite_answer", ['{"question": "q", "answer": -Infinity}'], ["Infinity is not a JSON value"],
               at_line=1),
    score_case("parquet_infinite_answer", pool=lambda f: write_parquet(f, [{"prompt": "p", "response": float("inf")}]),
               words=["field 'response'", "not a finite number"], at_line=1),
    case19("select_null_id", "select", lambda f: (
        [raw_scores(f, {"id": ["ex0", None, "ex2", "ex3", "ex4", "ex5"], **SIX}), "--strategy", "random",
         "--budget", "2", "-o", "{out}"], ["scores.parquet", "field 'id'", "empty id", "row 2"])),
    case19("select_numeric_nan_id", "select", lambda f: (
        [raw_scores(f, {"id": [0.0, 1.0, float("nan"), 3.0, 4.0, 5.0], **SIX}), "--strategy", "random",
         "--budget", "2", "-o", "{out}"], ["field 'id'", "not text"])),
    case19("select_string_loss_column", "select", lambda f: (
        [raw_scores(f, {"id": IDS, **SIX, "loss": ["1.0", "x", "2", "3", "4", "5"]}), "--strategy", "top_k",
         "--indicator", "loss", "--budget", "2", "-o", "{out}"], ["field 'loss'", "not numbers"])),
    case19("select_string_embedding_column", "select", lambda f: (
        [raw_scores(f, {"id": IDS, **SIX, "embedding": ["[0.1, 0.2]"] * 6}), "--strategy", "k_center",
         "--budget", "2", "-o", "{out}"], ["field 'embedding'", "not a list of finite numbers"])),
    case19("select_garbage_provenance", "select", lambda f: (
        [raw_scores(f, {"id": IDS, **SIX}, {b"tunewise": b"{oops"}), "--strategy", "random", "--budget", "2",
         "-o", "{out}"], ["scores.parquet", "provenance", "not readable JSON"])),
    case19("select_seed_beyond_every_generator", "select", lambda f: (
        [scores_file(f), "--strategy", "random", "--budget", "2", "--seed", str(10**30), "-o", "{out}"],
        ["--seed", "4294967295"])),
    case19("finetune_seed_beyond_every_generator", "finetune", lambda f: (
        [labelled_pool(f), "--model", "tiny-random", "--seed", str(10**30), "-o", "{out}"],
        ["field 'seed'", "4294967295"])),
    case19("sweep_seed_beyond_every_generator", "sweep", lambda f: (
        [labelled_pool(f), "--test", dev_pool(f), "--budgets", "1", "--strategies", "random", "--seeds",
         str(10**30), "--model", "tiny-random", "-o", "{out}"], ["seed", "4294967295"])),
    case19("finetune_infinite_learning_rate", "finetune", lambda f: (
        [labelled_pool(f), "--model", "tiny-random", "--learning-rate", "inf", "-o", "{out}"],
        ["field 'learning_rate'", "finite"])),
    case19("finetune_nan_learning_rate", "finetune", lambda f: (
        [labelled_pool(f), "--model", "tiny-random", "--learning-rate", "nan", "-o", "{out}"],
        ["field 'learning_rate'", "finite"])),
    case19("finetune_loss_becomes_non_finite", "finetune", lambda f: (
        [labelled_pool(f), "--model", "tiny-random", "--learning-rate", "1e30", "--max-steps", "3", "-o", "{out}"],
        ["training loss became", "no adapter was saved", "--learning-rate"])),
    # files that run code, and damaged settings files
    case19("model_with_a_pickled_payload", "score", lambda f: (
        [jsonl(f, record(GOOD)), "--model", pickled_model(f), "--indicators", "loss", "-o", "{out}"],
        ["field 'model'", "pickle", "refused"])),
    case19("adapter_settings_garbage", "evaluate", lambda f: (
        [dev_pool(f), "--model", "tiny-random", "--adapter", adapter_folder(f, "{truncated"), "-o", "{out}"],
        ["tunewise_adapter.json:1", "malformed JSON"])),
    case19("adapter_settings_not_an_object", "evaluate", lambda f: (
        [dev_pool(f), "--model", "tiny-random", "--adapter", adapter_folder(f, "[1, 2]"), "-o", "{out}"],
        ["tunewise_adapter.json", "expected a JSON object"])),
    case19("adapter_weights_pickled", "evaluate", lambda f: (
        [dev_pool(f), "--model", "tiny-random", "--adapter",
         adapter_folder(f, '{"model_fingerprint": "x"}', "adapter_model.bin"), "-o", "{out}"],
        ["adapter_model.safetensors", "never from pickle"])),
    case19("sweep_settings_garbage", "sweep", lambda f: (
        [labelled_pool(f), "--test", dev_pool(f), "--budgets", "1", "--strategies", "random", "--seeds", "0",
         "--model", "tiny-random", "-o", sweep_folder_with_settings(f, b'{"model": "tiny-ran')],
        ["sweep_config.json:1", "malformed JSON"])),
    case19("sweep_settings_not_utf8", "sweep", lambda f: (
        [labelled_pool(f), "--test", dev_pool(f), "--budgets", "1", "--strategies", "random", "--seeds", "0",
         "--model", "tiny-random", "-o", sweep_folder_with_settings(f, b'{"model": "caf\xe9"}')],
        ["sweep_config.json", "not valid UTF-8"])),
    case19("selection_provenance_garbage", "finetune", lambda f: (
        [labelled_pool(f), "--selection", selection_with_garbage_meta(f), "--model", "tiny-random", "-o", "{out}"],
        ["selection.meta.json:1", "malformed JSON"])),
    case19("calibration_not_utf8", "estimate", lambda f: (
        ["--coslow", "0.5", "--coefficients", write_file(f, "calibration.json", NOT_UTF8)],
        ["calibration.json", "not valid UTF-8"]), has_output=False),
    case19("plan_calibration_not_utf8", "plan", lambda f: (
        [jsonl(f, *LABELLED_TWO), "--budget", "1", "--coefficients", write_file(f, "calibration.json", NOT_UTF8),
         "--model", "tiny-random", "-o", "{out}"], ["calibration.json", "not valid UTF-8"])),
    case19("measured_curves_not_utf8", "calibrate", lambda f: (
        [write_file(f, "measured.json", b'[{"task": "caf\xe9"}]'), "-o", "{out}"], ["measured.json", "not valid UTF-8"])),
    # checked before any model work: a model name that cannot load must not be what is reported
    case19("plan_bad_weights_file_before_scoring", "plan", lambda f: (
        [jsonl(f, *LABELLED_TWO), "--budget", "1", "--weights", write_file(f, "weights.json", "{oops"),
         "--model", "no-such-model", "-o", "{out}"], ["weights.json", "not a readable JSON weights file"])),
    case19("plan_efficiency_without_enough_labels_before_scoring", "plan", lambda f: (
        [jsonl(f, *UNLABELLED_TWO), "--task-field", "task", "--budget", "1", "--strategy", "efficiency",
         "--coefficients", "paper:llama-3.1-8b", "--model", "no-such-model", "-o", "{out}"],
        ["efficiency strategy", "labelled examples", "'a' (0)"])),
    case19("plan_efficiency_with_coslow_off", "plan", lambda f: (
        [jsonl(f, *LABELLED_TWO), "--budget", "1", "--strategy", "efficiency", "--coefficients",
         "paper:llama-3.1-8b", "--no-coslow", "--model", "no-such-model", "-o", "{out}"], ["--no-coslow"])),
    # a folder where a file is expected, and the reverse
    case19("select_output_is_a_folder", "select", lambda f: (
        [scores_file(f), "--strategy", "random", "--budget", "2", "-o", f], ["output path is a folder"])),
    case19("calibrate_output_is_a_folder", "calibrate", lambda f: (
        [measured_file(f), "-o", f], ["output path is a folder"])),
    case19("tune_weights_output_is_a_folder", "tune-weights", lambda f: (
        [scores_for_pool(f), "--pool", labelled_pool(f), "--dev", dev_pool(f), "--model", "tiny-random",
         "-o", f], ["output path is a folder"])),
    case19("plan_output_is_a_file", "plan", lambda f: (
        [jsonl(f, *LABELLED_TWO), "--budget", "1", "--model", "tiny-random", "-o", write_file(f, "notes.txt", "x")],
        ["output path is a file"])),
    case19("sweep_output_is_a_file", "sweep", lambda f: (
        [labelled_pool(f), "--test", dev_pool(f), "--budgets", "1", "--strategies", "random", "--seeds", "0",
         "--model", "tiny-random", "-o", write_file(f, "notes.txt", "x")], ["output path is a file"])),
    case19("finetune_output_is_a_file", "finetune", lambda f: (
        [labelled_pool(f), "--model", "tiny-random", "-o", write_file(f, "notes.txt", "x")],
        ["output path is a file"])),
    case19("coslow_output_is_a_file", "coslow", lambda f: (
        [jsonl(f, *UNLABELLED_TWO), "--model", "tiny-random", "-o", write_file(f, "notes.txt", "x")],
        ["output path is a file"])),
    # folders this user cannot write in (root included: /sys refuses everyone)
    case19("score_into_an_unwritable_folder", "score", lambda f: (
        [jsonl(f, record(GOOD)), "--model", "tiny-random", "-o", "/sys/kernel/scores.parquet"],
        ["/sys/kernel", "cannot write in this folder"]), marks=[NO_UNWRITABLE_FOLDER]),
    case19("plan_into_an_unwritable_folder", "plan", lambda f: (
        [jsonl(f, *LABELLED_TWO), "--budget", "1", "--model", "tiny-random", "-o", "/sys/kernel/run"],
        ["/sys/kernel", "cannot write in this folder"]), marks=[NO_UNWRITABLE_FOLDER]),
]

ALL_CASES = SCORE_CASES + SELECT_CASES + OTHER_COMMAND_CASES + ISSUE_19_CASES


# -- running --------------------------------------------------------------------------------------


def require_command(command: str, options: tuple[str, ...], has_output: bool = True) -> None:
    """Fail unless ``tunewise COMMAND --help`` works and lists every option the case uses: a renamed
    command or flag breaks the contract users' scripts rely on."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, f"`tunewise {command} --help` exited {result.exit_code}"
    missing = [option for option in (*options, *(("-o",) if has_output else ())) if option not in result.output]
    assert not missing, f"`tunewise {command}` has no {', '.join(missing)} option"


def run(command: str, arguments: list, via_subprocess: bool) -> tuple[int, str]:
    arguments = [command, *map(str, arguments)]
    if via_subprocess:
        if not ENTRY_POINT.exists():
            pytest.skip(f"the tunewise entry point is not installed at {ENTRY_POINT}")
        completed = subprocess.run([str(ENTRY_POINT), *arguments], capture_output=True, timeout=300,
                                   env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="250"))
        return completed.returncode, (completed.stdout + completed.stderr).decode("utf-8", "replace")
    result = CliRunner().invoke(app, arguments)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unhandled {type(result.exception).__name__}: {result.exception}\n{result.output}")
    return result.exit_code, result.output


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def file_digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name, marks=case.marks) for case in ALL_CASES])
def test_hostile_input_exits_2_with_a_message_and_writes_nothing(case, tmp_path):
    if case.command != "score":
        require_command(case.command, case.needs_options, case.has_output)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    output = out_folder / ("result.jsonl" if case.command == "select" else
                           "result" if case.command in ("plan", "sweep") else
                           "result.json" if case.command == "tune-weights" else "result.parquet")
    arguments, fragments = case.build(inputs)
    arguments = [str(a).replace("{out}", str(output)) for a in arguments]
    before = files_under(inputs), file_digests(inputs)

    exit_code, message = run(case.command, arguments,
                             case.subprocess or (case.command != "score" and not case.in_process))

    assert exit_code == 2, message
    assert "Traceback" not in message
    for usage_error in ("No such option", "Missing option", "Missing argument", "unexpected extra argument"):
        assert usage_error not in message, message  # a renamed flag must not pass for a rejected input
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the message:\n{message}"
    assert files_under(out_folder) == [], "partial output left behind"
    assert (files_under(inputs), file_digests(inputs)) == before, \
        "the inputs were changed or temporary files were left beside them"


def test_there_are_at_least_thirty_hostile_cases():
    assert len(SCORE_CASES) >= 30 and len({case.name for case in ALL_CASES}) == len(ALL_CASES)


# -- hostile but recoverable ----------------------------------------------------------------------


@pytest.mark.integration
def test_skipped_records_are_listed_verbatim_even_when_they_look_like_markup(tmp_path):
    """Rich markup in a skipped record must neither crash the listing nor be swallowed by it."""
    pool = jsonl(tmp_path, record(GOOD), record({"messages": [{"role": "[/bold]", "content": "q"}]}),
                 '{"question": "[red]unterminated')
    output = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["score", str(pool), "-o", str(output), "--model", "tiny-random",
                                      "--indicators", "length", "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "unknown role '[/bold]'" in result.output
    assert f"{pool}:3: malformed JSON" in result.output
    assert output.exists()


def test_select_budget_larger_than_the_pool_stops_unless_capped_to_the_pool(tmp_path):
    """A budget above the pool exits 2; --cap-to-pool takes DESIGN.md §3's Σ b_t = min(B, Σ n_t)."""
    require_command("select", ("--budget", "--strategy"))
    output = tmp_path / "selection.jsonl"
    arguments = ["select", str(scores_file(tmp_path)), "-o", str(output), "--strategy", "random", "--budget", "60"]
    refused = CliRunner().invoke(app, arguments)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "larger than the pool (6 examples)" in refused.output and "--cap-to-pool" in refused.output
    assert not output.exists()
    capped = CliRunner().invoke(app, [*arguments, "--cap-to-pool"])
    assert capped.exit_code == 0, capped.output
    assert "larger than the pool" in capped.output
    assert len(output.read_text(encoding="utf-8").splitlines()) == 6

@pytest.mark.integration
def test_user_strings_that_look_like_rich_markup_are_printed_verbatim(tmp_path):
    """Task names and paths are the user's text: printed as written, never read as Rich markup."""
    tasks = ["[/]", "[bold]b[/bold]"]
    pool = jsonl(tmp_path, *(record({"question": f"What is {i} + {i}?", "answer": str(2 * i), "task": tasks[i % 2]})
                             for i in range(6)))
    folder = tmp_path / "out[red]"
    scores = folder / "scores[/].parquet"
    scored = CliRunner().invoke(app, ["score", str(pool), "-o", str(scores), "--model", "tiny-random", "--task-field",
                                      "task", "--indicators", "length,confidence", "--max-new-tokens", "2"],
                                env={"COLUMNS": "250"})
    assert scored.exit_code == 0, scored.output
    assert str(scores) in scored.output and all(task in scored.output for task in tasks)
    selection = folder / "[/]selection.jsonl"
    selected = CliRunner().invoke(app, ["select", str(scores), "-o", str(selection), "--strategy", "task_diversity",
                                        "--budget", "2"], env={"COLUMNS": "250"})
    assert selected.exit_code == 0, selected.output
    assert str(selection) in selected.output and all(task in selected.output for task in tasks)


def test_a_full_disk_is_exit_2_naming_the_file_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """The disk fills up while the output is written, after all the work: a message, no traceback."""
    import errno

    real_write = Path.write_bytes

    def no_space(self, data):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    real_write_table = pq.ParquetWriter.write_table

    def no_space_while_streaming(self, table, *args, **kwargs):
        if isinstance(self.where, (str, Path)):  # a file on disk, not an in-memory buffer
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_table(self, table, *args, **kwargs)

    scores = scores_file(tmp_path)
    pool = jsonl(tmp_path, record(GOOD))
    out = tmp_path / "out"
    monkeypatch.setattr(Path, "write_bytes", no_space)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", no_space_while_streaming)
    for arguments in (["select", scores, "--strategy", "random", "--budget", "2", "-o", out / "selection.jsonl"],
                      ["score", pool, "--model", "tiny-random", "--indicators", "confidence", "--max-new-tokens", "2",
                       "-o", out / "s.parquet"],
                      ["score", pool, "--model", "tiny-random", "--indicators", "length", "-o", out / "s.parquet"]):
        result = CliRunner().invoke(app, [str(a) for a in arguments])
        assert result.exit_code == 2, result.output
        assert "no space left on the device" in result.output and str(out) in result.output
        assert not isinstance(result.exception, OSError)
        assert not out.exists()  # not even the folder the write made
