"""Split a labelling budget across tasks (DESIGN.md §3) and order the picks round-robin.

:func:`allocate_budget` water-fills the budget over the tasks in proportion to their weights,
capping each task at its pool size, then rounds to integers by largest remainder.
:func:`efficiency_allocation` instead gives labels one at a time to the task whose predicted
learning curve gains most. :func:`round_robin_order` and :func:`interleave` order the per-task
picks so that every prefix of the selection keeps the allocation's proportions.
:func:`inverse_confidence_weights` gives the WeightedTaskDiversity weights and
:func:`weight_spread` says how far from equal a set of task weights is.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

import numpy as np

from tunewise.efficiency.curve import DEFAULT_MAX_BUDGET, normalised_log_budget
from tunewise.efficiency.predict import predicted_curve
from tunewise.errors import TunewiseError

# Fractional parts closer than this are the same remainder: shares computed along different
# floating-point paths (e.g. 0.1 + 0.2 against 0.3) must still tie and go to the tie-breaks.
_REMAINDER_DECIMALS = 9


def allocate_budget(
    pool_sizes: Mapping[str, int],
    weights: Mapping[str, float] | None = None,
    budget: int = 0,
    seed: int | np.random.Generator = 0,
) -> dict[str, int]:
    """Per-task budgets b_t with Σ b_t = min(budget, Σ n_t) and 0 ≤ b_t ≤ n_t.

    Each task still below its cap gets its weight's share of the budget not yet given out; a task
    whose share exceeds its pool size n_t is capped at n_t and its surplus is shared again among
    the rest (water-filling). The real-valued shares are then rounded by largest remainder: every
    task gets the floor of its share and the units left over go to the largest fractional parts,
    ties broken by the larger weight, then by an order drawn from ``seed``.

    Like every largest-remainder method this is not monotone in the budget when the weights
    differ (the Alabama paradox): one more unit of budget can move a single unit between tasks,
    so a task's budget can drop by one. The real-valued shares never drop, with equal weights
    (TaskDiversity) no task's budget ever drops, and a task never drops by more than one.

    Parameters
    ----------
    pool_sizes:
        Task name → number of examples available (≥ 0). The result keeps this key order.
    weights:
        Task name → weight (> 0) for every task in ``pool_sizes``; None means equal weights.
    budget:
        Total number of examples to select (≥ 0). A budget of at least Σ n_t returns every pool.
    seed:
        Seeds the last tie-break (an int, or a Generator to draw from), so equal inputs always
        give the same split.
    """
    tasks = list(pool_sizes)
    sizes = np.array([pool_sizes[task] for task in tasks], dtype=np.int64)
    if weights is None:
        weight_values = np.ones(len(tasks))
    else:
        missing = [task for task in tasks if task not in weights]
        if missing:
            raise TunewiseError(
                f"no weight for task(s) {', '.join(map(repr, missing[:5]))}",
                fix="give a weight for every task in the pool",
            )
        weight_values = np.array([weights[task] for task in tasks], dtype=np.float64)
    budgets = _allocate(sizes, weight_values, budget, seed)
    return dict(zip(tasks, budgets.tolist()))


def _allocate(sizes: np.ndarray, weights: np.ndarray, budget: int, seed) -> np.ndarray:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise TunewiseError(f"budget must be a whole number ≥ 0, got {budget!r}", field="budget")
    if (sizes < 0).any():
        raise TunewiseError("pool sizes must be ≥ 0", field="pool_sizes")
    if not np.isfinite(weights).all() or (weights <= 0).any():
        raise TunewiseError(
            "task weights must be finite and > 0",
            field="weights",
            fix="floor small weights at a positive epsilon instead of zero",
        )
    if budget >= sizes.sum():
        return sizes.copy()

    shares = water_filled_shares(sizes, weights, budget)
    floors = np.floor(shares).astype(np.int64)
    leftover = budget - int(floors.sum())
    remainders = np.round(shares - floors, _REMAINDER_DECIMALS)
    random_tiebreak = np.random.default_rng(seed).permutation(len(sizes))
    # np.lexsort sorts by its last key first: remainder, then weight, then the seeded order.
    priority = np.lexsort((random_tiebreak, -weights, -remainders))
    floors[priority[:leftover]] += 1
    return floors


def water_filled_shares(sizes, weights, budget: float) -> np.ndarray:
    """The real-valued shares before rounding: Σ = min(budget, Σ sizes), each ≤ its pool size.

    ``sizes`` and ``weights`` (> 0) are arrays in task order. Every task below its cap holds the
    same share per unit of weight.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if budget >= sizes.sum():
        return sizes.copy()
    shares = np.zeros(len(sizes))
    active = sizes > 0
    remaining = float(budget)
    while True:
        share = remaining * weights[active] / weights[active].sum()
        over_cap = share >= sizes[active]
        if not over_cap.any():
            shares[active] = share
            return shares
        capped = np.flatnonzero(active)[over_cap]
        shares[capped] = sizes[capped]
        remaining -= float(sizes[capped].sum())
        active[capped] = False


def round_robin_order(task_budgets) -> np.ndarray:
    """The task index of each pick, in an order whose every prefix keeps the proportions.

    For ``task_budgets`` b (summing to B), the returned array of length B holds task indices and
    task t occurs b_t times. Every prefix of length m holds c_t(m) picks of task t with
    |c_t(m) − m·b_t/B| < 1, so annotation can follow the order and stop at any point.

    The j-th pick of task t may come no earlier than m = ⌊(j−1)·B/b_t⌋ + 1 (else the task runs
    ahead of its share) and no later than ⌈j·B/b_t⌉ (else it falls behind); earliest-deadline-first
    over these windows always meets them (Tijdeman's chairman-assignment theorem guarantees that
    a sequence within the bound exists, and EDF finds one whenever one exists). Ties go to the
    lower task index.
    """
    budgets = np.asarray(task_budgets, dtype=np.int64).tolist()
    total = sum(budgets)
    order: list[int] = []
    taken = [0] * len(budgets)
    # `ready`: a heap of the tasks whose next pick is allowed now, keyed by that pick's deadline
    # (pick j's deadline ceil(j·total / b) is written -(-j·total // b)). `released_at`: step →
    # the tasks whose next pick becomes allowed at that step.
    ready = [(-(-total // size), task) for task, size in enumerate(budgets) if size > 0]
    heapq.heapify(ready)
    released_at: dict[int, list[int]] = {}
    pop, push, replace, append = heapq.heappop, heapq.heappush, heapq.heapreplace, order.append
    for step in range(1, total + 1):
        for task in released_at.pop(step, ()):
            push(ready, (-(-(taken[task] + 1) * total // budgets[task]), task))
        task = ready[0][1]
        append(task)
        done = taken[task] = taken[task] + 1
        size = budgets[task]
        if done == size:
            pop(ready)
            continue
        release = done * total // size + 1
        if release <= step + 1:
            replace(ready, (-(-(done + 1) * total // size), task))
        else:
            pop(ready)
            released_at.setdefault(release, []).append(task)
    return np.array(order, dtype=np.int64)


def interleave(ranked: np.ndarray, group_sizes, group_budgets) -> tuple[np.ndarray, np.ndarray]:
    """The picks in round-robin order, and the group of each pick.

    ``ranked`` holds every row position grouped by group code (group 0's rows first), best first
    within each group; group g has ``group_sizes[g]`` rows and gets ``group_budgets[g]`` picks.
    The k-th time group g comes up in :func:`round_robin_order` it takes g's k-th best row, so
    every prefix of the picks keeps the budgets' proportions.
    """
    sizes = np.asarray(group_sizes, dtype=np.int64)
    budgets = np.asarray(group_budgets, dtype=np.int64)
    sequence = round_robin_order(budgets)
    by_group = np.argsort(sequence, kind="stable")
    occurrence = np.empty(len(sequence), dtype=np.int64)
    first_of_group = np.cumsum(budgets) - budgets
    occurrence[by_group] = np.arange(len(sequence)) - np.repeat(first_of_group, budgets)
    group_start = np.cumsum(sizes) - sizes
    return np.asarray(ranked, dtype=np.int64)[group_start[sequence] + occurrence], sequence


def efficiency_allocation(
    pool_sizes: Mapping[str, int],
    predicted_auc: Mapping[str, float],
    budget: int,
    max_budget: int = DEFAULT_MAX_BUDGET,
    seed: int | np.random.Generator = 0,
) -> dict[str, int]:
    """Give labels one at a time to the task whose predicted curve gains most from the next one.

    Task t's predicted normalised curve is y = x^p with x = log2(n) / log2(``max_budget``) and
    p = (1 − AUC'_t) / AUC'_t (paper A's curve shape). Each label goes to the task with the
    largest y(b_t + 1) − y(b_t) (:func:`next_label_gain`), never beyond its pool; equal gains are
    broken by an order drawn from ``seed``. The result sums to min(budget, Σ pool sizes) and keeps
    the key order of ``pool_sizes``. This allocation is tunewise's own, beyond papers A and B.
    """
    tasks = list(pool_sizes)
    missing = [task for task in tasks if task not in predicted_auc]
    if missing:
        raise TunewiseError(f"no predicted AUC for task(s) {', '.join(map(repr, missing[:5]))}",
                            field="predicted_auc", fix="predict every task, or use another strategy")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    tiebreak = rng.permutation(len(tasks))
    allocation = dict.fromkeys(tasks, 0)
    heap = [(-next_label_gain(predicted_auc[task], 0, max_budget), int(tiebreak[i]), i)
            for i, task in enumerate(tasks) if pool_sizes[task] > 0]
    heapq.heapify(heap)
    for _ in range(min(budget, sum(pool_sizes.values()))):
        _, order, index = heapq.heappop(heap)
        task = tasks[index]
        allocation[task] += 1
        if allocation[task] < pool_sizes[task]:
            heapq.heappush(heap, (-next_label_gain(predicted_auc[task], allocation[task], max_budget), order, index))
    return allocation


def next_label_gain(auc: float, labelled: int, max_budget: int = DEFAULT_MAX_BUDGET) -> float:
    """How much of the way to the ceiling the predicted curve gains from label ``labelled + 1``.

    The curve y = x^p is flat from 0 to 1 label (x = log2(1) = 0), so a first label alone would
    gain nothing on any task and the greedy allocation could never start one: the first two labels
    share the step to n = 2 equally instead.
    """
    if labelled < 2:
        return float(predicted_curve(auc, normalised_log_budget(2, max_budget))) / 2
    return float(predicted_curve(auc, normalised_log_budget(labelled + 1, max_budget))
                 - predicted_curve(auc, normalised_log_budget(labelled, max_budget)))


def inverse_confidence_weights(
    mean_confidence: Mapping[str, float], gamma: float = 1.0, epsilon: float = 1e-3
) -> dict[str, float]:
    """WeightedTaskDiversity task weights w_t ∝ (1 / max(c̄_t, ε))^γ, normalised to sum to 1.

    Tasks the model is least sure of get the most weight; γ = 0 gives equal weights.
    """
    tasks = list(mean_confidence)
    floored = np.maximum(np.array([mean_confidence[task] for task in tasks], dtype=np.float64), epsilon)
    raw = floored ** (-float(gamma))
    return dict(zip(tasks, (raw / raw.sum()).tolist()))


def weight_spread(weights: Mapping[str, float]) -> dict | None:
    """How far task weights are from equal: ``{"min", "max", "ratio", "entropy_share"}``.

    ``ratio`` is max / min (1 for equal weights); ``entropy_share`` is the entropy of the
    normalised weights over its largest possible value, log(number of tasks): 1 for equal
    weights, towards 0 as one task takes all. Paper B's WeightedTaskDiversity only differs from
    TaskDiversity when the weights spread; these say by how much. None for no weights.
    """
    values = np.array([float(value) for value in weights.values()], dtype=np.float64)
    if len(values) == 0 or not np.isfinite(values).all() or (values <= 0).any():
        return None
    shares = values / values.sum()
    entropy = float(-(shares * np.log(shares)).sum())
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "ratio": float(values.max() / values.min()),
        "entropy_share": entropy / math.log(len(values)) if len(values) > 1 else 1.0,
    }
