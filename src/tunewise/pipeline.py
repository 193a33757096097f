"""The plan: how many labels each task gets, which examples they are, and why (DESIGN.md §2–3).

:func:`make_plan` takes an :class:`~tunewise.data.table.ExampleTable` (the examples and their
scores together) and a budget. Per task it reports the pool size,
the labelled count, the model's mean confidence, the task's weight and budget, and, where a
CoS-Low value and coefficients for the model exist, the predicted learning curve and the labels
needed to reach a target. It never invents coefficients: a task without a prediction says what
is missing.

The budget is split by a registered task strategy (``weighted_task_diversity`` by default,
``task_diversity``, or ``efficiency``: labels one at a time to the task whose predicted curve gains
most from its next label, :func:`~tunewise.select.allocation.efficiency_allocation`, which needs a
prediction for every task), or by any other registered strategy (the tasks then get whatever that
strategy picks). The plan reports how far the task weights spread
(:func:`~tunewise.select.allocation.weight_spread`): where they barely differ, weighted task
diversity is task diversity in all but name.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunewise import __version__
from tunewise.data.table import ExampleTable
from tunewise.efficiency.coslow import DEFAULT_DIMENSION as COSLOW_DIMENSION
from tunewise.efficiency.coslow import DEFAULT_K as COSLOW_K
from tunewise.efficiency.curve import DEFAULT_GRID, DEFAULT_MAX_BUDGET, normalised_log_budget
from tunewise.efficiency.predict import labels_needed, predict_auc, predicted_curve
from tunewise.errors import TunewiseError
from tunewise.select import TASK_STRATEGIES, EfficiencyAllocation, Selection, Strategy, get_strategy
from tunewise.select.allocation import next_label_gain, weight_spread

DEFAULT_STRATEGY = "weighted_task_diversity"
EFFICIENCY = EfficiencyAllocation.name
# Task weights whose largest is less than this multiple of the smallest get a note in the plan
# (study 2's 12 tasks had 1.43): a rule of thumb for "hardly different from equal", not a paper's.
_NEAR_EQUAL_RATIO = 1.5
NO_CALIBRATION = "no calibration for this model: run tunewise calibrate or pass --coefficients"


@dataclass(frozen=True)
class Plan:
    """A plan: ``document`` is what ``plan.json`` holds; ``selection`` the ordered picks (rows of
    the table) and ``strategy`` the strategy that made them, for the selection manifest."""

    document: dict
    selection: Selection
    strategy: Strategy

    @property
    def tasks(self) -> dict[str, dict]:
        """Per-task entries of the plan, keyed by task name, in pool order."""
        return self.document["tasks"]


def make_plan(
    table: ExampleTable,
    budget: int,
    strategy: str | Strategy = DEFAULT_STRATEGY,
    within: str | Strategy | None = None,
    target: float = 0.9,
    coefficients=None,
    coslow_values: Mapping[str, float] | None = None,
    seed: int = 0,
    *,
    strategy_params: Mapping[str, Any] | None = None,
    max_budget: int | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Plan:
    """Split ``budget`` labels across the tasks of ``table``, choose the examples, explain both.

    Parameters
    ----------
    table:
        The scored pool (:func:`tunewise.score`); its ``confidence`` column is needed for per-task
        confidence and ``weighted_task_diversity``, the difficulty column for a difficulty ``within``.
    budget:
        Labels to spend in total (≥ 0); more than the pool selects everything.
    strategy:
        ``weighted_task_diversity``, ``task_diversity``, ``efficiency``, or any registered strategy
        (``random``, ``uncertainty`` …), whose picks then decide each task's share; by name, or
        a :class:`~tunewise.select.Strategy` object (e.g. ``WeightedTaskDiversity(gamma=2)``).
        ``efficiency`` by name gets its predicted AUCs from ``coefficients`` and ``coslow_values``.
    within:
        How a task strategy named by ``strategy`` orders rows inside a task: a within-task
        strategy object (``DifficultyWindow(c0=0.4)``), or its name (``random``,
        ``difficulty_window``, ``difficulty_bucket``, ``weighted_indicators``); None is random.
    target:
        τ in (0, 1]: the fraction of the way from zero-shot to ceiling that "labels needed" aims at.
    coefficients:
        :class:`~tunewise.efficiency.predict.Coefficients` for this model, or None when there are none.
    coslow_values:
        Task → CoS-Low, for the tasks where it was measured (see :func:`measure_coslow`).
    seed:
        Seeds every random choice.
    strategy_params:
        Extra parameters of a strategy given by name (e.g. ``{"gamma": 2.0}``).
    max_budget:
        N, the end of the predicted curve's log-budget axis. By default the N the coefficients were
        fitted with (their AUCs are on that axis), else DESIGN's 5000.
    provenance:
        Where the scores came from (model fingerprint, indicator versions …), copied into the plan.
    """
    examples, scores = table.examples, table.scores
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0:
        raise TunewiseError(f"the budget must be a whole number ≥ 0, got {budget!r}", field="budget",
                            fix="pass e.g. --budget 200")
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target <= 1:
        raise TunewiseError(f"the target {target!r} is not in (0, 1]", field="target",
                            fix="give a fraction of the way from zero-shot to ceiling, e.g. --target 0.9")
    coslow_values = dict(coslow_values or {})
    if max_budget is None:
        max_budget = coefficients.max_budget if coefficients is not None else DEFAULT_MAX_BUDGET
    curve_grid = coefficients.grid if coefficients is not None else DEFAULT_GRID
    tasks = list(dict.fromkeys(e.task for e in examples))
    pool_sizes = Counter(e.task for e in examples)
    labelled = Counter(e.task for e in examples if e.response is not None)
    confidence = _mean_by_task(scores, "confidence")

    predicted = {}
    if coefficients is not None:
        predicted = {task: predict_auc(coslow_values[task], coefficients) for task in tasks if task in coslow_values}

    chosen = _build_strategy(strategy, within, strategy_params, predicted, tasks, coefficients, labelled,
                             max_budget)
    strategy = chosen.name
    selection = chosen.select(table, int(budget), seed)
    picked = Counter(scores["task"].astype(str).to_numpy()[selection.positions].tolist())
    weights = _task_weights(strategy, selection, tasks)
    spread = weight_spread(weights) if weights else None

    entries = {}
    for task in tasks:
        entry = {
            "pool": pool_sizes[task],
            "labelled": labelled[task],
            "mean_confidence": confidence.get(task),
            "weight": weights.get(task),
            "budget": picked[task],
            "share": picked[task] / len(selection) if len(selection) else 0.0,
            "coslow": coslow_values.get(task),
            "predicted_auc": None,
            "predicted_curve": None,
            "predicted_at_budget": None,
            "labels_needed": None,
        }
        if task in predicted:
            auc = predicted[task]
            # The curve is defined up to N (its ceiling is the best score by N): budgets past it are shown at N.
            at_budget = min(max(picked[task], 1), max_budget)
            budgets = sorted({*(n for n in curve_grid if n <= max_budget), at_budget})
            entry.update(
                predicted_auc=auc,
                predicted_curve={str(n): float(predicted_curve(auc, normalised_log_budget(n, max_budget)))
                                 for n in budgets},
                predicted_at_budget=float(predicted_curve(auc, normalised_log_budget(at_budget, max_budget))),
                labels_needed=math.ceil(labels_needed(auc, target, max_budget)),
            )
        entry["why"] = _why(task, entry, strategy, confidence, len(tasks), len(selection), coefficients, target,
                            max_budget)
        entries[task] = entry

    document = {
        "tunewise_version": __version__,
        "pool": {
            "source": table.source,
            "examples": len(examples),
            "labelled": sum(labelled.values()),
            "tasks": len(tasks),
        },
        "budget": int(budget),
        "selected": len(selection),
        "strategy": strategy,
        "params": chosen.json_params(),
        "within": chosen.json_params()["within"]["strategy"] if strategy in TASK_STRATEGIES else None,
        "task_weight_spread": spread,
        "seed": seed,
        "target": target,
        "max_budget": max_budget,
        "coefficients": None if coefficients is None else {
            "slope": coefficients.slope, "intercept": coefficients.intercept, "source": coefficients.source,
            "max_budget": coefficients.max_budget, "caveat": coefficients.caveat,
        },
        "notes": list(selection.notes) + _spread_notes(strategy, spread)
                 + ([f"About the predicted curves: {coefficients.caveat}"] if predicted and coefficients.caveat else []),
        "provenance": dict(provenance or {}),
        "tasks": entries,
    }
    return Plan(document=document, selection=selection, strategy=chosen)


def _build_strategy(strategy, within, strategy_params, predicted, tasks, coefficients, labelled,
                    max_budget) -> Strategy:
    """The strategy object: ``strategy`` itself when it is one, else built by name."""
    within_given = within is not None and within != "random"
    if isinstance(strategy, Strategy):
        if within_given or strategy_params:
            raise TunewiseError("a strategy object carries its own parameters and within-task order",
                                field="strategy", fix="set them on the object, e.g. TaskDiversity(within=...)")
        return strategy
    params = dict(strategy_params or {})
    if strategy in TASK_STRATEGIES:
        if within is not None:
            params["within"] = within
    elif within_given:
        raise TunewiseError(f"--within applies to the task strategies ({', '.join(TASK_STRATEGIES)}), "
                            f"not to '{strategy}'", field="within", fix="drop --within, or pick a task strategy")
    if strategy != EFFICIENCY:
        return get_strategy(strategy, **params)
    missing = [task for task in tasks if task not in predicted]
    if missing:
        reasons = "; ".join(f"'{task}': {_missing_prediction(coefficients, labelled[task])}" for task in missing[:5])
        raise TunewiseError(
            f"the efficiency strategy needs a predicted learning curve for every task, and "
            f"{len(missing)} of {len(tasks)} have none ({reasons})",
            field="strategy",
            fix="pass --coefficients (a calibration file or paper:NAME) and a labelled pool with at least "
            f"{COSLOW_K} examples per task, or use --strategy weighted_task_diversity",
        )
    return get_strategy(EFFICIENCY, **params, predicted_auc=predicted, max_budget=max_budget)


def _missing_prediction(coefficients, labelled: int) -> str:
    """Why a task has no predicted curve."""
    if coefficients is None:
        return NO_CALIBRATION
    if labelled < COSLOW_K:
        return f"CoS-Low needs {COSLOW_K} labelled examples and this task has {labelled}"
    return "CoS-Low was not measured (run with --coslow)"


def _mean_by_task(scores: pd.DataFrame, column: str) -> dict[str, float]:
    if column not in scores.columns:
        return {}
    means = scores.groupby(scores["task"].astype(str), sort=False)[column].mean()
    return {task: float(value) for task, value in means.items() if np.isfinite(value)}


def _task_weights(strategy: str, selection: Selection, tasks: list[str]) -> dict[str, float]:
    if strategy == "weighted_task_diversity":
        return dict(selection.details.get("task_weights", {}))
    if strategy == "task_diversity":
        return dict.fromkeys(tasks, 1 / len(tasks))
    return {}


def _spread_notes(strategy: str, spread: dict | None) -> list[str]:
    """A note when weighted task diversity's weights are nearly equal (paper B's mechanism idle)."""
    if strategy != "weighted_task_diversity" or spread is None or spread["ratio"] >= _NEAR_EQUAL_RATIO:
        return []
    return [f"The task weights barely differ (from {spread['min']:.3f} to {spread['max']:.3f}, ratio "
            f"{spread['ratio']:.2f}; entropy {spread['entropy_share']:.1%} of equal weights), so this split is close "
            "to task_diversity's equal shares."]


def _why(task, entry, strategy, confidence, task_count, selected, coefficients, target, max_budget) -> str:
    """One or two plain sentences: why this task gets its budget, and what the prediction says."""
    budget, pool_size = entry["budget"], entry["pool"]
    share = f"{budget} of {selected} labels"
    if strategy in TASK_STRATEGIES and task_count == 1:
        sentence = f"It is the only task, so it gets {share}."
    elif strategy == "weighted_task_diversity" and task in confidence:
        ranked = sorted(confidence, key=confidence.get)
        position = ranked.index(task) + 1
        standing = ("the lowest" if position == 1 else "the highest" if position == len(ranked)
                    else f"the {_ordinal(position)} lowest")
        sentence = (f"The model's mean confidence here is {confidence[task]:.3f} ({standing} of {len(ranked)} "
                    f"tasks), so it gets weight {entry['weight']:.3f} and {share}.")
    elif strategy == "task_diversity":
        sentence = f"Every task weighs the same, so it gets {share}."
    elif strategy == EFFICIENCY:
        gain = next_label_gain(entry["predicted_auc"], budget, max_budget)
        sentence = (f"Each label went to the task whose predicted curve gained most from it; this one got {share}"
                    + ("." if budget >= pool_size else f", where its next label would add {gain:.4f} of the way "
                       "to the ceiling."))
    else:
        sentence = f"'{strategy}' picks across the whole pool, and {share} fell in this task."
    if budget == pool_size and budget < selected:
        sentence += f" That is its whole pool ({pool_size} examples)."
    if entry["predicted_auc"] is not None:
        sentence += (f" CoS-Low {entry['coslow']:.3f} predicts an AUC of {entry['predicted_auc']:.2f}: about "
                     f"{entry['labels_needed']} labels reach {target:.0%} of the way from zero-shot to ceiling, "
                     f"and {budget} get about {entry['predicted_at_budget']:.0%}.")
    else:
        sentence += f" No learning-curve prediction: {_missing_prediction(coefficients, entry['labelled'])}."
    return sentence


def shared_closing_sentence(reasons: list[str]) -> str:
    """The closing sentence (leading space included) every one of several reasons ends with, or "".

    Printed once instead of once per task, e.g. when every task lacks a prediction for one cause.
    """
    if len(reasons) < 2:
        return ""
    endings = {" " + reason.rsplit(". ", 1)[-1] if ". " in reason else reason for reason in reasons}
    shared = endings.pop() if len(endings) == 1 else ""
    return shared if all(len(reason) > len(shared) for reason in reasons) else ""


def split_shared_closing_sentence(reasons: list[str]) -> tuple[list[str], str]:
    """The reasons without the closing sentence they all share, and that sentence ("" when none)."""
    shared = shared_closing_sentence(reasons)
    return [reason[:len(reason) - len(shared)] for reason in reasons], shared.strip()


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def measure_coslow(
    table: ExampleTable,
    loaded_model,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    dimension: int | None = COSLOW_DIMENSION,
) -> dict[str, dict]:
    """CoS-Low of every labelled task of ``table`` (a scored pool with a ``confidence`` column)
    with at least 32 labelled examples.

    Per task: the 32 examples are sampled from the least confident 10 % of its labelled examples
    (from its 32 least confident when the task has fewer than 320, which departs from the paper's
    protocol and is recorded as such), then :func:`tunewise.efficiency.coslow.coslow` takes their gradients.
    ``loaded_model`` is the run's :class:`~tunewise.model.load.LoadedModel`, in any dtype: the
    adapter is attached to it in place and removed. ``dimension``: see :func:`~tunewise.efficiency.coslow.coslow`. ``progress(done, total)``
    counts gradients over all the tasks measured. Returns task → ``{coslow, k, protocol,
    examples, grad_norm, seconds}``.
    """
    from tunewise.efficiency.coslow import coslow, lowest_confidence_prompts, minimum_pool_size

    if "confidence" not in table.columns:
        raise TunewiseError("CoS-Low picks the least confident examples, and the scores have no 'confidence'",
                            field="confidence", fix="score the pool with the confidence indicator")
    examples = table.examples
    confidence = table.scores["confidence"].to_numpy(dtype=np.float64)
    rows_by_task: dict[str, list[int]] = {}
    for row, example in enumerate(examples):
        # Confidence 0: answered with no answer token, which paper A's sample never draws.
        if example.response is not None and np.isfinite(confidence[row]) and confidence[row] > 0:
            rows_by_task.setdefault(example.task, []).append(row)
    eligible = {task: rows for task, rows in rows_by_task.items() if len(rows) >= COSLOW_K}
    total = COSLOW_K * len(eligible)
    measured = {}
    for done_tasks, (task, rows) in enumerate(eligible.items()):
        chosen = [rows[i] for i in lowest_confidence_prompts(confidence[rows], k=COSLOW_K, seed=seed,
                                                             allow_small_pool=True)]
        result = coslow(
            loaded_model.model, loaded_model.tokenizer,
            [list(examples[i].prompt) for i in chosen], [examples[i].response for i in chosen], seed=seed,
            dimension=dimension,
            progress=None if progress is None else (
                lambda done, before=done_tasks * COSLOW_K: progress(before + done, total)),
        )
        measured[task] = {
            "coslow": result["coslow"],
            "k": result["n"],
            "protocol": ("paper: sampled from the least confident 10 %" if len(rows) >= minimum_pool_size()
                         else f"small task: its {COSLOW_K} least confident examples"),
            "examples": [examples[i].id for i in chosen],
            "grad_norm": result["grad_norm"],
            "seconds": round(result["seconds"], 3),
            "dimension": result["dimension"],
            "projection_std": round(result["projection_std"], 6),
        }
    return measured


__all__ = [
    "DEFAULT_STRATEGY",
    "EFFICIENCY",
    "NO_CALIBRATION",
    "Plan",
    "make_plan",
    "measure_coslow",
]
