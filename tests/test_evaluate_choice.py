"""The ``choice`` metric (lm-evaluation-harness multiple choice): choice sets, acc and acc_norm,
and the packed pass against scoring each choice alone."""

from __future__ import annotations

import numpy as np
import pytest

from tunewise.data.pool import parse_record
from tunewise.errors import TunewiseError
from tunewise.model.load import build_tiny_tokenizer
from tunewise.training.evaluate import (
    CHOICE,
    MAX_LABEL_SET,
    choice_sets,
    evaluate,
    task_scores,
)


def example(question, answer, task="default", choices=None):
    record = {"question": question, "answer": answer, "task": task}
    if choices is not None:
        record["choices"] = choices
    return parse_record(record, task_field="task")


# -- choice sets (no model) -----------------------------------------------------------------------


def test_choices_come_from_the_field_or_the_task_label_set():
    examples = [
        example("Is 2 even?", "yes", "parity"),
        example("Is 3 even?", "no", "parity"),
        example("Is 4 even?", "yes", "parity"),
        example("Capital of France?", "Paris", "geo", choices=["Rome", "Paris", "Oslo"]),
        example("Capital of Norway?", "Oslo", "geo", choices=["Oslo", "Bern"]),
    ]
    choices, sources = choice_sets(examples)
    assert choices == [["yes", "no"]] * 3 + [["Rome", "Paris", "Oslo"], ["Oslo", "Bern"]]
    assert sources == {"parity": "label set of 2", "geo": "choices field"}


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ([example(f"q{n}", f"answer {n}") for n in range(MAX_LABEL_SET + 1)], "distinct gold answer"),
        ([example("q1", "same"), example("q2", "same")], "1 distinct gold answer"),
        ([example("q1", "a", choices=["a", "b"]), example("q2", "b")], "have a 'choices' field"),
        ([example("q1", "c", choices=["a", "b"])], "not among its choices"),
        ([example("q1", "a", choices=["a", "a"])], "distinct non-empty strings"),
        ([example("q1", "a", choices="a,b")], "distinct non-empty strings"),
        ([example("q1", "a", choices=["a"])], "distinct non-empty strings"),
    ],
)
def test_choice_sets_refuse_what_cannot_be_scored(examples, message):
    with pytest.raises(TunewiseError, match=message):
        choice_sets(examples)


def test_acc_takes_the_most_likely_choice_and_acc_norm_the_most_likely_per_character(monkeypatch):
    # Scripted log-likelihoods: "a" is likelier in total, "bbbb" per character.
    scripted = {"first": [-2.0, -4.0], "second": [-3.0, -3.0]}

    def fake(model, tokenizer, examples, choices, batch_tokens, progress):
        return [scripted[e.prompt[0]["content"]] for e in examples]

    monkeypatch.setattr("tunewise.training.evaluate.choice_log_likelihoods", fake)
    examples = [example("first", "bbbb", choices=["a", "bbbb"]), example("second", "a", choices=["a", "bbbb"])]
    results = evaluate(None, build_tiny_tokenizer(), examples, metric=CHOICE)
    first, second = results["samples"]
    assert (first["prediction"], first["correct"], first["prediction_norm"], first["correct_norm"]) == \
        ("a", False, "bbbb", True)
    # A tie in total goes to the first choice, as numpy's argmax does in lm-eval; per character
    # the same totals are -3 against -0.75, so "bbbb" wins acc_norm.
    assert (second["prediction"], second["correct"], second["prediction_norm"], second["correct_norm"]) == \
        ("a", True, "bbbb", False)
    entry = results["results"]["default"]
    assert entry["metric"] == CHOICE and entry[CHOICE] == 0.5 and entry["acc_norm"] == 0.5
    assert entry["chance"] == 0.5 and entry["n"] == 2
    assert task_scores(results) == {"default": 0.5}
    assert results["config"]["choices"] == {"default": "choices field"}


# -- on tiny-random (integration) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from tunewise.model.load import load_model

    return load_model("tiny-random", dtype="fp32")


def naive_choice_log_likelihood(loaded, example_, choice):
    import torch

    from tunewise.model.chat import encode_prompt

    prompt = encode_prompt(loaded.tokenizer, example_.prompt)
    continuation = loaded.tokenizer(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([prompt + continuation])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1)
    return float(logprobs[positions, torch.tensor(continuation)].sum())


@pytest.mark.integration
@pytest.mark.parametrize("batch_tokens", [1, 100_000], ids=["one_item_per_pass", "one_pass"])
def test_choice_log_likelihoods_equal_each_choice_scored_alone(tiny, batch_tokens):
    from tunewise.training.evaluate import choice_log_likelihoods

    examples = [example(f"Which animal says {sound}?" + " Think." * n, "cat", choices=["cat", "dog", "a cow"])
                for n, sound in enumerate(["meow", "woof", "moo"])]
    choices, _ = choice_sets(examples)
    got = choice_log_likelihoods(tiny.model, tiny.tokenizer, examples, choices, batch_tokens=batch_tokens)
    for item, values in zip(examples, got):
        expected = [naive_choice_log_likelihood(tiny, item, c) for c in ["cat", "dog", "a cow"]]
        np.testing.assert_allclose(values, expected, atol=1e-4)


@pytest.mark.integration
def test_zero_shot_on_a_balanced_toy_task_sits_near_chance_and_generates_nothing(tiny, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("choice must not generate")

    monkeypatch.setattr("tunewise.training.evaluate.generate_greedy", no_generation)
    examples = [example(f"Is {n} even?", ("no", "yes")[n % 2 == 0], "parity") for n in range(40)]
    results = evaluate(tiny, None, examples, metric=CHOICE)
    entry = results["results"]["parity"]
    assert entry["chance"] == 0.5 and entry["n"] == 40
    # An untrained model has no idea of parity: whatever it prefers, it is right about half the time.
    assert 0.3 <= entry[CHOICE] <= 0.7 and 0.3 <= entry["acc_norm"] <= 0.7
    assert all(len(s["log_likelihoods"]) == 2 for s in results["samples"])


@pytest.mark.integration
def test_a_choice_the_model_is_forced_to_prefer_always_wins():
    import torch

    from tunewise.model.load import load_model

    forced = load_model("tiny-random", dtype="fp32")
    tokenizer = forced.tokenizer
    favourite = tokenizer("Q", add_special_tokens=False)["input_ids"]
    assert len(favourite) == 1
    with torch.no_grad():
        forced.model.get_output_embeddings().weight[favourite[0]] *= 200.0
    choices = ["P", "Q", "R"]
    examples = [example(f"Pick a letter ({n})", choices[n % 3], "letters", choices=choices) for n in range(9)]
    results = evaluate(forced, None, examples, metric=CHOICE)
    assert [s["prediction"] for s in results["samples"]] == ["Q"] * 9
    assert [s["prediction_norm"] for s in results["samples"]] == ["Q"] * 9
    entry = results["results"]["letters"]
    assert entry[CHOICE] == pytest.approx(1 / 3) and entry["acc_norm"] == pytest.approx(1 / 3)
    assert entry["chance"] == pytest.approx(1 / 3)
