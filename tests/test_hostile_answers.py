"""Issue 18: no silently wrong numbers. Each kind of input peers' users report (answers written in
prose, sequences too long for the model, chat templates that refuse a record, budgets that select
nothing) gives the right value or exit code 2 with the file, line and fix; each right value (the
extracted answer, the refusal and its message, the truncation count) is asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tunewise.cli import _register_commands, app
from tunewise.data.pool import read_pool
from tunewise.data.table import write_scores
from tunewise.errors import TunewiseError
from tunewise.model.chat import render_chat
from tunewise.model.load import build_tiny_tokenizer

_register_commands()

# Rejects two turns of one role in a row, as Llama-2, Mistral and Gemma templates do.
STRICT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 > 0 and message['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TWO_USER_TURNS = {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"},
                               {"role": "assistant", "content": "Yes"}]}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def invoke(*arguments) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in arguments])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unhandled {type(result.exception).__name__}: {result.exception}\n{result.output}")
    return result.exit_code, result.output


def refused(arguments, *fragments) -> str:
    exit_code, output = invoke(*arguments)
    assert exit_code == 2, output
    assert "Traceback" not in output
    flat = " ".join(output.split())
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} not in:\n{output}"
    return flat


# -- answers written in prose, scored from a predictions file -------------------------------------

CHOICE_TEST = [
    {"question": "Pick: (A) red (B) blue (C) green", "answer": "(C)", "task": "choice"},
    {"question": "Pick: (A) one (B) two ... (K) eleven", "answer": "K", "task": "choice"},
    {"question": "How many?", "answer": "#### 1,234", "task": "math"},
    {"question": "Temperature?", "answer": "-4", "task": "math"},
    {"question": "Capital of Japan?", "answer": "Tokyo", "task": "words"},
]
PROSE = ["I think the answer is (C).", "Option K, since eleven is prime.", "So she has 1,234 marbles.",
         "It fell to −4 degrees", "Ｔｏｋｙｏ。"]


def test_predictions_written_in_prose_score_as_a_grader_scores_them(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", CHOICE_TEST)
    examples = read_pool(test, "task").examples
    predictions = write_jsonl(tmp_path / "pred.jsonl", [
        {"id": e.id, "prediction": p} if i % 2 else {"line": i + 1, "prediction": p}
        for i, (e, p) in enumerate(zip(examples, PROSE))
    ])
    output = tmp_path / "results.json"
    exit_code, message = invoke("evaluate", test, "--task-field", "task", "--predictions", predictions, "-o", output)
    assert exit_code == 0, message
    results = json.loads(output.read_text())
    assert results["config"]["metrics"] == {"choice": "multiple_choice", "math": "gsm8k", "words": "exact_match"}
    assert results["average"] == 1.0
    assert [s["extracted"] for s in results["samples"]] == ["C", "K", "1234", "-4", "tokyo"]
    assert [s["prediction"] for s in results["samples"]] == PROSE  # the raw text beside what was read
    assert results["config"]["predictions"] == str(predictions)


def test_a_wrong_answer_in_prose_is_wrong(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", CHOICE_TEST[:1])
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"line": 1, "prediction": "I think it is (A) or (B)"}])
    output = tmp_path / "results.json"
    assert invoke("evaluate", test, "--task-field", "task", "--predictions", predictions, "-o", output)[0] == 0
    sample = json.loads(output.read_text())["samples"][0]
    assert sample["extracted"] is None and sample["correct"] is False


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        ([{"line": 1, "prediction": "(C)"}], ["test.jsonl:2", "1 of 2 test items have no prediction"]),
        ([{"line": 1, "prediction": "a"}, {"line": 2, "prediction": "b"}, {"line": 3, "prediction": "c"}],
         ["pred.jsonl:3", "line 3 is not an item of the test set"]),
        ([{"line": 1, "prediction": "a"}, {"line": 1, "prediction": "b"}],
         ["pred.jsonl:2", "a second prediction for line 1 (the first is on line 1)"]),
        ([{"id": "nope", "prediction": "a"}], ["pred.jsonl:1", "id nope is not an item of the test set"]),
        ([{"line": 1, "answer": "a"}], ["pred.jsonl:1", "no text 'prediction'"]),
        ([{"prediction": "a"}], ["pred.jsonl:1", "names no test item"]),
        (['{"line": 1, "prediction": "cut'], ["pred.jsonl:1", "not valid JSON"]),
    ],
    ids=["missing", "extra", "duplicate", "unknown-id", "no-prediction", "no-key", "bad-json"],
)
def test_predictions_that_do_not_match_the_test_set_are_refused(tmp_path, lines, fragments):
    test = write_jsonl(tmp_path / "test.jsonl", CHOICE_TEST[:2])
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    output = tmp_path / "results.json"
    refused(["evaluate", test, "--task-field", "task", "--predictions", predictions, "-o", output], *fragments)
    assert not output.exists()


def test_predictions_refuse_the_log_likelihood_metric(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", CHOICE_TEST[:1])
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"line": 1, "prediction": "(C)"}])
    refused(["evaluate", test, "--predictions", predictions, "--metric", "log_likelihood", "-o", tmp_path / "r.json"],
            "log_likelihood scores the gold answer with the model")


# -- lengths ----------------------------------------------------------------------------------------

LONG = {"question": "Repeat: " + "x" * 2100, "answer": "ok"}  # > tiny-random's 2048-token context
SHORT = {"question": "Say ok", "answer": "ok"}


@pytest.mark.integration
def test_evaluate_refuses_a_prompt_longer_than_the_context_naming_its_line(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [SHORT, LONG])
    output = tmp_path / "results.json"
    refused(["evaluate", test, "--model", "tiny-random", "--max-new-tokens", "4", "-o", output],
            "test.jsonl:2", "1 of 2 examples do not fit the model's 2048-token context", "--truncate")
    assert not output.exists()


@pytest.mark.integration
def test_evaluate_truncate_cuts_and_counts(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [SHORT, LONG])
    output = tmp_path / "results.json"
    exit_code, message = invoke("evaluate", test, "--model", "tiny-random", "--max-new-tokens", "4", "--truncate",
                                "-o", output)
    assert exit_code == 0, message
    results = json.loads(output.read_text())
    assert results["config"]["truncated"] == 1
    assert [s["truncated"] for s in results["samples"]] == [False, True]
    assert "truncated: 1 of 2 prompts" in message


@pytest.mark.integration
def test_log_likelihood_refuses_a_sequence_longer_than_the_context(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [SHORT, {"question": "Say it", "answer": "y" * 2100}])
    refused(["evaluate", test, "--model", "tiny-random", "--metric", "log_likelihood", "-o", tmp_path / "r.json"],
            "test.jsonl:2", "(prompt + gold answer)")


@pytest.mark.integration
def test_score_refuses_an_example_longer_than_the_context(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [SHORT, LONG])
    output = tmp_path / "scores.parquet"
    refused(["score", pool, "--model", "tiny-random", "--indicators", "loss", "-o", output],
            "pool.jsonl:2", "do not fit the model's 2048-token context")
    assert not output.exists()


@pytest.mark.integration
def test_finetune_refuses_an_example_over_max_seq_length_naming_its_line(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [SHORT, {"question": "q" * 100, "answer": "a"}])
    output = tmp_path / "adapter"
    refused(["finetune", pool, "--model", "tiny-random", "--max-seq-length", "64", "--max-steps", "1", "-o", output],
            "pool.jsonl:2", "do not fit --max-seq-length 64", "--truncate")
    assert not output.exists()


@pytest.mark.integration
def test_finetune_refuses_when_no_example_keeps_a_response_token(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"question": "q" * 100, "answer": "a"},
                                                {"question": "r" * 100, "answer": "b"}])
    output = tmp_path / "adapter"
    refused(["finetune", pool, "--model", "tiny-random", "--max-seq-length", "64", "--max-steps", "1", "--truncate",
             "-o", output], "no example keeps a response token", "pool.jsonl:1")
    assert not output.exists()


@pytest.mark.integration
def test_finetune_truncate_names_the_examples_that_train_nothing(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [SHORT, {"question": "q" * 100, "answer": "a"}])
    output = tmp_path / "adapter"
    exit_code, message = invoke("finetune", pool, "--model", "tiny-random", "--max-seq-length", "64",
                                "--max-steps", "1", "--truncate", "-o", output)
    assert exit_code == 0, message
    flat = " ".join(message.split())
    assert "1 examples keep no response token" in flat and "pool.jsonl:2" in flat
    lengths = json.loads((output / "tunewise_adapter.json").read_text())["training"]["lengths"]
    assert lengths["truncated"] == [f"{pool}:2"] and lengths["without_response"] == [f"{pool}:2"]


# -- chat templates ---------------------------------------------------------------------------------


def test_render_chat_turns_a_template_error_into_a_named_refusal(tmp_path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = STRICT_TEMPLATE
    pool = write_jsonl(tmp_path / "pool.jsonl", [SHORT, TWO_USER_TURNS])
    example = read_pool(pool).examples[1]
    with pytest.raises(TunewiseError) as caught:
        render_chat(tokenizer, example.prompt, add_generation_prompt=True, source=example)
    error = caught.value
    assert (error.file, error.line) == (str(pool), 2)
    assert "Conversation roles must alternate" in error.message and "roles user → user" in error.message
    assert "merge consecutive 'user' turns" in error.fix
    assert render_chat(tokenizer, read_pool(pool).examples[0].prompt, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n")


def test_render_chat_without_a_template_is_refused():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(TunewiseError, match="no chat template"):
        render_chat(tokenizer, [{"role": "user", "content": "hi"}], add_generation_prompt=True, source=("f.jsonl", 3))


@pytest.fixture(scope="module")
def strict_template_model(tmp_path_factory):
    """tiny-random saved as a model folder whose chat template forbids repeated roles."""
    from tunewise.model.load import load_model

    loaded = load_model("tiny-random")
    folder = tmp_path_factory.mktemp("strict-model")
    loaded.tokenizer.chat_template = STRICT_TEMPLATE
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.integration
@pytest.mark.parametrize("command", ["evaluate", "finetune", "score"])
def test_every_command_names_the_record_a_template_refuses(tmp_path, strict_template_model, command):
    pool = write_jsonl(tmp_path / "pool.jsonl", [SHORT, TWO_USER_TURNS])
    extra = {"evaluate": ["--max-new-tokens", "2"], "finetune": ["--max-steps", "1"],
             "score": ["--indicators", "loss"]}[command]
    output = tmp_path / ("adapter" if command == "finetune" else "out.parquet" if command == "score" else "r.json")
    refused([command, pool, "--model", strict_template_model, *extra, "-o", output],
            "pool.jsonl:2", "Conversation roles must alternate", "merge consecutive 'user' turns")
    assert not output.exists()


# -- budgets and fractions --------------------------------------------------------------------------


def ten_row_scores(folder: Path, tasks: int = 1) -> Path:
    path = folder / "scores.parquet"
    write_scores(pd.DataFrame({"id": [f"ex{i}" for i in range(10)], "task": [f"t{i % tasks}" for i in range(10)],
                               "confidence": [i / 10 for i in range(10)]}), path, {"model_fingerprint": "fake-v1"})
    return path


def test_a_fraction_that_selects_nothing_is_refused(tmp_path):
    output = tmp_path / "selection.jsonl"
    refused(["select", ten_row_scores(tmp_path), "--fraction", "0.04", "--strategy", "random", "-o", output],
            "--fraction 0.04 of 10 examples selects none (0.4 rounds to 0)", "--fraction 0.05 or more")
    assert not output.exists()


def test_a_zero_budget_is_refused(tmp_path):
    refused(["select", ten_row_scores(tmp_path), "--budget", "0", "--strategy", "random", "-o", tmp_path / "s.jsonl"],
            "--budget 0 selects nothing")


def test_fewer_picks_than_tasks_says_which_tasks_get_none(tmp_path):
    output = tmp_path / "selection.jsonl"
    exit_code, message = invoke("select", ten_row_scores(tmp_path, tasks=5), "--budget", "3", "--strategy",
                                "task_diversity", "-o", output)
    assert exit_code == 0, message
    meta = json.loads(output.with_name("selection.meta.json").read_text())
    note = next(n for n in meta["notes"] if "get no example" in n)
    assert note.startswith("2 of 5 tasks get no example from 3 picks") and "(fewer picks than tasks)" in note
    assert "2 of 5 tasks get no example" in " ".join(message.split())


def test_context_length_reads_learned_position_models_and_tokenizer_limits():
    """GPT-2 names its context n_positions; a real tokenizer limit lowers it; the sentinel does not."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tunewise.model.lengths import context_length

    model = GPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=8, n_layer=1, n_head=1, vocab_size=32))
    tokenizer = build_tiny_tokenizer()
    tokenizer.model_max_length = int(1e30)
    assert context_length(model, tokenizer) == 64
    tokenizer.model_max_length = 48
    assert context_length(model, tokenizer) == 48
    assert context_length(object()) is None
