"""The pool reader (DESIGN.md §1 "Pool"): every record shape, every file kind, stable ids, errors."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunewise.errors import TunewiseError
from tunewise.data.pool import DEFAULT_TASK, example_id, parse_record, read_pool

QUESTION = "Add 2 and 3."
ANSWER = "2 + 3 = 5.\n#### 5"
USER_TURN = ({"role": "user", "content": QUESTION},)

# The same labelled example written in every record shape the reader understands.
SHAPES = {
    "openai_messages": {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]},
    "sharegpt": {"conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]},
    "alpaca": {"instruction": QUESTION, "input": "", "output": ANSWER},
    "prompt_completion": {"prompt": QUESTION, "completion": ANSWER},
    "prompt_response": {"prompt": QUESTION, "response": ANSWER},
    "question_answer": {"question": QUESTION, "answer": ANSWER},
}


# -- writers for every file kind ------------------------------------------------------------------


def write_jsonl(path: Path, records) -> Path:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_json_list(path: Path, records) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def write_json_wrapped(path: Path, records) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps({"version": 1, "data": records}), encoding="utf-8")
    return path


def write_csv(path: Path, records) -> Path:
    path = path.with_suffix(".csv")
    fields = list(dict.fromkeys(key for record in records for key in record))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path: Path, records) -> Path:
    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)
    return path


def write_saved_dataset(folder: Path, records, files: int = 1) -> Path:
    """A folder as ``datasets.Dataset.save_to_disk`` writes it: Arrow *stream* files + state.json.

    With several files, state.json lists them in reverse name order, so a reader that globbed
    and sorted the names instead of following state.json would get the records out of order.
    """
    folder = folder.with_suffix("")
    folder.mkdir()
    names = [f"data-{i:05d}-of-{files:05d}.arrow" for i in range(files)][::-1]
    per_file = -(-len(records) // files)
    for index, name in enumerate(names):
        chunk = records[index * per_file:(index + 1) * per_file]
        table = pa.Table.from_pylist(chunk)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=2)
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": "0123", "_split": None}
    (folder / "state.json").write_text(json.dumps(state), encoding="utf-8")
    return folder


FILE_KINDS = {
    "jsonl": write_jsonl,
    "json_list": write_json_list,
    "json_wrapped": write_json_wrapped,
    "csv": write_csv,
    "parquet": write_parquet,
    "saved_dataset": write_saved_dataset,
    "saved_dataset_two_files": lambda path, records: write_saved_dataset(path, records, files=2),
}

# Flat, string-valued records, so every file kind (CSV included) can hold them unchanged.
MIXED_RECORDS = [
    {"question": "What is 1 + 1?", "answer": "2", "topic": "math", "source": "drill"},
    {"question": "Capital of France?", "answer": "Paris", "topic": "geo", "source": "quiz"},
    {"question": "What is 3 * 3?", "answer": "9", "topic": "math", "source": "drill"},
    {"question": "Longest river?", "answer": "The Nile", "topic": "geo", "source": "quiz"},
    {"question": "What is 10 / 2?", "answer": "5", "topic": "math", "source": "book"},
]


def expected_id(question: str, answer: str | None) -> str:
    return example_id([{"role": "user", "content": question}], answer)


# -- record shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_every_record_shape_gives_the_same_example(shape):
    example = parse_record(SHAPES[shape])
    assert example.prompt == USER_TURN
    assert example.response == ANSWER
    assert example.task == DEFAULT_TASK
    assert example.id == example_id(USER_TURN, ANSWER)
    assert example.metadata == {}


def test_example_ids_are_pinned_so_caches_from_earlier_runs_stay_valid():
    # A changed hash would silently orphan every cached score: this value must never change.
    assert example_id(USER_TURN, ANSWER) == "76fa00c6440a6d7f"
    assert example_id(USER_TURN, None) == "2511466e67eb239d"


def test_alpaca_input_is_appended_to_the_instruction():
    example = parse_record({"instruction": "Translate to French.", "input": "cat", "output": "chat"})
    assert example.prompt == ({"role": "user", "content": "Translate to French.\n\ncat"},)
    assert example.response == "chat"


def test_multi_turn_conversation_keeps_system_and_earlier_turns_in_the_prompt():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
    ]
    example = parse_record({"messages": messages})
    assert list(example.prompt) == messages[:-1]
    assert example.response == "7"
    assert example.messages == messages


def test_sharegpt_roles_are_normalised():
    example = parse_record({"conversations": [
        {"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
    ]})
    assert [turn["role"] for turn in example.prompt] == ["system", "user"]
    assert example.response == "a"


def test_prompt_given_as_a_list_of_turns_is_kept_whole():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    example = parse_record({"prompt": turns, "completion": "Hello."})
    assert list(example.prompt) == turns
    assert example.response == "Hello."


def test_numeric_answers_become_text():
    assert parse_record({"question": "2 + 2?", "answer": 4}).response == "4"


def test_completion_wins_when_a_record_has_both_completion_and_response():
    example = parse_record({"prompt": "p", "completion": "c", "response": "r"})
    assert example.response == "c"
    assert example.metadata == {"response": "r"}


# -- unlabelled pools -----------------------------------------------------------------------------


@pytest.mark.parametrize("record", [
    {"question": QUESTION},
    {"prompt": QUESTION},
    {"prompt": QUESTION, "response": None},
    {"instruction": QUESTION},
    {"messages": [{"role": "user", "content": QUESTION}]},
    {"conversations": [{"from": "human", "value": QUESTION}]},
], ids=["question", "prompt", "null_response", "alpaca", "messages", "sharegpt"])
def test_records_without_an_answer_are_unlabelled(record):
    example = parse_record(record)
    assert example.response is None
    assert example.prompt == USER_TURN
    assert example.id == example_id(USER_TURN, None)
    assert example.messages == [{"role": "user", "content": QUESTION}]


def test_unlabelled_and_mixed_pools(tmp_path):
    unlabelled = read_pool(write_jsonl(tmp_path / "u", [{"question": "a"}, {"question": "b"}]))
    assert not unlabelled.labelled
    assert [e.response for e in unlabelled.examples] == [None, None]
    mixed = read_pool(write_jsonl(tmp_path / "m", [{"question": "a", "answer": "1"}, {"question": "b"}]))
    assert not mixed.labelled
    labelled = read_pool(write_jsonl(tmp_path / "l", [{"question": "a", "answer": "1"}]))
    assert labelled.labelled


# -- file kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_every_file_kind_reads_the_same_examples_in_order(tmp_path, kind):
    path = FILE_KINDS[kind](tmp_path / "pool", MIXED_RECORDS)
    pool = read_pool(path, task_field="topic")
    assert [e.id for e in pool.examples] == [expected_id(r["question"], r["answer"]) for r in MIXED_RECORDS]
    assert [e.task for e in pool.examples] == [r["topic"] for r in MIXED_RECORDS]
    assert [e.response for e in pool.examples] == [r["answer"] for r in MIXED_RECORDS]
    assert [e.metadata for e in pool.examples] == [{"source": r["source"]} for r in MIXED_RECORDS]
    assert pool.tasks == ["math", "geo"]
    assert pool.skipped == []
    assert pool.source == str(path)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "saved_dataset"])
def test_chat_records_survive_nested_columns(tmp_path, kind):
    records = [dict(SHAPES["openai_messages"], task="t1"), dict(SHAPES["openai_messages"], task="t2")]
    records[1]["messages"] = [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "x"}]
    pool = read_pool(FILE_KINDS[kind](tmp_path / "chat", records), task_field="task")
    assert [e.id for e in pool.examples] == [example_id(USER_TURN, ANSWER), expected_id("Other", "x")]
    assert pool.tasks == ["t1", "t2"]


def test_ids_do_not_depend_on_the_process(tmp_path):
    """Same file, fresh interpreter with a different hash seed: same ids."""
    import os
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "pool", MIXED_RECORDS)
    code = ("import sys; from tunewise.data.pool import read_pool; "
            "print(' '.join(e.id for e in read_pool(sys.argv[1]).examples))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    output = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                            check=True).stdout.split()
    assert output == [e.id for e in read_pool(path).examples]


def test_without_a_task_field_every_example_is_task_default(tmp_path):
    pool = read_pool(write_jsonl(tmp_path / "pool", MIXED_RECORDS))
    assert pool.tasks == [DEFAULT_TASK]
    assert all(e.metadata["topic"] in ("math", "geo") for e in pool.examples)


def test_task_field_values_that_are_numbers_become_text(tmp_path):
    pool = read_pool(write_jsonl(tmp_path / "pool", [{"question": "a", "split": 3}]), task_field="split")
    assert pool.tasks == ["3"]


def test_metadata_keeps_every_field_that_is_not_part_of_the_example(tmp_path):
    record = {"prompt": "p", "response": "r", "id": "row-7", "score": 0.5, "tags": ["a", "b"], "nested": {"k": 1}}
    (example,) = read_pool(write_jsonl(tmp_path / "pool", [record])).examples
    assert example.metadata == {"id": "row-7", "score": 0.5, "tags": ["a", "b"], "nested": {"k": 1}}


def test_limit_keeps_the_first_good_examples(tmp_path):
    pool = read_pool(write_jsonl(tmp_path / "pool", MIXED_RECORDS), limit=2)
    assert [e.response for e in pool.examples] == ["2", "Paris"]


def test_blank_lines_are_ignored_and_line_numbers_stay_physical(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"question": "a"}\n\n   \n{"question": "b", "answer": 1, "x": }\n', encoding="utf-8")
    with pytest.raises(TunewiseError) as caught:
        read_pool(path)
    assert caught.value.line == 4


def test_byte_order_mark_is_tolerated(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"question": "a", "answer": "b"}).encode() + b"\n")
    csv_file = tmp_path / "bom.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfquestion,answer\na,b\n")
    assert read_pool(jsonl).examples[0].id == read_pool(csv_file).examples[0].id == expected_id("a", "b")


def test_csv_errors_report_the_physical_line_after_a_multi_line_cell(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text('question,answer\n"line one\nline two",x\n,y\n', encoding="utf-8")
    with pytest.raises(TunewiseError) as caught:
        read_pool(path)
    assert (caught.value.line, caught.value.field) == (4, "question")


def test_csv_cells_longer_than_the_csv_module_default_limit_are_read(tmp_path):
    long_prompt = "word " * 60_000  # 300 KB, over csv's 128 KiB default field limit
    path = write_csv(tmp_path / "pool", [{"prompt": long_prompt, "response": "ok"}])
    limit_before = csv.field_size_limit()
    (example,) = read_pool(path).examples
    assert example.prompt[0]["content"] == long_prompt
    assert csv.field_size_limit() == limit_before  # the process-wide limit is restored afterwards


def test_saved_dataset_numbers_records_across_its_files(tmp_path):
    records = [{"prompt": f"p{i}", "response": "r"} for i in range(5)]
    records[3] = {"prompt": "", "response": "r"}
    folder = write_saved_dataset(tmp_path / "ds", records, files=2)
    with pytest.raises(TunewiseError) as caught:
        read_pool(folder)
    assert (caught.value.line, caught.value.field) == (4, "prompt")


# -- bad records and skip_bad ---------------------------------------------------------------------

BAD_LINES = [
    '{"question": "fine", "answer": "1"}',
    '{"question": "broken", "answer": ',  # 2: malformed JSON
    '{"messages": [{"role": "wizard", "content": "x"}]}',  # 3: unknown role
    '{"question": "also fine"}',
    '["a", "list"]',  # 5: not an object
    '{"question": "fine", "answer": "1"}',  # 6: duplicate of line 1
    '{"title": "no known fields"}',  # 7: unrecognised shape
]


def write_lines(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_first_bad_record_stops_the_read_naming_file_line_field_and_fix(tmp_path):
    path = write_lines(tmp_path / "pool.jsonl", BAD_LINES)
    with pytest.raises(TunewiseError) as caught:
        read_pool(path)
    error = caught.value
    assert (error.file, error.line) == (str(path), 2)
    assert "malformed JSON" in error.message and error.fix
    assert str(error).startswith(f"{path}:2: ")


def test_skip_bad_lists_every_skipped_record_and_keeps_the_rest(tmp_path):
    path = write_lines(tmp_path / "pool.jsonl", BAD_LINES)
    pool = read_pool(path, skip_bad=True)
    assert [e.id for e in pool.examples] == [expected_id("fine", "1"), expected_id("also fine", None)]
    assert [(s.file, s.line) for s in pool.skipped] == [(str(path), n) for n in (2, 3, 5, 7)]
    reasons = [s.reason for s in pool.skipped]
    assert "malformed JSON" in reasons[0]
    assert "unknown role 'wizard'" in reasons[1]
    assert "got list" in reasons[2]
    assert "unrecognised record shape" in reasons[3]
    assert pool.duplicates == [(6, 1)]  # an exact repeat is merged, not an error


def test_skip_bad_also_skips_a_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b'{"question": "a"}\n{"question": "\xff\xfe"}\n{"question": "b"}\n')
    with pytest.raises(TunewiseError, match="UTF-8") as caught:
        read_pool(path)
    assert caught.value.line == 2
    pool = read_pool(path, skip_bad=True)
    assert len(pool) == 2 and [s.line for s in pool.skipped] == [2]


def test_a_pool_of_only_bad_records_says_how_many_were_skipped(tmp_path):
    path = write_lines(tmp_path / "pool.jsonl", ['{"x": 1}', "nope"])
    with pytest.raises(TunewiseError, match=r"no usable examples \(2 bad records skipped\)"):
        read_pool(path, skip_bad=True)


def test_duplicate_is_merged_into_its_first_occurrence_and_listed(tmp_path):
    path = write_lines(tmp_path / "pool.jsonl", ['{"prompt": "p", "response": "r"}', '{"question": "q"}',
                                                 '{"messages": [{"role": "user", "content": "p"},'
                                                 ' {"role": "assistant", "content": "r"}]}'])
    pool = read_pool(path)
    assert len(pool) == 2 and pool.duplicates == [(3, 1)]
    assert any("1 exact repeats merged" in note and "3 (= 1)" in note for note in pool.notes())
    kept = read_pool(path, keep_duplicates=True)
    assert [e.id for e in kept.examples] == [pool.examples[0].id, pool.examples[1].id, pool.examples[0].id + "~2"]


def test_unknown_task_field_names_the_field_and_suggests_a_close_one(tmp_path):
    path = write_jsonl(tmp_path / "pool", MIXED_RECORDS)
    with pytest.raises(TunewiseError) as caught:
        read_pool(path, task_field="topc")
    assert (caught.value.line, caught.value.field) == (1, "topc")
    assert "did you mean 'topic'" in caught.value.fix


@pytest.mark.parametrize("value", ["", None])
def test_empty_task_is_an_error_at_its_line(tmp_path, value):
    records = [dict(MIXED_RECORDS[0]), dict(MIXED_RECORDS[1], topic=value)]
    with pytest.raises(TunewiseError, match="task is empty") as caught:
        read_pool(write_jsonl(tmp_path / "pool", records), task_field="topic")
    assert (caught.value.line, caught.value.field) == (2, "topic")


@pytest.mark.parametrize(("record", "field", "words"), [
    ({"prompt": "", "response": "r"}, "prompt", "missing or empty"),
    ({"question": None, "answer": "4"}, "question", "missing or empty"),
    ({"prompt": {"text": "p"}}, "prompt", "expected text, got dict"),
    ({"prompt": "p", "response": True}, "response", "expected text, got bool"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": "hello"}, "messages", "non-empty list"),
    ({"messages": ["hello"]}, "messages[0]", "needs 'role' and 'content'"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "expected text"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}, "messages", "empty"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "messages", "no prompt"),
    ({"conversations": [{"from": "alien", "value": "q"}]}, "conversations[0].from", "unknown role"),
    ({"instruction": "", "output": "o"}, "instruction", "missing or empty"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_invalid_records_name_the_field(record, field, words):
    with pytest.raises(TunewiseError, match=words) as caught:
        parse_record(record)
    assert caught.value.field == field
    assert caught.value.fix


def test_an_unpaired_surrogate_is_a_clear_error_not_an_encoding_crash(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "ok \\ud800", "response": "r"}\n', encoding="utf-8")
    with pytest.raises(TunewiseError, match="surrogate") as caught:
        read_pool(path)
    assert caught.value.line == 1
    str(caught.value).encode("utf-8")  # the message itself is printable


@pytest.mark.parametrize(("name", "content", "words"), [
    ("empty.jsonl", b"", "the file is empty"),
    ("pool.txt", b'{"question": "a"}\n', "unsupported pool file type '.txt'"),
    ("pool", b'{"question": "a"}\n', "unsupported pool file type '(none)'"),
    ("object.json", b'{"meta": 1}', "list of records"),
    ("scalar.json", b"42", "list of records"),
    ("truncated.json", b'[{"question": "a"}, {"quest', "malformed JSON"),
    ("garbage.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    ("nested.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
    ("huge_int.jsonl", b'{"prompt": ' + b"9" * 5000 + b"}\n", "malformed JSON"),
    ("latin1.csv", "question,answer\ncaf\xe9,x\n".encode("latin-1"), "not valid UTF-8"),
    ("only_header.csv", b"question,answer\n", "no usable examples"),
])
def test_unreadable_files_are_tunewise_errors_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TunewiseError, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
        read_pool(path)
    assert caught.value.file == str(path)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(TunewiseError, match="no such file"):
        read_pool(tmp_path / "absent.jsonl")


def test_parquet_with_a_damaged_body_is_an_error_naming_the_file(tmp_path):
    path = write_parquet(tmp_path / "pool", [{"prompt": f"p{i}" * 40, "response": "r" * 80} for i in range(500)])
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(4, len(data) - footer):  # keep magic and footer, destroy every page
        data[i] = 0xAB
    path.write_bytes(bytes(data))
    with pytest.raises(TunewiseError, match="Parquet") as caught:
        read_pool(path)
    assert caught.value.file == str(path)


@pytest.mark.parametrize("damage", ["no_state", "bad_state_json", "state_lists_missing_file", "garbage_arrow",
                                    "arrow_file_format_not_stream", "empty_folder"])
def test_broken_saved_dataset_folders_are_errors(tmp_path, damage):
    folder = write_saved_dataset(tmp_path / "ds", MIXED_RECORDS)
    arrow = folder / "data-00000-of-00001.arrow"
    if damage == "no_state":
        (folder / "state.json").unlink()
    elif damage == "bad_state_json":
        (folder / "state.json").write_text("{not json")
    elif damage == "state_lists_missing_file":
        (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "gone.arrow"}]}))
    elif damage == "garbage_arrow":
        arrow.write_bytes(b"garbage" * 50)
    elif damage == "arrow_file_format_not_stream":
        table = pa.Table.from_pylist(MIXED_RECORDS)
        with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    elif damage == "empty_folder":
        for child in folder.iterdir():
            child.unlink()
    with pytest.raises(TunewiseError) as caught:
        read_pool(folder)
    assert caught.value.file is not None and str(folder) in caught.value.file
    assert caught.value.fix


# -- property tests -------------------------------------------------------------------------------

texts = st.text(max_size=40)
answers = st.text(min_size=1, max_size=40).filter(lambda text: text.strip())
record_shapes = st.sampled_from(sorted(SHAPES))


def record_in_shape(shape: str, prompt: str, response: str | None) -> dict:
    if shape == "openai_messages":
        turns = [{"role": "user", "content": prompt}]
        return {"messages": turns + ([{"role": "assistant", "content": response}] if response is not None else [])}
    if shape == "sharegpt":
        turns = [{"from": "human", "value": prompt}]
        return {"conversations": turns + ([{"from": "gpt", "value": response}] if response is not None else [])}
    keys = {"alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
            "prompt_response": ("prompt", "response"), "question_answer": ("question", "answer")}[shape]
    return {keys[0]: prompt, **({keys[1]: response} if response is not None else {})}


@st.composite
def valid_pools(draw):
    """Records of mixed shapes with distinct contents; prompts must be non-empty in the flat shapes."""
    rows = draw(st.lists(st.tuples(record_shapes, texts, st.none() | answers), min_size=1, max_size=12))
    records, expected, seen = [], [], set()
    for shape, prompt, response in rows:
        if shape not in ("openai_messages", "sharegpt") and not prompt.strip():
            prompt = "p"  # an empty or blank flat prompt is (rightly) rejected as missing
        if response is not None and not response.strip():
            response = "r"  # a blank answer is no answer (unlabelled, or refused in a chat)
        identifier = example_id([{"role": "user", "content": prompt}], response)
        if identifier in seen:
            continue
        seen.add(identifier)
        records.append(record_in_shape(shape, prompt, response))
        expected.append(identifier)
    return records, expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_pools())
def test_any_jsonl_of_valid_records_round_trips(pool):
    records, expected = pool
    with tempfile.TemporaryDirectory() as folder:
        path = write_jsonl(Path(folder) / "pool", records)
        read = read_pool(path)
    assert len(read) == len(records)
    assert [e.id for e in read.examples] == expected
    assert [e.id for e in read.examples] == [example_id(e.prompt, e.response) for e in read.examples]
    assert read.skipped == []


# JSON values biased towards the reader's field names, so garbage reaches deep into the parser.
FIELD_NAMES = ["messages", "conversations", "role", "content", "from", "value", "instruction", "input", "output",
               "prompt", "completion", "response", "question", "answer", "task"]
ODD_STRINGS = st.sampled_from(["", " ", "user", "assistant", "gpt", "\ud800", "\x00", "[/bold]", "NaN", "\u2028"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | ODD_STRINGS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
# Records of a known shape with odd contents, some fields overwritten by arbitrary values.
near_valid_records = st.builds(
    lambda shape, prompt, response, overrides: {**record_in_shape(shape, prompt, response), **overrides},
    record_shapes, st.text(max_size=8) | ODD_STRINGS, st.none() | st.text(max_size=8) | ODD_STRINGS,
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=2),
)
garbage_lines = st.one_of(
    st.binary(max_size=60).map(lambda raw: raw.replace(b"\n", b" ")),
    json_values.map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps(value)[:-1].encode()),  # truncated
    near_valid_records.map(lambda value: json.dumps(value).encode()),
)


def read_or_refuse(path: Path, task_field: str | None, skip_bad: bool) -> None:
    """The property: read_pool returns examples with content ids, or raises a printable TunewiseError."""
    try:
        pool = read_pool(path, task_field, skip_bad=skip_bad)
    except TunewiseError as error:
        assert error.file is not None
        str(error).encode("utf-8")  # printable, whatever the input held
    else:
        assert len(pool) >= 1
        for example in pool.examples:
            assert example.id == example_id(example.prompt, example.response)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(garbage_lines, min_size=0, max_size=8),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]),
       skip_bad=st.booleans(), task_field=st.sampled_from([None, "task"]))
def test_garbage_gives_examples_or_a_tunewise_error_never_another_exception(lines, suffix, skip_bad, task_field):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"pool{suffix}"
        path.write_bytes(b"\n".join(lines))
        read_or_refuse(path, task_field, skip_bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(near_valid_records, min_size=1, max_size=6), task_field=st.sampled_from([None, "task"]))
def test_odd_values_in_known_shapes_give_examples_or_a_tunewise_error(records, task_field):
    """Every line parsed (skip_bad), so each odd value reaches the record parser."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pool.jsonl"
        path.write_text("".join(json.dumps(record) + "\n" for record in records))  # \u-escapes lone surrogates
        read_or_refuse(path, task_field, skip_bad=True)
