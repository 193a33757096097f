"""Difficulty within a task: the budget-dependent window and the three buckets (DESIGN.md §3, paper C).

Paper C (Liu et al., arXiv 2605.12906) measures the difficulty of a reasoning example by the length
of its reference chain of thought in tokens, and argues for it over model loss (perplexity is
relative to the model and drifts during fine-tuning). tunewise's default difficulty is therefore
``length``, the response's token count (the reference solution, for reasoning data); ``loss``
(model-relative) and ``cot_length`` (non-empty lines of the solution) are options.

Difficulty becomes a rank quantile q in [0, 1] within each task. Two ways to pick from it:

- ``difficulty_window`` takes the n rows whose q is nearest the centre
  c(n) = clip(c0 + β·log10(n / n0), 0, 1), widened by itself when one side runs out. The paper
  gives no formula for how the best difficulty moves with n (its Table 1 has easy data best at
  200k examples on two of three datasets), so β defaults to 0, a fixed centre: a drift belongs to
  a calibration (:func:`fit_window_centre`, ``tunewise calibrate-difficulty``), not to a default.
  c0 = 0.35 (easy to medium) is tunewise's choice.
- ``difficulty_bucket`` is the paper's own design: the task's rows split into easy, medium and hard
  tertiles of difficulty, and the n picks drawn at random inside one of them.

Rows of equal difficulty are ordered by the seeded generator, so with a discrete difficulty (a few
distinct lengths) different seeds pick different rows of a tie block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.select.base import GroupRanker, Param, Strategy, choice, rank_quantile, real, task_codes

DIFFICULTY_COLUMNS = ("length", "cot_length", "loss")
DEFAULT_DIFFICULTY = "length"
BUCKETS = ("easy", "medium", "hard")


@dataclass(frozen=True)
class WindowCentre:
    """c(n) = clip(c0 + β·log10(n / n0), 0, 1): where the difficulty window sits for n picks."""

    c0: float = 0.35
    beta: float = 0.0
    n0: float = 100.0

    def at(self, n) -> np.ndarray:
        """The centre for budget(s) ``n`` (≥ 1)."""
        n = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
        return np.clip(self.c0 + self.beta * np.log10(n / self.n0), 0.0, 1.0)


def fit_window_centre(budgets, best_centres, n0: float = 100.0) -> WindowCentre:
    """Fit c0 and β by least squares from the best window centre measured at each budget.

    ``budgets[i]`` is a fine-tuning budget and ``best_centres[i]`` the difficulty quantile of the
    window that scored best there (e.g. from a 3 budgets × 3 windows grid). Needs at least two
    distinct budgets. The fitted values are what ``difficulty_window`` takes as ``c0`` and
    ``beta`` (with the same ``n0``).
    """
    budgets = np.asarray(budgets, dtype=np.float64)
    best_centres = np.asarray(best_centres, dtype=np.float64)
    if budgets.shape != best_centres.shape or budgets.ndim != 1:
        raise TunewiseError("budgets and best centres must be two lists of the same length")
    if (budgets <= 0).any() or not ((0 <= best_centres) & (best_centres <= 1)).all():
        raise TunewiseError("budgets must be > 0 and centres within [0, 1]")
    if len(np.unique(budgets)) < 2:
        raise TunewiseError(
            "fitting the window centre needs results at two or more different budgets",
            fix="run the calibration grid at several budgets (e.g. 100, 300, 1000)",
        )
    decades = np.log10(budgets / n0)
    design = np.column_stack([np.ones_like(decades), decades])
    (c0, beta), *_ = np.linalg.lstsq(design, best_centres, rcond=None)
    return WindowCentre(float(c0), float(beta), float(n0))


class WindowCentreFit:
    """The window centre's budget rule fitted from a calibration grid, in scikit-learn's shape:
    ``fit(budgets, best_centres)`` returns ``self`` with ``c0_``, ``beta_`` and ``centre_`` (the
    fitted :class:`WindowCentre`); :meth:`predict` gives the centre at budget(s) n."""

    def __init__(self, n0: float = 100.0) -> None:
        self.n0 = n0

    def fit(self, budgets, best_centres) -> WindowCentreFit:
        """Least squares of the best centres on log10(budget / n0) (:func:`fit_window_centre`)."""
        self.centre_ = fit_window_centre(budgets, best_centres, self.n0)
        self.c0_, self.beta_ = self.centre_.c0, self.centre_.beta
        return self

    def predict(self, n) -> np.ndarray:
        if not hasattr(self, "centre_"):
            raise TunewiseError("this WindowCentreFit is not fitted yet", fix="call fit(budgets, best_centres)")
        return self.centre_.at(n)


_DIFFICULTY_PARAM = choice("one of: " + ", ".join(map(repr, DIFFICULTY_COLUMNS)), DIFFICULTY_COLUMNS,
                           help="length (response tokens, paper C's chain-of-thought length; the default), "
                                "cot_length or loss.")


class _ByDifficulty(GroupRanker, Strategy):
    """What the difficulty strategies share: they read the ``difficulty`` column and order each
    group's rows by the keys of :meth:`_sort_keys`, then by an order drawn from the seed."""

    difficulty: str

    def required_columns(self):
        return (self.difficulty,)

    def rank_in_groups(self, scores, groups, group_budgets, rng):
        tasks, _ = task_codes(scores)
        keys, explain = self._sort_keys(scores[self.difficulty].to_numpy(), tasks, groups, group_budgets, rng)
        return np.lexsort((rng.permutation(len(scores)), *keys, groups)), explain

    def _sort_keys(self, values, tasks, groups, group_budgets, rng):
        """Sort keys within a group, least significant first (as ``np.lexsort``), and the function
        that explains a set of picked rows."""
        raise NotImplementedError


class DifficultyWindow(_ByDifficulty):
    """The n rows whose within-task difficulty quantile is nearest the centre c(n).

    Ties in distance go to the easier row, then to an order drawn from the seed. Used within tasks,
    each task's window is centred for that task's own budget.

    Parameters
    ----------
    difficulty:
        The score column that measures difficulty: ``length`` (response tokens; paper C's
        chain-of-thought length), ``cot_length`` or ``loss``.
    c0, beta, n0:
        The centre c(n) = clip(c0 + β·log10(n / n0), 0, 1); β = 0 (the default) fixes it at c0.
    """

    name = "difficulty_window"
    parameters = {
        "difficulty": _DIFFICULTY_PARAM,
        "c0": Param("a number in [0, 1]", real(0.0, 1.0), flag=float,
                    help="centre at n0 picks, in [0, 1] (default 0.35)."),
        "beta": Param("a finite number", real(), flag=float,
                      help="centre shift per decade of budget (default 0: fixed; set it from "
                           "`tunewise calibrate-difficulty`)."),
        "n0": Param("a number > 0", real(0.0, low_open=True), flag=float,
                    help="the budget where the centre is c0."),
    }

    def __init__(self, difficulty: str = DEFAULT_DIFFICULTY, c0: float = 0.35, beta: float = 0.0,
                 n0: float = 100.0) -> None:
        self.difficulty = difficulty
        self.c0 = c0
        self.beta = beta
        self.n0 = n0

    def _sort_keys(self, values, tasks, groups, group_budgets, rng):
        quantile = rank_quantile(values, tasks)
        centres = WindowCentre(self.c0, self.beta, self.n0).at(group_budgets)
        # Rounded so that distances equal on paper (0.25 and 0.45 from 0.35) tie exactly and
        # the tie goes to the easier row rather than to floating-point noise.
        distance = np.round(np.abs(quantile - centres[groups]), 12)

        def explain(picked: np.ndarray) -> list[str]:
            return [
                f"{self.difficulty} quantile {quantile[row]:.3f} in its task, "
                f"{distance[row]:.3f} from the window centre {centres[groups[row]]:.3f} "
                f"for {group_budgets[groups[row]]} picks"
                for row in picked
            ]

        return (quantile, distance), explain


def difficulty_tertiles(values, groups=None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Each row's difficulty tertile within its group: 0 easy, 1 medium, 2 hard.

    A group's rows are sorted by value (equal values in an order drawn from ``rng``, else in row
    order) and cut into three parts whose sizes differ by at most one, the larger parts first
    (as ``numpy.array_split``), so each tertile holds a third of the group.
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.zeros(len(values), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    tiebreak = rng.permutation(len(values)) if rng is not None else np.arange(len(values))
    order = np.lexsort((tiebreak, values, groups))
    tertile = np.empty(len(values), dtype=np.int64)
    sizes = np.bincount(groups, minlength=int(groups.max()) + 1 if len(groups) else 0)
    start = 0
    for size in sizes:
        rows = order[start:start + size]
        for index, part in enumerate(np.array_split(rows, 3)):
            tertile[part] = index
        start += size
    return tertile


class DifficultyBucket(_ByDifficulty):
    """Paper C's buckets: n rows drawn at random from the easy, medium or hard third of a task.

    Each task's rows are split into difficulty tertiles (:func:`difficulty_tertiles`, ties in a
    seeded order) and the picks are a seeded random sample of the chosen tertile. When a task's
    budget exceeds its tertile, the rest come from the nearest other tertile (for ``medium``: the
    easier one first), again in random order, and their reasons say so.

    Parameters
    ----------
    bucket:
        ``easy``, ``medium`` or ``hard``. ``easy`` by default: it was best in two of the three
        datasets of paper C's Table 1 (tunewise's choice, the paper names no default).
    difficulty:
        As for ``difficulty_window``.
    """

    name = "difficulty_bucket"
    parameters = {
        "bucket": choice("one of: 'easy', 'medium', 'hard'", BUCKETS, help="easy, medium or hard third of each task."),
        "difficulty": _DIFFICULTY_PARAM,
    }

    def __init__(self, bucket: str = "easy", difficulty: str = DEFAULT_DIFFICULTY) -> None:
        self.bucket = bucket
        self.difficulty = difficulty

    def _sort_keys(self, values, tasks, groups, group_budgets, rng):
        tertile = difficulty_tertiles(values, tasks, rng)
        target = BUCKETS.index(self.bucket)
        # Other tertiles by distance from the chosen one, the easier first on equal distance.
        away = np.abs(tertile - target) * 2 + (tertile > target)

        def explain(picked: np.ndarray) -> list[str]:
            return [
                f"drawn at random from the {self.bucket} third of its task by {self.difficulty}"
                if tertile[row] == target else
                f"the {self.bucket} third of its task ran out: drawn at random from the {BUCKETS[tertile[row]]} "
                f"third by {self.difficulty}"
                for row in picked
            ]

        return (away,), explain
