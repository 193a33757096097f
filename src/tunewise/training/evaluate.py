"""Evaluate a model by batched greedy generation, scored per task.

Metrics (the answer is the model's whole generation, decoded without special tokens):

- ``exact_match``: equal after normalising both sides (strip, lower case, collapse whitespace,
  drop a trailing period).
- ``multiple_choice``: the first standalone letter A–J, or ``(A)``, in the answer equals the gold
  letter.
- ``gsm8k``: the final number: the number after ``####`` when there is one, else the last
  number in the text; commas removed, compared as decimals (``72.0`` equals ``72``).
- ``auto`` picks per task: ``gsm8k`` when every target has ``####``, ``multiple_choice`` when every
  target is a lone letter, else ``exact_match``.
- ``log_likelihood`` generates nothing: it is the mean log-probability per token of the gold answer
  (and the end-of-turn token after it) given the prompt, exactly the tokens fine-tuning trains
  on, averaged over the task's examples (higher is better, at most 0). It moves with fine-tuning
  where a small model's accuracy stays near zero, e.g. SmolLM2-135M on GSM8K; it is never chosen by
  ``auto``.

Results follow lm-evaluation-harness: ``{"results": {task: {metric: value, metric_stderr: value,
"n": count, "metric": name}}, "average": macro mean over tasks, "config": {...}, "samples": [...]}``.
"""

from __future__ import annotations

import math
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence

from tunewise.model.base import plan_batches
from tunewise.errors import TunewiseError, did_you_mean
from tunewise.model.chat import (IGNORE_INDEX, encode_example, encode_prompts, pad_batch, pad_examples, pad_token_id,
                                 stop_token_ids)
from tunewise.model.load import LoadedModel

METRICS = ("exact_match", "multiple_choice", "gsm8k", "log_likelihood")
LOG_LIKELIHOOD = "log_likelihood"
DEFAULT_BATCH_TOKENS = 8192
# Room the answer gets beyond the task's longest gold answer when max_new_tokens is not given.
_ANSWER_MARGIN_TOKENS = 16
_CHOICE = re.compile(r"\(([A-J])\)|\b([A-J])\b")
_LONE_CHOICE = re.compile(r"\s*\(?([A-J])\)?\s*")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FINAL_MARKER = "####"


def normalise_answer(text: str) -> str:
    """Exact-match form: stripped, lower case, single spaces, no trailing period."""
    return " ".join(text.split()).lower().rstrip(".").strip()


def extract_choice(text: str) -> str | None:
    """The first standalone letter A–J (bare or in parentheses), or None."""
    match = _CHOICE.search(text)
    return None if match is None else match.group(1) or match.group(2)


def extract_final_number(text: str) -> str | None:
    """The number after ``####`` when present, else the last number; commas removed."""
    if _FINAL_MARKER in text:
        candidates = _NUMBER.findall(text.split(_FINAL_MARKER, 1)[1])[:1]
    else:
        candidates = _NUMBER.findall(text)[-1:]
    if not candidates:
        return None
    return candidates[0].replace(",", "")


def _same_number(left: str | None, right: str | None) -> bool:
    if left is None or right is None:
        return False
    try:
        return Decimal(left) == Decimal(right)
    except InvalidOperation:
        return False


def extract_answer(metric: str, text: str) -> str | None:
    """The part of ``text`` the metric compares: normalised text, a letter, or a number."""
    if metric == "exact_match":
        return normalise_answer(text)
    if metric == "multiple_choice":
        return extract_choice(text)
    return extract_final_number(text)


def is_correct(metric: str, prediction: str, target: str) -> bool:
    """Whether ``prediction`` answers ``target`` under ``metric``."""
    predicted, gold = extract_answer(metric, prediction), extract_answer(metric, target)
    if metric == "gsm8k":
        return _same_number(predicted, gold)
    return predicted is not None and predicted == gold


def detect_metric(targets: Sequence[str]) -> str:
    """The metric ``auto`` chooses for a task with these gold answers."""
    if targets and all(_FINAL_MARKER in t and extract_final_number(t) is not None for t in targets):
        return "gsm8k"
    if targets and all(_LONE_CHOICE.fullmatch(t) for t in targets):
        return "multiple_choice"
    return "exact_match"


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: Sequence[int],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations of tokenised prompts, each cut at eos and at its own token limit.

    Prompts are sorted longest first (prompt plus limit) and packed into left-padded batches of
    about ``batch_tokens`` (rows x longest prompt plus limit); results come back in input order.
    Cutting every row at its own limit makes the output independent of how rows were batched.
    """
    import torch

    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad = pad_token_id(tokenizer)
    batches = plan_batches([len(prompt) + limit for prompt, limit in zip(prompts, max_new_tokens)], batch_tokens)

    continuations: list[list[int]] = [[] for _ in prompts]
    done = 0
    with torch.inference_mode():
        for batch in batches:
            input_ids, attention_mask = pad_batch([prompts[i] for i in batch], pad, "left", device)
            width = input_ids.shape[1]
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max(max_new_tokens[i] for i in batch),
                do_sample=False,
                eos_token_id=sorted(stops),
                pad_token_id=pad,
            )
            for row, index in enumerate(batch):
                generated = output[row, width:width + max_new_tokens[index]].tolist()
                end = next((position for position, token in enumerate(generated) if token in stops), len(generated))
                continuations[index] = generated[:end]
            done += len(batch)
            if progress is not None:
                progress(done, len(prompts))
    return continuations


def response_log_likelihoods(
    model,
    tokenizer,
    examples: Sequence,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Per example, the mean log-probability per token of its response plus the end-of-turn token given its prompt.

    The tokens are the ones fine-tuning trains on (:func:`tunewise.model.chat.encode_example`), in
    right-padded batches of about ``batch_tokens``; only the response positions are projected onto
    the vocabulary. Results come back in input order.
    """
    import torch

    from tunewise.model.hf import row_means, token_logprobs

    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    prompts = encode_prompts(tokenizer, [example.prompt for example in examples])
    encoded = [encode_example(tokenizer, example.prompt, example.response, prompt_ids=prompt)
               for example, prompt in zip(examples, prompts)]
    values: list[float] = [0.0] * len(encoded)
    done = 0
    with torch.inference_mode():
        for batch in plan_batches([len(e.input_ids) for e in encoded], batch_tokens):
            input_ids, attention_mask, labels = pad_examples([encoded[i] for i in batch], pad_token_id(tokenizer), device)
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            # Position t predicts token t + 1.
            targets = labels[:, 1:]
            scored = targets != IGNORE_INDEX
            logprobs = token_logprobs(head, hidden[:, :-1, :][scored], targets[scored])
            means = row_means(logprobs, scored).tolist()
            for row, index in enumerate(batch):
                values[index] = means[row]
            done += len(batch)
            if progress is not None:
                progress(done, len(encoded))
    return values


def check_metric(metric: str, field: str = "metric") -> None:
    """Refuse a metric name :func:`evaluate` does not know (``auto`` included), with a did-you-mean."""
    if metric != "auto" and metric not in METRICS:
        raise TunewiseError(f"unknown metric '{metric}'", field=field, fix=did_you_mean(metric, (*METRICS, "auto")))


def evaluate(
    model,
    tokenizer,
    examples: Sequence,
    metric: str = "auto",
    max_new_tokens: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Answer every example greedily and score the answers per task.

    Parameters
    ----------
    model:
        A :class:`~tunewise.model.load.LoadedModel` (then ``tokenizer`` may be None), or a causal LM
        in eval mode such as the fine-tuned ``FinetuneResult.model``.
    examples:
        Labelled :class:`~tunewise.data.pool.Example` s; their ``response`` is the gold answer and
        their prompt is rendered with the chat template exactly as in fine-tuning.
    metric:
        One of ``exact_match``, ``multiple_choice``, ``gsm8k``, ``log_likelihood`` or ``auto``
        (chosen per task among the first three).
    max_new_tokens:
        The answer length limit; by default each task's longest gold answer plus 16 tokens.
        Unused by ``log_likelihood``.
    batch_tokens:
        Token budget of one batch (prompt plus answer room, summed over rows).
    progress:
        Called after every batch with ``(examples_done, examples_total)``.

    Returns the lm-evaluation-harness style results dict described in the module docstring.
    """
    if isinstance(model, LoadedModel):
        tokenizer = tokenizer or model.tokenizer
        model = model.model
    check_metric(metric)
    if not examples:
        raise TunewiseError("there are no examples to evaluate", fix="pass a non-empty test set")
    unlabelled = [example.id for example in examples if example.response is None]
    if unlabelled:
        raise TunewiseError(f"{len(unlabelled)} test examples have no gold answer (first: {unlabelled[0]})",
                            field="response", fix="evaluate on a labelled test set")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise TunewiseError("must be at least 1", field="max_new_tokens", fix="pass --max-new-tokens 1 or more")
    if batch_tokens < 1:
        raise TunewiseError("must be at least 1", field="batch_tokens", fix="pass --batch-tokens 1 or more")

    tasks = list(dict.fromkeys(example.task for example in examples))
    if metric == LOG_LIKELIHOOD:
        return _evaluate_log_likelihood(model, tokenizer, examples, tasks, batch_tokens, progress)
    targets_by_task = {task: [e.response for e in examples if e.task == task] for task in tasks}
    metrics = {task: detect_metric(targets) if metric == "auto" else metric
               for task, targets in targets_by_task.items()}
    for example in examples:
        if extract_answer(metrics[example.task], example.response) is None:
            raise TunewiseError(
                f"the gold answer of example {example.id} (task '{example.task}') has nothing the "
                f"'{metrics[example.task]}' metric can read: {example.response[:80]!r}",
                field="metric", fix="choose another --metric, or fix the gold answer",
            )
    if max_new_tokens is None:
        limits = {
            task: max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets) + _ANSWER_MARGIN_TOKENS
            for task, targets in targets_by_task.items()
        }
    else:
        limits = dict.fromkeys(tasks, max_new_tokens)

    started = time.perf_counter()
    prompts = encode_prompts(tokenizer, [example.prompt for example in examples])
    continuations = generate_greedy(model, tokenizer, prompts, [limits[e.task] for e in examples],
                                    batch_tokens, progress)
    samples = []
    for example, continuation in zip(examples, continuations):
        prediction = tokenizer.decode(continuation, skip_special_tokens=True)
        task_metric = metrics[example.task]
        samples.append({
            "id": example.id,
            "task": example.task,
            "prompt": [dict(turn) for turn in example.prompt],
            "target": example.response,
            "prediction": prediction,
            "extracted": extract_answer(task_metric, prediction),
            "correct": is_correct(task_metric, prediction, example.response),
        })

    config = {
        "metric": metric,
        "metrics": metrics,
        "max_new_tokens": limits,
        "batch_tokens": batch_tokens,
        "n_samples": len(samples),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _results_document(samples, metrics, "correct",
                             lambda values: binomial_stderr(sum(values) / len(values), len(values)), config)


def _results_document(samples: list[dict], metrics: dict[str, str], value_key: str,
                      stderr: Callable[[list[float]], float | None], config: dict) -> dict:
    """The results layout of the module docstring: per task (in ``metrics`` order) the mean of its
    samples' ``value_key``, its ``stderr``, the count and the metric; then the macro average."""
    results = {}
    for task, metric in metrics.items():
        values = [float(sample[value_key]) for sample in samples if sample["task"] == task]
        results[task] = {
            metric: sum(values) / len(values),
            f"{metric}_stderr": stderr(values),
            "n": len(values),
            "metric": metric,
        }
    return {
        "results": results,
        "average": sum(task_scores({"results": results}).values()) / len(results),
        "config": config,
        "samples": samples,
    }


def _evaluate_log_likelihood(model, tokenizer, examples, tasks, batch_tokens, progress) -> dict:
    started = time.perf_counter()
    values = response_log_likelihoods(model, tokenizer, examples, batch_tokens, progress)
    samples = [
        {"id": example.id, "task": example.task, "prompt": [dict(turn) for turn in example.prompt],
         "target": example.response, LOG_LIKELIHOOD: value}
        for example, value in zip(examples, values)
    ]
    metrics = dict.fromkeys(tasks, LOG_LIKELIHOOD)
    config = {
        "metric": LOG_LIKELIHOOD,
        "metrics": metrics,
        "batch_tokens": batch_tokens,
        "n_samples": len(samples),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _results_document(samples, metrics, LOG_LIKELIHOOD, mean_stderr, config)


def mean_stderr(values: Sequence[float]) -> float | None:
    """The standard error of a mean: sample standard deviation / sqrt(n); None for one value."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1) / len(values))


def binomial_stderr(accuracy: float, n: int) -> float | None:
    """sqrt(p (1 - p) / (n - 1)), as lm-evaluation-harness reports it; None for a single sample."""
    if n < 2:
        return None
    return math.sqrt(accuracy * (1 - accuracy) / (n - 1))


def task_scores(results: dict) -> dict[str, float]:
    """``{task: score}`` from an :func:`evaluate` result, whatever metric each task used."""
    return {task: entry[entry["metric"]] for task, entry in results["results"].items()}


__all__ = [
    "LOG_LIKELIHOOD",
    "METRICS",
    "check_metric",
    "evaluate",
    "generate_greedy",
    "mean_stderr",
    "response_log_likelihoods",
    "detect_metric",
    "extract_answer",
    "extract_choice",
    "extract_final_number",
    "is_correct",
    "normalise_answer",
    "task_scores",
    "binomial_stderr",
]
