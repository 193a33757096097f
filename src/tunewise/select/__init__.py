"""Selection strategies: given a scores table and a budget, which rows, in which order.

Every strategy's ``select(scores, budget, seed)`` returns a :class:`Selection` (row positions best
first, and a reason per pick). Strategies are objects in the scikit-learn manner and nest: a task
strategy takes the strategy that orders rows inside each task as an object,
``TaskDiversity(within=DifficultyWindow(c0=0.4))``, and ``get_params(deep=True)`` lists
``within__c0``. :func:`get_strategy` builds one by name (for the command line and sweep specs).

========================== ===============================================================
name                       picks
========================== ===============================================================
random                     a seeded random order
top_k                      highest (or lowest) value of any indicator
uncertainty                lowest model confidence first
task_diversity             equal budget share per task, round-robin (DESIGN.md §3, paper B)
weighted_task_diversity    task shares ∝ (1 / mean confidence)^γ, round-robin (paper B)
efficiency                 each label to the task whose predicted curve gains most (paper A's curves)
difficulty_window          within-task difficulty quantile nearest the centre c(n) (paper C)
difficulty_bucket          at random from the easy, medium or hard third of each task (paper C)
k_center                   greedy k-center on the embeddings
facility_location          greedy coverage of the pool in embedding space
dpp                        greedy MAP of a determinantal point process on the embeddings
weighted_indicators        weighted sum of oriented indicator quantiles (DESIGN.md §4, paper D)
========================== ===============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.select.base import Selection, Strategy, build_strategy, rank_quantile, unknown_parameter
from tunewise.select.baseline import RandomSelection, TopK, Uncertainty
from tunewise.select.by_task import WITHIN_TASK, EfficiencyAllocation, TaskDiversity, WeightedTaskDiversity
from tunewise.select.difficulty import (DifficultyBucket, DifficultyWindow, WindowCentre, WindowCentreFit,
                                       fit_window_centre)
from tunewise.select.embedding import DeterminantalPointProcess, FacilityLocation, KCenter
from tunewise.select.weighted import WeightedIndicators, read_indicator_weights

STRATEGIES: dict[str, type[Strategy]] = {
    strategy.name: strategy
    for strategy in (
        RandomSelection,
        TopK,
        Uncertainty,
        TaskDiversity,
        WeightedTaskDiversity,
        EfficiencyAllocation,
        DifficultyWindow,
        DifficultyBucket,
        KCenter,
        FacilityLocation,
        DeterminantalPointProcess,
        WeightedIndicators,
    )
}
TASK_STRATEGIES = tuple(name for name, strategy in STRATEGIES.items() if issubclass(strategy, TaskDiversity))


def available_strategies() -> list[str]:
    """Names of every registered strategy."""
    return list(STRATEGIES)


def within_class(within: Any) -> type[Strategy] | None:
    """The class of a ``within`` value given by name, JSON form or object (None: random order);
    None when it names no within-task strategy."""
    if within is None:
        return RandomSelection
    if isinstance(within, str):
        return WITHIN_TASK.get(within)
    if isinstance(within, Mapping):
        name = within.get("strategy")
        return WITHIN_TASK.get(name) if isinstance(name, str) else None
    return type(within) if type(within) in WITHIN_TASK.values() else None


def route_parameters(name: str, params: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """Split flat parameters into the strategy's own, its ``within`` strategy's, and the rest.

    For a task strategy, a parameter it does not declare goes to its ``within`` strategy when that
    one declares it (``within`` given by name, e.g. ``within="difficulty_window", c0=0.4``, as the
    command line's flags and sweep specs give them). ``outer__inner`` names count as the
    strategy's own. ``name`` must be registered.
    """
    declared = STRATEGIES[name].parameters
    own = {key: value for key, value in params.items() if key.partition("__")[0] in declared}
    others = {key: value for key, value in params.items() if key not in own}
    inner_class = within_class(params.get("within")) if "within" in declared else None
    inner = {key: value for key, value in others.items() if inner_class and key in inner_class.parameters}
    rest = {key: value for key, value in others.items() if key not in inner}
    return own, inner, rest


def get_strategy(name: str, **params) -> Strategy:
    """The strategy called ``name`` with ``params``, checked (a typo gets "did you mean").

    A task strategy's ``within`` may be an object, a name or its JSON form
    (``{"strategy": "difficulty_window", "c0": 0.4}``, as ``selection.meta.json`` records it);
    parameters of the ``within`` strategy may be given flat beside it (:func:`route_parameters`)
    or as ``within__c0``.
    """
    if name not in STRATEGIES:
        raise TunewiseError(f"unknown strategy '{name}'", field="strategy", fix=did_you_mean(name, STRATEGIES))
    own, inner, rest = route_parameters(name, params)
    if rest:
        if "within" in own and within_class(own["within"]) is None:
            build_strategy(STRATEGIES[name], {"within": own["within"]})  # the within value is at fault: say so
        key = next(iter(rest))
        raise unknown_parameter(STRATEGIES[name], key, rest[key])
    return build_strategy(STRATEGIES[name], {**own, **{f"within__{key}": value for key, value in inner.items()}})


__all__ = [
    "STRATEGIES",
    "TASK_STRATEGIES",
    "WITHIN_TASK",
    "DeterminantalPointProcess",
    "DifficultyBucket",
    "DifficultyWindow",
    "EfficiencyAllocation",
    "FacilityLocation",
    "KCenter",
    "RandomSelection",
    "Selection",
    "Strategy",
    "TaskDiversity",
    "TopK",
    "Uncertainty",
    "WeightedIndicators",
    "WeightedTaskDiversity",
    "WindowCentre",
    "WindowCentreFit",
    "available_strategies",
    "fit_window_centre",
    "get_strategy",
    "rank_quantile",
    "read_indicator_weights",
    "route_parameters",
    "within_class",
]
