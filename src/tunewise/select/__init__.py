"""Selection strategies: given a scores table and a budget, which rows, in which order.

Get one by name with :func:`get_strategy`; every strategy's ``select(scores, budget, seed)``
returns a :class:`Selection` (row positions best first, and a reason per pick).

========================== ===============================================================
name                       picks
========================== ===============================================================
random                     a seeded random order
top_k                      highest (or lowest) value of any indicator
uncertainty                lowest model confidence first
task_diversity             equal budget share per task, round-robin (DESIGN.md §3)
weighted_task_diversity    task shares ∝ (1 / mean confidence)^γ, round-robin
difficulty_window          within-task difficulty quantile nearest the budget's centre c(n)
k_center                   greedy k-center on the embeddings
facility_location          greedy coverage of the pool in embedding space
weighted_indicators        weighted sum of oriented indicator quantiles (DESIGN.md §4)
========================== ===============================================================
"""

from __future__ import annotations

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.select.base import Selection, Strategy, build_strategy, rank_quantile
from tunewise.select.baseline import RandomSelection, TopK, Uncertainty
from tunewise.select.difficulty import DifficultyWindow, WindowCentre, fit_window_centre
from tunewise.select.embedding import FacilityLocation, KCenter
from tunewise.select.weighted import WeightedIndicators, read_indicator_weights
from tunewise.select.by_task import WITHIN_TASK, TaskDiversity, WeightedTaskDiversity

STRATEGIES: dict[str, type[Strategy]] = {
    strategy.name: strategy
    for strategy in (
        RandomSelection,
        TopK,
        Uncertainty,
        TaskDiversity,
        WeightedTaskDiversity,
        DifficultyWindow,
        KCenter,
        FacilityLocation,
        WeightedIndicators,
    )
}


def available_strategies() -> list[str]:
    """Names of every registered strategy."""
    return list(STRATEGIES)


def get_strategy(name: str, **params) -> Strategy:
    """The strategy called ``name`` with ``params``, checked (a typo gets "did you mean")."""
    if name not in STRATEGIES:
        raise TunewiseError(f"unknown strategy '{name}'", field="strategy", fix=did_you_mean(name, STRATEGIES))
    return build_strategy(STRATEGIES[name], params)


__all__ = [
    "STRATEGIES",
    "WITHIN_TASK",
    "DifficultyWindow",
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
    "available_strategies",
    "fit_window_centre",
    "get_strategy",
    "rank_quantile",
    "read_indicator_weights",
]
