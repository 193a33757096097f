"""Budget split across tasks, then picks within each task (DESIGN.md §3, paper B).

``task_diversity`` gives every task an equal weight; ``weighted_task_diversity`` weights task t by
(1 / max(c̄_t, ε))^γ, c̄_t the model's mean confidence on it. Both water-fill the budget over the
tasks (:func:`tunewise.select.allocation.allocate_budget`), order each task's rows with the ``within``
strategy, and interleave the tasks round-robin so that every prefix keeps the proportions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tunewise.select.allocation import allocate_budget, inverse_confidence_weights, round_robin_order
from tunewise.select.base import (
    GroupRanker,
    Param,
    Strategy,
    build_strategy,
    column_name,
    one_of,
    real,
    task_codes,
)
from tunewise.select.baseline import RandomSelection
from tunewise.select.difficulty import DifficultyWindow
from tunewise.select.weighted import WeightedIndicators

WITHIN_TASK: dict[str, type[GroupRanker]] = {
    "random": RandomSelection,
    "difficulty_window": DifficultyWindow,
    "weighted_indicators": WeightedIndicators,
}


def _mapping_or_none(value) -> str | None:
    return None if value is None or isinstance(value, Mapping) else ""


class TaskDiversity(Strategy):
    """Equal weight per task, water-filled and interleaved round-robin.

    Parameters
    ----------
    within:
        How rows are ordered inside a task: ``random``, ``difficulty_window`` or
        ``weighted_indicators``.
    within_params:
        Parameters of the ``within`` strategy (e.g. ``{"c0": 0.4}`` or ``{"weights": {...}}``).
    """

    name = "task_diversity"
    parameters = {
        "within": Param("one of: " + ", ".join(WITHIN_TASK), one_of(*WITHIN_TASK)),
        "within_params": Param("None or a mapping of the within strategy's parameters", _mapping_or_none),
    }

    def __init__(self, within: str = "random", within_params: Mapping | None = None) -> None:
        self.within = within
        self.within_params = within_params

    def _check_params(self) -> None:
        self._within_strategy()

    def _within_strategy(self) -> Strategy:
        return build_strategy(WITHIN_TASK[self.within], self.within_params or {})

    def required_columns(self):
        return ("task", *self._within_strategy().required_columns())

    def _task_weights(self, scores, codes, names) -> dict[str, float] | None:
        """Weight per task name; None for equal weights."""
        return None

    def _weight_label(self, weights: dict[str, float] | None, task: str) -> str:
        return "equal task weights" if weights is None else f"task weight {weights[task]:.4f}"

    def _select(self, scores, budget, rng):
        codes, names = task_codes(scores)
        sizes = np.bincount(codes, minlength=len(names))
        weights = self._task_weights(scores, codes, names)
        allocation = allocate_budget(dict(zip(names, sizes.tolist())), weights, budget, seed=rng)
        task_budgets = np.array(list(allocation.values()), dtype=np.int64)

        ranked, explain = self._within_strategy().rank_in_groups(scores, codes, task_budgets, rng)
        # `ranked` lists every row grouped by task (in code order), best first within each task;
        # the k-th time task t comes up in the round-robin sequence it takes t's k-th best row.
        sequence = round_robin_order(task_budgets)
        by_task = np.argsort(sequence, kind="stable")
        occurrence = np.empty(len(sequence), dtype=np.int64)
        first_of_task = np.cumsum(task_budgets) - task_budgets
        occurrence[by_task] = np.arange(len(sequence)) - np.repeat(first_of_task, task_budgets)
        group_start = np.cumsum(sizes) - sizes
        picked = ranked[group_start[sequence] + occurrence]

        prefixes = np.array(
            [
                f"task '{task}' gets {allocation[task]} of {budget} picks ({self._weight_label(weights, task)}); "
                for task in names
            ],
            dtype=object,
        )
        reasons = [prefix + reason for prefix, reason in zip(prefixes[sequence], explain(picked))]
        details = {"allocation": allocation}
        if weights is not None:
            details["task_weights"] = weights
        return picked, reasons, details


class WeightedTaskDiversity(TaskDiversity):
    """Task weights w_t ∝ (1 / max(c̄_t, ε))^γ: the less confident the model, the more picks.

    Parameters
    ----------
    gamma:
        Sharpness (γ ≥ 0; 0 gives equal weights).
    epsilon:
        Floor on the mean confidence (> 0), so a task at zero confidence gets a finite weight.
    confidence_column:
        The score column holding each example's confidence.
    within, within_params:
        As for ``task_diversity``.
    """

    name = "weighted_task_diversity"
    parameters = {
        **TaskDiversity.parameters,
        "gamma": Param("a number ≥ 0", real(0.0)),
        "epsilon": Param("a number > 0", real(0.0, low_open=True)),
        "confidence_column": Param("the name of a score column", column_name),
    }

    def __init__(
        self,
        within: str = "random",
        within_params: Mapping | None = None,
        gamma: float = 1.0,
        epsilon: float = 1e-3,
        confidence_column: str = "confidence",
    ) -> None:
        super().__init__(within, within_params)
        self.gamma = gamma
        self.epsilon = epsilon
        self.confidence_column = confidence_column

    def required_columns(self):
        return (*super().required_columns(), self.confidence_column)

    def _task_weights(self, scores, codes, names):
        sizes = np.bincount(codes, minlength=len(names))
        confidence = scores[self.confidence_column].to_numpy(dtype=np.float64)
        totals = np.bincount(codes, weights=confidence, minlength=len(names))
        mean_confidence = dict(zip(names, (totals / np.maximum(sizes, 1)).tolist()))
        return inverse_confidence_weights(mean_confidence, self.gamma, self.epsilon)
