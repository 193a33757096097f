"""Every common record shape read right, none silently (issue 16): each against a hand-written
expectation of turns, response, task and id."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunewise.data.pool import Columns, example_id, parse_record, read_pool
from tunewise.errors import TunewiseError

U, A, S = "user", "assistant", "system"


def turns(*pairs):
    return tuple({"role": role, "content": content} for role, content in pairs)


CASES = {
    "dolly": ({"instruction": "Summarise.", "context": "Cats sleep a lot.", "response": "Cats nap.",
               "category": "summarization"},
              turns((U, "Summarise.\n\nCats sleep a lot.")), "Cats nap."),
    "alpaca_with_system_and_history": (
        {"instruction": "And 3 + 3?", "input": "", "output": "6", "system": "You add numbers.",
         "history": [["1 + 1?", "2"], ["2 + 2?", "4"]]},
        turns((S, "You add numbers."), (U, "1 + 1?"), (A, "2"), (U, "2 + 2?"), (A, "4"), (U, "And 3 + 3?")), "6"),
    "sharegpt_with_system_turn_and_tools": (
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Weather?"},
                           {"from": "gpt", "value": "Sunny."}],
         "tools": '[{"name": "weather"}]'},
        turns((S, 'You can call these tools:\n[{"name": "weather"}]'), (S, "Be brief."), (U, "Weather?")), "Sunny."),
    "sharegpt_record_level_system": (
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "Be kind."},
        turns((S, "Be kind."), (U, "Hi")), "Hello"),
    "trl_conversational_prompt_completion": (
        {"prompt": [{"role": "user", "content": "Capital of France?"}],
         "completion": [{"role": "assistant", "content": "Paris."}]},
        turns((U, "Capital of France?")), "Paris."),
    "query_response": ({"query": "2 * 4?", "response": "8"}, turns((U, "2 * 4?")), "8"),
    "problem_solution": ({"problem": "Solve x + 1 = 3.", "solution": "x = 2"}, turns((U, "Solve x + 1 = 3.")), "x = 2"),
    "input_output": ({"input": "Reverse abc.", "output": "cba"}, turns((U, "Reverse abc.")), "cba"),
    "question_blank_answer_is_unlabelled": ({"question": "Why?", "answer": "   "}, turns((U, "Why?")), None),
}


@pytest.mark.parametrize("name", CASES)
def test_shape_gives_the_expected_turns_and_response(name):
    record, prompt, response = CASES[name]
    example = parse_record(record)
    assert example.prompt == prompt
    assert example.response == response
    assert example.id == example_id(list(prompt), response)


def test_columns_map_named_fields_and_keep_the_users_id():
    record = {"uid": "r-17", "ask": "Name a prime.", "reply": "7", "sys": "Be exact.", "topic": "math"}
    columns = Columns(prompt_field="ask", response_field="reply", system_field="sys", id_field="uid")
    example = parse_record(record, task_field="topic", columns=columns)
    assert example.prompt == turns((S, "Be exact."), (U, "Name a prime."))
    assert (example.response, example.task, example.user_id) == ("7", "math", "r-17")
    assert example.metadata == {}


def test_columns_messages_field_and_history_field():
    record = {"chat": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}], "past": [["a", "b"]]}
    example = parse_record(record, columns=Columns(messages_field="chat", history_field="past"))
    assert example.prompt == turns((U, "a"), (A, "b"), (U, "Hi")) and example.response == "Hey"


def test_a_mapped_field_that_is_absent_is_refused_with_a_suggestion():
    with pytest.raises(TunewiseError, match="no field 'promt'") as caught:
        parse_record({"prompt": "x"}, columns=Columns(prompt_field="promt"))
    assert "did you mean 'prompt'" in caught.value.fix


def test_a_completion_of_several_messages_is_refused():
    with pytest.raises(TunewiseError, match="one assistant message"):
        parse_record({"prompt": [{"role": "user", "content": "q"}],
                      "completion": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]})


def test_unused_text_fields_are_reported_once_with_a_count(tmp_path):
    path = tmp_path / "pool.jsonl"
    records = [{"question": f"q{i}", "answer": "a", "explanation": f"because {i}", "n": i} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    pool = read_pool(path)
    assert pool.unused_fields == {"explanation": 3}  # text only: the number 'n' is no text a reader could use
    (note,) = pool.notes()
    assert "'explanation' of 3 records" in note
    assert pool.examples[0].metadata["explanation"] == "because 0"  # kept with the example


def test_blank_fields_count_as_empty_in_every_shape():
    for record in ({"instruction": "  ", "output": "x"}, {"prompt": "\t", "response": "x"},
                   {"question": "\n", "answer": "x"}):
        with pytest.raises(TunewiseError, match="missing or empty"):
            parse_record(record)


def test_plan_and_score_take_the_column_flags(tmp_path):
    import tunewise.cli
    from tunewise.cli.app import app

    tunewise.cli._register_commands()
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"ask": f"q{i}", "reply": f"a{i}"}) + "\n" for i in range(4)))
    result = CliRunner().invoke(app, ["score", str(path), "-o", str(tmp_path / "s.parquet"), "--model", "tiny-random",
                                      "--indicators", "length", "--prompt-field", "ask", "--response-field", "reply"])
    assert result.exit_code == 0, result.output
    from tunewise.data.table import read_scores

    _, provenance = read_scores(tmp_path / "s.parquet")
    assert provenance["columns"] == {"prompt_field": "ask", "response_field": "reply"}
    result = CliRunner().invoke(app, ["evaluate", str(path), "-o", str(tmp_path / "r.json"), "--model", "tiny-random",
                                      "--prompt-field", "ask", "--response-field", "reply", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["config"]["columns"]["prompt_field"] == "ask"
