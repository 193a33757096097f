"""Evaluate a model by batched greedy generation, or score predictions made elsewhere, per task.

Metrics (the answer is the model's whole generation, decoded without special tokens; what each
one reads and normalises is documented in :mod:`tunewise.training.metrics`):

- ``exact_match``: the normalised answer (or the text of its last "the answer is ..." statement,
  or its leading clause when that is the gold) equals the normalised gold answer.
- ``multiple_choice``: the choice label the answer picks (A–Z, or a number for numbered choices)
  equals the gold label.
- ``gsm8k``: the final number (after ``####``, ``\\boxed{}`` or "the answer is", else the last
  number) equals the gold's, by value.
- ``auto`` picks per task: ``gsm8k`` when every target is a number or has ``####``,
  ``multiple_choice`` when every target is a lone choice label, else ``exact_match``.
- ``log_likelihood`` generates nothing: it is the mean log-probability per token of the gold answer
  (and the end-of-turn token after it) given the prompt, exactly the tokens fine-tuning trains
  on, averaged over the task's examples (higher is better, at most 0). It moves with fine-tuning
  where a small model's accuracy stays near zero, e.g. SmolLM2-135M on GSM8K; it is never chosen by
  ``auto``.
- ``choice`` generates nothing either: lm-evaluation-harness's multiple-choice scoring. Every
  choice is scored by the summed log-probability of its tokens after the chat-templated prompt;
  the prediction is the most likely choice (``acc``, the task's score) and, beside it, the most
  likely per character of the choice (``acc_norm``). Choices come from each example's ``choices``
  field (a list of strings holding the gold answer), or, for a classification task, from the
  task's distinct gold answers when there are at most ``MAX_LABEL_SET``. Each task's entry also
  gives ``chance``, the mean of 1 / number of choices.

Results follow lm-evaluation-harness: ``{"results": {task: {metric: value, metric_stderr: value,
"n": count, "metric": name}}, "average": macro mean over tasks, "config": {...}, "samples": [...]}``;
every generated sample logs the raw ``prediction`` beside the ``extracted`` answer and the
``target_extracted`` gold.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Collection, Sequence

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.model.chat import IGNORE_INDEX, encode_example, encode_prompts, encode_responses
from tunewise.model.lengths import context_length, fit_prompts, fit_sequences
from tunewise.model.load import LoadedModel
from tunewise.training.metrics import LOG_LIKELIHOOD, detect_metric, extract_answer, extract_gold, is_correct
from tunewise.training.metrics import METRICS as ANSWER_AND_LIKELIHOOD_METRICS

CHOICE = "choice"
METRICS = (*ANSWER_AND_LIKELIHOOD_METRICS, CHOICE)
# A task without a ``choices`` field is scored over its distinct gold answers only when they are
# this few: a label set, not free text.
MAX_LABEL_SET = 10
# Long enough for any gold answer a test set holds; the answer is never cut.
_UNLIMITED_LENGTH = 1 << 30
DEFAULT_BATCH_TOKENS = 8192
# Room the answer gets beyond the task's longest gold answer when max_new_tokens is not given.
_ANSWER_MARGIN_TOKENS = 16


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: Sequence[int],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations of tokenised prompts, each cut at a stop token (left out) and at its
    own token limit, in input order.

    The model interface's :meth:`~tunewise.model.base.Backend.generate_tokens` (``model`` is any
    form :func:`tunewise.model.as_backend` takes): batches of about ``batch_tokens`` (rows x
    longest prompt plus limit), per-row stopping, so the output does not depend on the batching.
    """
    from tunewise.model import as_backend

    generations = as_backend(model, tokenizer).generate_tokens(prompts, list(max_new_tokens),
                                                               max_batch_tokens=batch_tokens, progress=progress)
    return [generation.answer_ids for generation in generations]


def response_log_likelihoods(
    model,
    tokenizer,
    examples: Sequence,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int], None] | None = None,
    truncate: bool = False,
) -> list[float]:
    """Per example, the mean log-probability per token of its response plus the end-of-turn token given its prompt.

    The tokens are the ones fine-tuning trains on (:func:`tunewise.model.chat.encode_example`),
    scored by the model interface's :meth:`~tunewise.model.base.Backend.loglikelihood`, each
    sequence on its own (batches of about ``batch_tokens``, no padding waste); only the response
    positions are projected onto the vocabulary. Results come back in input order and do not depend
    on the batching. A sequence longer than the model's context is refused with its file and line,
    or with ``truncate`` loses the beginning of its prompt.
    """
    from tunewise.model import as_backend

    encoded = [encode_example(tokenizer, example.prompt, example.response, _UNLIMITED_LENGTH, source=example)
               for example in examples]
    fit_sequences(encoded, context_length(model, tokenizer), examples, truncate)
    starts = [next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX) for e in encoded]
    requests = [(e.input_ids[:start], e.input_ids[start:]) for e, start in zip(encoded, starts)]
    logprobs = as_backend(model, tokenizer).loglikelihood(requests, max_batch_tokens=batch_tokens, progress=progress)
    return [float(values.mean(dtype="float64")) for values in logprobs]


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
    truncate: bool = False,
) -> dict:
    """Answer every example greedily and score the answers per task.

    Parameters
    ----------
    model:
        A :class:`~tunewise.model.hf.HFBackend` or :class:`~tunewise.model.load.LoadedModel` (then
        ``tokenizer`` may be None), or a causal LM in eval mode such as the fine-tuned
        ``FinetuneResult.model``; every forward pass goes through the model interface
        (:func:`tunewise.model.as_backend`).
    examples:
        Labelled :class:`~tunewise.data.pool.Example` s; their ``response`` is the gold answer and
        their prompt is rendered with the chat template exactly as in fine-tuning.
    metric:
        One of ``exact_match``, ``multiple_choice``, ``gsm8k``, ``log_likelihood``, ``choice`` or
        ``auto`` (chosen per task among the first three).
    max_new_tokens:
        The answer length limit; by default each task's longest gold answer plus 16 tokens.
        Unused by ``log_likelihood`` and ``choice``.
    batch_tokens:
        Token budget of one batch (prompt plus answer room, summed over rows).
    progress:
        Called after every batch with ``(examples_done, examples_total)``.
    truncate:
        An example whose prompt plus answer room (or, for ``log_likelihood``, prompt plus gold
        answer) exceeds the model's context is refused with its file and line; with ``truncate``
        its prompt loses its beginning instead, the sample is marked ``truncated`` and the
        config counts them.

    Returns the lm-evaluation-harness style results dict described in the module docstring.
    """
    if isinstance(model, LoadedModel) or hasattr(model, "generate_tokens"):
        tokenizer = tokenizer or model.tokenizer
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
        return _evaluate_log_likelihood(model, tokenizer, examples, tasks, batch_tokens, progress, truncate)
    if metric == CHOICE:
        return _evaluate_choice(model, tokenizer, examples, tasks, batch_tokens, progress)
    metrics = answer_metrics(examples, metric)
    targets_by_task = {task: [e.response for e in examples if e.task == task] for task in tasks}
    if max_new_tokens is None:
        limits = {
            task: max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets) + _ANSWER_MARGIN_TOKENS
            for task, targets in targets_by_task.items()
        }
    else:
        limits = dict.fromkeys(tasks, max_new_tokens)

    started = time.perf_counter()
    prompts = encode_prompts(tokenizer, [example.prompt for example in examples], examples)
    truncated = fit_prompts(prompts, [limits[e.task] for e in examples], examples,
                            context_length(model, tokenizer), truncate)
    continuations = generate_greedy(model, tokenizer, prompts, [limits[e.task] for e in examples],
                                    batch_tokens, progress)
    predictions = [tokenizer.decode(continuation, skip_special_tokens=True) for continuation in continuations]
    config = {
        "metric": metric,
        "metrics": metrics,
        "max_new_tokens": limits,
        "batch_tokens": batch_tokens,
        "n_samples": len(examples),
        "truncated": len(truncated),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return score_predictions(examples, predictions, metrics, config, truncated)


def answer_metrics(examples: Sequence, metric: str = "auto") -> dict[str, str]:
    """``{task: metric}`` for labelled ``examples`` (``auto`` chosen per task by
    :func:`~tunewise.training.metrics.detect_metric`), refusing a gold answer the metric cannot
    read: a wrong metric would otherwise score every answer 0 without saying why."""
    tasks = list(dict.fromkeys(example.task for example in examples))
    targets_by_task = {task: [e.response for e in examples if e.task == task] for task in tasks}
    metrics = {task: detect_metric(targets) if metric == "auto" else metric
               for task, targets in targets_by_task.items()}
    for example in examples:
        if extract_gold(metrics[example.task], example.response) is None:
            raise TunewiseError(
                f"the gold answer of example {example.id} (task '{example.task}') has nothing the "
                f"'{metrics[example.task]}' metric can read: {example.response[:80]!r}",
                field="metric", fix="choose another --metric, or fix the gold answer",
            )
    return metrics


def score_predictions(examples: Sequence, predictions: Sequence[str], metrics: dict[str, str],
                      config: dict, truncated: Collection[int] = ()) -> dict:
    """Score one answer text per labelled example (in the same order) with each task's metric.

    ``metrics`` comes from :func:`answer_metrics`; ``config`` is stored as the results' config.
    Returns the results document of the module docstring; each sample holds the raw
    ``prediction``, the ``extracted`` answer, the ``target_extracted`` gold and ``correct``;
    the positions in ``truncated`` (prompts cut to fit the context) are marked ``truncated``.
    """
    if len(predictions) != len(examples):
        raise ValueError("one prediction per example is needed")
    samples = []
    for position, (example, prediction) in enumerate(zip(examples, predictions)):
        task_metric = metrics[example.task]
        samples.append({
            **_sample_ids(example),
            "task": example.task,
            "prompt": [dict(turn) for turn in example.prompt],
            "target": example.response,
            "prediction": prediction,
            "extracted": extract_answer(task_metric, prediction, example.response),
            "target_extracted": extract_gold(task_metric, example.response),
            "correct": is_correct(task_metric, prediction, example.response),
            "truncated": position in truncated,
        })
    return _results_document(samples, metrics, "correct",
                             lambda values: binomial_stderr(sum(values) / len(values), len(values)), config)


def _sample_ids(example) -> dict:
    """A sample's ids: ``id``, the content hash, and ``user_id``, the test set's own id
    (``--id-field``) when it has one, so that samples join back to the user's data."""
    return {"id": example.id, **({"user_id": example.user_id} if example.user_id is not None else {})}


def read_predictions(path: str | os.PathLike, examples: Sequence) -> list[str]:
    """The answers a predictions file gives the test ``examples``, in the examples' order.

    The file is JSONL, one object per test item: ``{"id": ID, "prediction": TEXT}`` (the
    example's content-hash id, or the test set's own id when it was read with ``--id-field``,
    as tunewise writes them in its outputs) or ``{"line": N, "prediction": TEXT}`` (the 1-based
    line or record number of the item in the test file). Refused with the line named: a line
    that is not a JSON object, a missing or non-text ``prediction``, an id or line that is no
    test item, an own id that several test items share, a second answer for one item, and a
    test item without an answer.
    """
    path = Path(path)
    if not path.is_file():
        raise TunewiseError("no such predictions file", file=str(path), fix="check the --predictions path")
    by_id = {example.id: position for position, example in enumerate(examples)}
    by_user_id: dict[str, list[int]] = {}
    for position, example in enumerate(examples):
        if example.user_id is not None:
            by_user_id.setdefault(example.user_id, []).append(position)
    by_line = {example.location[1]: position for position, example in enumerate(examples) if example.location}
    answers: dict[int, tuple[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TunewiseError(f"not valid JSON ({error.msg})", file=str(path), line=line_number,
                                    fix="write one JSON object per line") from None
            if not isinstance(record, dict) or not isinstance(record.get("prediction"), str):
                raise TunewiseError("the record has no text 'prediction'", file=str(path), line=line_number,
                                    field="prediction", fix='write {"id": ..., "prediction": "..."} per line')
            if "id" in record:
                key = f"id {record['id']}"
                shared = by_user_id.get(str(record["id"]), [])
                if str(record["id"]) not in by_id and len(shared) > 1:
                    raise TunewiseError(f"{key} is the own id of {len(shared)} test items", file=str(path),
                                        line=line_number, field="id",
                                        fix="key these predictions by the content id or by 'line'")
                position = by_id.get(str(record["id"]), shared[0] if shared else None)
            elif isinstance(record.get("line"), int) and not isinstance(record.get("line"), bool):
                position = by_line.get(record["line"])
                key = f"line {record['line']}"
            else:
                raise TunewiseError("the record names no test item", file=str(path), line=line_number,
                                    field="id", fix="give each prediction the test item's 'id' or its 'line' number")
            if position is None:
                raise TunewiseError(f"{key} is not an item of the test set", file=str(path), line=line_number,
                                    field="id" if key.startswith("id") else "line",
                                    fix="score the predictions against the test file (and --task-field, --limit) "
                                        "they were made for")
            if position in answers:
                raise TunewiseError(f"a second prediction for {key} (the first is on line {answers[position][1]})",
                                    file=str(path), line=line_number, fix="keep one prediction per test item")
            answers[position] = (record["prediction"], line_number)
    missing = [example for position, example in enumerate(examples) if position not in answers]
    if missing:
        from tunewise.model.lengths import listing

        location = missing[0].location or (None, None)
        raise TunewiseError(f"{len(missing)} of {len(examples)} test items have no prediction in {path}: "
                            f"{listing(missing)}", file=location[0], line=location[1],
                            fix="give every test item one prediction (by 'id' or 'line')")
    return [answers[position][0] for position in range(len(examples))]


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
    document = {
        "results": results,
        "average": sum(task_scores({"results": results}).values()) / len(results),
        "config": config,
        "samples": samples,
    }
    return with_lm_eval_keys(document)


#: The version of tunewise's scoring of a task, in lm-evaluation-harness's ``versions`` table.
RESULTS_VERSION = 1


def with_lm_eval_keys(document: dict) -> dict:
    """Add the keys lm-evaluation-harness's tools read to a results document (in place; returned).

    Per task: ``alias`` and every numeric metric again as ``"<metric>,none"`` (lm-eval names a
    value by metric and filter; tunewise applies no filter); top level: ``versions``,
    ``n-samples`` (``original`` and ``effective`` counts) and ``higher_is_better``. tunewise's own
    keys stay, so earlier readers keep working.
    """
    results = document["results"]
    for task, entry in results.items():
        entry["alias"] = task
        for key, value in list(entry.items()):
            if key not in ("n", "metric", "alias", "chance") and "," not in key and (
                    value is None or isinstance(value, (int, float))) and not isinstance(value, bool):
                entry[f"{key},none"] = value
    document["versions"] = dict.fromkeys(results, RESULTS_VERSION)
    document["n-samples"] = {task: {"original": entry["n"], "effective": entry["n"]}
                             for task, entry in results.items()}
    document["higher_is_better"] = {
        task: {key.split(",")[0]: True for key in entry if key.endswith(",none") and "_stderr" not in key}
        for task, entry in results.items()}
    return document


def _evaluate_log_likelihood(model, tokenizer, examples, tasks, batch_tokens, progress, truncate) -> dict:
    started = time.perf_counter()
    values = response_log_likelihoods(model, tokenizer, examples, batch_tokens, progress, truncate)
    samples = [
        {**_sample_ids(example), "task": example.task, "prompt": [dict(turn) for turn in example.prompt],
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


def choice_sets(examples: Sequence) -> tuple[list[list[str]], dict[str, str]]:
    """Per example its choices, in order; and per task where they came from.

    A task whose examples carry a ``choices`` field uses them (every example of the task must have
    one: a list of at least two distinct non-empty strings holding its gold answer). Otherwise the
    task's distinct gold answers, in order of first appearance, are every example's choices, when
    there are 2 to ``MAX_LABEL_SET`` of them. Anything else raises :class:`TunewiseError`.
    """
    tasks = list(dict.fromkeys(example.task for example in examples))
    sources: dict[str, str] = {}
    label_sets: dict[str, list[str]] = {}
    for task in tasks:
        members = [example for example in examples if example.task == task]
        with_field = [example for example in members if "choices" in example.metadata]
        if with_field:
            if len(with_field) != len(members):
                missing = next(example for example in members if "choices" not in example.metadata)
                raise TunewiseError(
                    f"task '{task}': {len(with_field)} of its {len(members)} examples have a 'choices' field, "
                    f"example {missing.id} has none", field="choices",
                    fix="give every example of the task its choices, or none of them (then the task's label set is used)")
            sources[task] = "choices field"
            continue
        labels = list(dict.fromkeys(example.response for example in members))
        if not 2 <= len(labels) <= MAX_LABEL_SET:
            raise TunewiseError(
                f"task '{task}' has {len(labels)} distinct gold answer(s) and no 'choices' field: the choice metric "
                f"scores a classification task over its label set only when it holds 2 to {MAX_LABEL_SET} labels",
                field="choices", fix="give each example a 'choices' list (holding its gold answer), or use another --metric")
        label_sets[task] = labels
        sources[task] = f"label set of {len(labels)}"
    choices: list[list[str]] = []
    for example in examples:
        if example.task in label_sets:
            choices.append(label_sets[example.task])
            continue
        given = example.metadata["choices"]
        if (not isinstance(given, list) or len(given) < 2 or not all(isinstance(c, str) and c for c in given)
                or len(set(given)) != len(given)):
            raise TunewiseError(f"example {example.id} (task '{example.task}'): 'choices' must be a list of at least "
                                f"two distinct non-empty strings, got {str(given)[:80]}", field="choices",
                                fix="write the choices as a JSON list of strings")
        if example.response not in given:
            raise TunewiseError(f"example {example.id} (task '{example.task}'): its gold answer "
                                f"{example.response[:60]!r} is not among its choices", field="choices",
                                fix="make the response exactly one of the choices")
        choices.append(list(given))
    return choices, sources


def choice_log_likelihoods(
    model,
    tokenizer,
    examples: Sequence,
    choices: Sequence[Sequence[str]],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[float]]:
    """Per example, per choice, the summed log-probability of the choice's tokens after the prompt.

    The prompt is rendered with the chat template as in fine-tuning and a choice is tokenised on
    its own, as a response is: the assistant turn's header stands where lm-evaluation-harness puts
    its target delimiter, and no end-of-sequence token follows (lm-eval's ``loglikelihood``). Each
    prompt runs once with all its choices beside it (the model interface's
    :meth:`~tunewise.model.base.Backend.loglikelihood` with ``share="context"``).
    """
    from tunewise.model import as_backend

    texts = sorted({c for options in choices for c in options})
    tokenised = dict(zip(texts, encode_responses(tokenizer, texts)))
    empty = [text for text, ids in tokenised.items() if not ids]
    if empty:
        raise TunewiseError(f"the choice {empty[0]!r} has no tokens", field="choices", fix="drop empty choices")
    prompts = encode_prompts(tokenizer, [example.prompt for example in examples])
    requests = [(prompt, tokenised[c]) for prompt, options in zip(prompts, choices) for c in options]
    logprobs = iter(as_backend(model, tokenizer).loglikelihood(requests, share="context",
                                                               max_batch_tokens=batch_tokens, progress=progress))
    return [[float(next(logprobs).sum(dtype="float64")) for _ in options] for options in choices]


def _evaluate_choice(model, tokenizer, examples, tasks, batch_tokens, progress) -> dict:
    started = time.perf_counter()
    choices, sources = choice_sets(examples)
    likelihoods = choice_log_likelihoods(model, tokenizer, examples, choices, batch_tokens, progress)
    samples = []
    for example, options, values in zip(examples, choices, likelihoods):
        gold = options.index(example.response)
        # Ties go to the first choice, as numpy's argmax in lm-evaluation-harness.
        best = max(range(len(options)), key=lambda i: (values[i], -i))
        best_norm = max(range(len(options)), key=lambda i: (values[i] / len(options[i]), -i))
        samples.append({
            **_sample_ids(example), "task": example.task, "prompt": [dict(turn) for turn in example.prompt],
            "target": example.response, "choices": list(options), "log_likelihoods": values,
            "prediction": options[best], "correct": best == gold,
            "prediction_norm": options[best_norm], "correct_norm": best_norm == gold,
        })
    metrics = dict.fromkeys(tasks, CHOICE)
    config = {
        "metric": CHOICE,
        "metrics": metrics,
        "choices": sources,
        "batch_tokens": batch_tokens,
        "n_samples": len(samples),
        "seconds": round(time.perf_counter() - started, 3),
    }

    def stderr(values):
        return binomial_stderr(sum(values) / len(values), len(values))

    document = _results_document(samples, metrics, "correct", stderr, config)
    for task, entry in document["results"].items():
        normalised = [float(s["correct_norm"]) for s in samples if s["task"] == task]
        entry["acc_norm"] = sum(normalised) / len(normalised)
        entry["acc_norm_stderr"] = stderr(normalised)
        entry["chance"] = sum(1 / len(s["choices"]) for s in samples if s["task"] == task) / len(normalised)
        # lm-evaluation-harness calls the multiple-choice accuracy "acc".
        entry["acc,none"], entry["acc_stderr,none"] = entry[CHOICE], entry[f"{CHOICE}_stderr"]
    return with_lm_eval_keys(document)


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
    "CHOICE",
    "MAX_LABEL_SET",
    "choice_log_likelihoods",
    "choice_sets",
    "LOG_LIKELIHOOD",
    "METRICS",
    "check_metric",
    "evaluate",
    "generate_greedy",
    "mean_stderr",
    "response_log_likelihoods",
    "answer_metrics",
    "read_predictions",
    "score_predictions",
    "task_scores",
    "binomial_stderr",
]
