"""Budget split across tasks, then picks within each task (DESIGN.md §3, paper B).

A task strategy splits the budget over the tasks (its one hook, ``_task_budgets``), orders each
task's rows with its ``within`` strategy (an object: ``TaskDiversity(within=DifficultyWindow(c0=0.4))``,
as scikit-learn nests estimators), and interleaves the tasks round-robin so that every prefix keeps
the proportions (:func:`tunewise.select.allocation.interleave`).

- ``task_diversity``: equal task weights, water-filled (:func:`~tunewise.select.allocation.allocate_budget`);
- ``weighted_task_diversity``: task t weighted by (1 / max(c̄_t, ε))^γ, c̄_t the model's mean confidence;
- ``efficiency``: labels one at a time to the task whose predicted learning curve gains most
  (:func:`~tunewise.select.allocation.efficiency_allocation`; tunewise's own, beyond both papers).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from tunewise.efficiency.curve import DEFAULT_MAX_BUDGET
from tunewise.select.allocation import (
    allocate_budget,
    efficiency_allocation,
    interleave,
    inverse_confidence_weights,
)
from tunewise.select.base import (
    Param,
    Strategy,
    build_strategy,
    integer,
    near_miss,
    real,
    task_codes,
)
from tunewise.select.baseline import CONFIDENCE_COLUMN, RandomSelection
from tunewise.select.difficulty import DifficultyBucket, DifficultyWindow
from tunewise.select.weighted import WeightedIndicators

WITHIN_TASK: dict[str, type[Strategy]] = {
    strategy.name: strategy for strategy in (RandomSelection, DifficultyWindow, DifficultyBucket, WeightedIndicators)
}


def within_selector(value):
    """A within-task strategy from its name or its JSON form (``{"strategy": name, **params}``);
    an object, None or anything unrecognised comes back unchanged for the parameter check."""
    if isinstance(value, str) and value in WITHIN_TASK:
        return WITHIN_TASK[value]()
    if isinstance(value, Mapping) and isinstance(value.get("strategy"), str) and value["strategy"] in WITHIN_TASK:
        params = {key: item for key, item in value.items() if key != "strategy"}
        return build_strategy(WITHIN_TASK[value["strategy"]], params)
    return value


def _is_within_selector(value) -> bool:
    return value is None or type(value) in WITHIN_TASK.values()


WITHIN_PARAM = Param(
    "None (random order) or a within-task strategy: RandomSelection(), DifficultyWindow(...), "
    "DifficultyBucket(...) or WeightedIndicators(...); by name: " + ", ".join(WITHIN_TASK),
    _is_within_selector,
    lambda value: near_miss(value, WITHIN_TASK),
    within_selector,
    flag=str,
    help=f"order inside each task: {', '.join(WITHIN_TASK)}; its flags below apply to it.",
)


class TaskDiversity(Strategy):
    """Equal weight per task, water-filled and interleaved round-robin.

    Parameters
    ----------
    within:
        How rows are ordered inside a task: a :class:`RandomSelection` (the default, also meant
        by None), :class:`DifficultyWindow`, :class:`DifficultyBucket` or
        :class:`WeightedIndicators` object.
    """

    name = "task_diversity"
    parameters = {"within": WITHIN_PARAM}

    def __init__(self, within: Strategy | None = None) -> None:
        self.within = within

    def _within(self) -> Strategy:
        return RandomSelection() if self.within is None else self.within

    def json_params(self):
        params = super().json_params()
        if params["within"] is None:
            params["within"] = {"strategy": RandomSelection.name}
        return params

    def required_columns(self):
        return ("task", *self._within().required_columns())

    def _task_budgets(self, scores, codes: np.ndarray, names: list[str], sizes: np.ndarray, budget: int,
                      rng: np.random.Generator) -> tuple[dict[str, int], dict[str, str], dict]:
        """The hook: each task's budget (in ``names`` order), a few words per task on why, and
        JSON-ready details for the provenance. ``budget`` ≤ Σ sizes."""
        allocation = allocate_budget(dict(zip(names, sizes.tolist())), None, budget, seed=rng)
        return allocation, dict.fromkeys(names, "equal task weights"), {}

    def _select(self, scores, budget, rng):
        codes, names = task_codes(scores)
        sizes = np.bincount(codes, minlength=len(names))
        allocation, why, details = self._task_budgets(scores, codes, names, sizes, budget, rng)
        task_budgets = np.array([allocation[task] for task in names], dtype=np.int64)
        ranked, explain = self._within().rank_in_groups(scores, codes, task_budgets, rng)
        picked, sequence = interleave(ranked, sizes, task_budgets)
        prefixes = np.array(
            [f"task '{task}' gets {allocation[task]} of {budget} picks ({why[task]}); " for task in names],
            dtype=object,
        )
        reasons = [prefix + reason for prefix, reason in zip(prefixes[sequence], explain(picked))]
        return picked, reasons, {"allocation": allocation, **details}


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
    within:
        As for ``task_diversity``.
    """

    name = "weighted_task_diversity"
    parameters = {
        **TaskDiversity.parameters,
        "gamma": Param("a number ≥ 0", real(0.0), flag=float, help="sharpness γ of (1/c̄)^γ."),
        "epsilon": Param("a number > 0", real(0.0, low_open=True), flag=float, help="floor ε on mean confidence."),
        "confidence_column": CONFIDENCE_COLUMN,
    }

    def __init__(
        self,
        within: Strategy | None = None,
        gamma: float = 1.0,
        epsilon: float = 1e-3,
        confidence_column: str = "confidence",
    ) -> None:
        super().__init__(within)
        self.gamma = gamma
        self.epsilon = epsilon
        self.confidence_column = confidence_column

    def required_columns(self):
        return (*super().required_columns(), self.confidence_column)

    def _task_budgets(self, scores, codes, names, sizes, budget, rng):
        confidence = scores[self.confidence_column].to_numpy(dtype=np.float64)
        totals = np.bincount(codes, weights=confidence, minlength=len(names))
        mean_confidence = dict(zip(names, (totals / np.maximum(sizes, 1)).tolist()))
        weights = inverse_confidence_weights(mean_confidence, self.gamma, self.epsilon)
        allocation = allocate_budget(dict(zip(names, sizes.tolist())), weights, budget, seed=rng)
        why = {task: f"task weight {weights[task]:.4f}" for task in names}
        return allocation, why, {"task_weights": weights}


def _predicted_auc_mapping(value) -> bool:
    return (isinstance(value, Mapping) and bool(value) and all(
        isinstance(task, str) and not isinstance(auc, bool) and isinstance(auc, numbers.Real) and 0 < auc < 1
        for task, auc in value.items()))


class EfficiencyAllocation(TaskDiversity):
    """``efficiency``: per-task budgets from :func:`~tunewise.select.allocation.efficiency_allocation`,
    interleaved round-robin.

    Parameters
    ----------
    predicted_auc:
        Task name → predicted AUC' in (0, 1) (from CoS-Low, paper A), for every task of the
        scores; tasks of the mapping that the scores lack are ignored.
    max_budget:
        N, the budget where the predicted curve's log axis ends.
    within:
        As for ``task_diversity``.
    """

    name = "efficiency"
    command_line = False
    parameters = {
        **TaskDiversity.parameters,
        "predicted_auc": Param("a non-empty mapping of task name → predicted AUC in (0, 1)", _predicted_auc_mapping),
        "max_budget": Param("a whole number ≥ 2", integer(2)),
    }

    def __init__(self, predicted_auc: Mapping[str, float] | None = None, max_budget: int = DEFAULT_MAX_BUDGET,
                 within: Strategy | None = None) -> None:
        super().__init__(within)
        self.predicted_auc = predicted_auc
        self.max_budget = max_budget

    def _task_budgets(self, scores, codes, names, sizes, budget, rng):
        allocation = efficiency_allocation(dict(zip(names, sizes.tolist())), self.predicted_auc, budget,
                                           self.max_budget, rng)
        why = {task: f"largest predicted gain per label, AUC' {self.predicted_auc[task]:.3f}" for task in names}
        return allocation, why, {"predicted_auc": {task: float(self.predicted_auc[task]) for task in names}}
