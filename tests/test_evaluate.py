"""Evaluation: the metrics, the results layout, and batched generation on tiny-random."""

from __future__ import annotations

import math

import pytest

from tunewise.errors import TunewiseError
from tunewise.training.evaluate import (
    LOG_LIKELIHOOD,
    binomial_stderr,
    evaluate,
    generate_greedy,
    mean_stderr,
    response_log_likelihoods,
    task_scores,
)
from tunewise.model.chat import encode_prompt
from tunewise.model.load import build_tiny_tokenizer, load_model
from tunewise.data.pool import parse_record


def example(question: str, answer: str | None, task: str = "default"):
    record = {"question": question, "answer": answer, "task": task}
    return parse_record(record, task_field="task")


def test_binomial_stderr_matches_the_harness_formula():
    assert binomial_stderr(0.5, 5) == pytest.approx(math.sqrt(0.25 / 4))
    assert binomial_stderr(1.0, 10) == 0.0
    assert binomial_stderr(1.0, 1) is None


def test_evaluate_scores_known_predictions_per_task(monkeypatch):
    tokenizer = build_tiny_tokenizer()
    examples = [
        example("2 + 2?", "#### 4", "math"),
        example("3 + 3?", "#### 6", "math"),
        example("4 + 4?", "#### 8", "math"),
        example("Pick one: (A) x (B) y", "(B)", "choice"),
        example("Pick one: (A) z (B) w", "(A)", "choice"),
        example("Say hi", "hi", "echo"),
    ]
    answers = {"2 + 2?": "#### 4", "3 + 3?": "6", "4 + 4?": "#### 9", "Pick one: (A) x (B) y": "(B) y",
               "Pick one: (A) z (B) w": "B", "Say hi": "Hi."}

    def scripted(model, tokenizer_, prompts, limits, batch_tokens, progress):
        texts = [tokenizer.decode(ids) for ids in prompts]
        replies = [next(answer for question, answer in answers.items() if question in text) for text in texts]
        return [tokenizer(reply, add_special_tokens=False)["input_ids"] for reply in replies]

    monkeypatch.setattr("tunewise.training.evaluate.generate_greedy", scripted)
    results = evaluate(None, tokenizer, examples)
    assert results["config"]["metrics"] == {"math": "gsm8k", "choice": "multiple_choice", "echo": "exact_match"}
    math_entry = results["results"]["math"]
    assert math_entry["gsm8k"] == pytest.approx(2 / 3)
    assert math_entry["gsm8k_stderr"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 2))
    assert math_entry["n"] == 3 and math_entry["metric"] == "gsm8k"
    assert task_scores(results) == pytest.approx({"math": 2 / 3, "choice": 0.5, "echo": 1.0})
    assert results["average"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    sample = results["samples"][2]
    assert sample == {
        "id": examples[2].id, "task": "math", "prompt": [{"role": "user", "content": "4 + 4?"}],
        "target": "#### 8", "prediction": "#### 9", "extracted": "9", "target_extracted": "8", "correct": False,
        "truncated": False,
    }


def test_evaluate_refuses_bad_requests():
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(TunewiseError, match="unknown metric"):
        evaluate(None, tokenizer, [example("q", "a")], metric="accuracy")
    with pytest.raises(TunewiseError, match="no gold answer"):
        evaluate(None, tokenizer, [example("q", None)])
    with pytest.raises(TunewiseError, match="nothing the 'gsm8k' metric can read"):
        evaluate(None, tokenizer, [example("q", "seven")], metric="gsm8k")


@pytest.fixture(scope="module")
def lively_tiny_model():
    """tiny-random with larger seeded weights, so that greedy answers differ from prompt to prompt."""
    import torch

    loaded = load_model("tiny-random", dtype="fp32")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return loaded


def test_batched_generation_equals_one_by_one(lively_tiny_model):
    tokenizer = lively_tiny_model.tokenizer
    questions = [f"What is {a} plus {b}?" + " Think." * a for a in range(4) for b in range(3)]
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    limits = [6 + (i % 3) for i in range(len(prompts))]
    batched = generate_greedy(lively_tiny_model.model, tokenizer, prompts, limits, batch_tokens=100_000)
    one_by_one = generate_greedy(lively_tiny_model.model, tokenizer, prompts, limits, batch_tokens=1)
    assert batched == one_by_one
    assert len({tuple(ids) for ids in batched}) > 1
    assert all(len(ids) <= limit for ids, limit in zip(batched, limits))


def test_per_row_stopping_gives_what_transformers_generate_gives_alone(lively_tiny_model):
    import torch

    from tunewise.model.chat import stop_token_ids

    model, tokenizer = lively_tiny_model.model, lively_tiny_model.tokenizer
    questions = [f"Say {word}" + "!" * n for n, word in enumerate(["hi", "bye", "yes", "no", "maybe"])]
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    limits = [3, 9, 5, 12, 7]
    batched = generate_greedy(model, tokenizer, prompts, limits, batch_tokens=100_000)
    for prompt, limit, answer in zip(prompts, limits, batched):
        with torch.no_grad():
            output = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    do_sample=False, max_new_tokens=limit, eos_token_id=sorted(stop_token_ids(tokenizer, model.generation_config)),
                                    pad_token_id=tokenizer.pad_token_id)
        expected = output[0, len(prompt):].tolist()
        stops = stop_token_ids(tokenizer, model.generation_config)
        expected = expected[:next((i for i, t in enumerate(expected) if t in stops), len(expected))]
        assert answer == expected


def test_evaluate_on_tiny_random_is_independent_of_batching(lively_tiny_model):
    examples = [example(f"Name {n} things", str(n), task=("a", "b")[n % 2]) for n in range(6)]
    calls = []
    big = evaluate(lively_tiny_model, None, examples, max_new_tokens=5,
                   progress=lambda done, total: calls.append((done, total)))
    small = evaluate(lively_tiny_model.model, lively_tiny_model.tokenizer, examples, max_new_tokens=5, batch_tokens=40)
    assert [s["prediction"] for s in big["samples"]] == [s["prediction"] for s in small["samples"]]
    assert calls[-1] == (6, 6)
    assert set(big["results"]) == {"a", "b"}
    assert big["config"]["max_new_tokens"] == {"a": 5, "b": 5}


def test_log_likelihood_is_minus_the_training_loss_whatever_the_batching(lively_tiny_model):
    import torch

    from tunewise.model.chat import encode_example

    examples = [example(f"Count to {n}" + " now" * n, " ".join(map(str, range(n + 1))), task=("a", "b")[n % 2])
                for n in range(7)]
    wide = response_log_likelihoods(lively_tiny_model.model, lively_tiny_model.tokenizer, examples, batch_tokens=100_000)
    narrow = response_log_likelihoods(lively_tiny_model.model, lively_tiny_model.tokenizer, examples, batch_tokens=1)
    assert wide == pytest.approx(narrow, abs=1e-5)
    with torch.no_grad():
        for value, item in zip(wide, examples):
            encoded = encode_example(lively_tiny_model.tokenizer, item.prompt, item.response, 10_000)
            loss = lively_tiny_model.model(input_ids=torch.tensor([encoded.input_ids]),
                                           labels=torch.tensor([encoded.labels])).loss
            assert value == pytest.approx(-float(loss), abs=1e-4)


def test_evaluate_log_likelihood_averages_per_task_without_generating(lively_tiny_model, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("log_likelihood must not generate")

    monkeypatch.setattr("tunewise.training.evaluate.generate_greedy", no_generation)
    # Free-text answers that no accuracy metric could read are fine: nothing is extracted.
    examples = [example(f"Describe {n}", f"a thing called {n}", task=("a", "b")[n % 2]) for n in range(6)]
    results = evaluate(lively_tiny_model, None, examples, metric=LOG_LIKELIHOOD)
    values = {task: [s[LOG_LIKELIHOOD] for s in results["samples"] if s["task"] == task] for task in "ab"}
    for task, task_values in values.items():
        entry = results["results"][task]
        assert entry["metric"] == LOG_LIKELIHOOD and entry["n"] == 3
        assert entry[LOG_LIKELIHOOD] == pytest.approx(sum(task_values) / 3)
        assert entry[f"{LOG_LIKELIHOOD}_stderr"] == pytest.approx(mean_stderr(task_values))
        assert all(value < 0 for value in task_values)
    assert results["average"] == pytest.approx(sum(task_scores(results).values()) / 2)


def test_mean_stderr():
    assert mean_stderr([1.0, 3.0]) == pytest.approx(1.0)
    assert mean_stderr([2.0, 2.0, 2.0]) == 0.0
    assert mean_stderr([5.0]) is None


def test_results_carry_lm_evaluation_harness_keys():
    from tunewise.training.evaluate import with_lm_eval_keys

    document = with_lm_eval_keys({"results": {"arith": {"exact_match": 0.5, "exact_match_stderr": 0.25, "n": 4,
                                                         "metric": "exact_match"}},
                                  "average": 0.5, "config": {}, "samples": []})
    entry = document["results"]["arith"]
    assert entry["alias"] == "arith"
    assert (entry["exact_match,none"], entry["exact_match_stderr,none"]) == (0.5, 0.25)
    assert document["versions"] == {"arith": 1}
    assert document["n-samples"] == {"arith": {"original": 4, "effective": 4}}
    assert document["higher_is_better"] == {"arith": {"exact_match": True}}
