"""The budget-dependent difficulty window (DESIGN.md §3, paper C).

Difficulty is a rank quantile q in [0, 1] within each task; for n picks the window is centred at
c(n) = clip(c0 + β·log10(n / n0), 0, 1) and takes the n rows nearest to it, so it widens by
itself when one side runs out. The defaults (c0 = 0.35 at n0 = 100, β = 0.15 per decade) are
tunewise's choice, not the paper's; :func:`fit_window_centre` fits c0 and β from real fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.select.base import GroupRanker, Param, Strategy, one_of, rank_quantile, real, task_codes

DIFFICULTY_COLUMNS = ("loss", "cot_length")


@dataclass(frozen=True)
class WindowCentre:
    """c(n) = clip(c0 + β·log10(n / n0), 0, 1): where the difficulty window sits for n picks."""

    c0: float = 0.35
    beta: float = 0.15
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


class DifficultyWindow(GroupRanker, Strategy):
    """The n rows whose within-task difficulty quantile is nearest the centre c(n).

    Ties in distance go to the easier row, then to the earlier row. Used within tasks, each task's
    window is centred for that task's own budget.
    """

    name = "difficulty_window"
    parameters = {
        "difficulty": Param("'loss' or 'cot_length'", one_of(*DIFFICULTY_COLUMNS)),
        "c0": Param("a number in [0, 1]", real(0.0, 1.0)),
        "beta": Param("a finite number", real()),
        "n0": Param("a number > 0", real(0.0, low_open=True)),
    }

    def __init__(self, difficulty: str = "loss", c0: float = 0.35, beta: float = 0.15, n0: float = 100.0) -> None:
        self.difficulty = difficulty
        self.c0 = c0
        self.beta = beta
        self.n0 = n0

    def required_columns(self):
        return (self.difficulty,)

    def rank_in_groups(self, scores, groups, group_budgets, rng):
        tasks, _ = task_codes(scores)
        quantile = rank_quantile(scores[self.difficulty].to_numpy(), tasks)
        centres = WindowCentre(self.c0, self.beta, self.n0).at(group_budgets)
        # Rounded so that distances equal on paper (0.25 and 0.45 from 0.35) tie exactly and
        # the tie goes to the easier row rather than to floating-point noise.
        distance = np.round(np.abs(quantile - centres[groups]), 12)
        order = np.lexsort((np.arange(len(scores)), quantile, distance, groups))

        def explain(picked: np.ndarray) -> list[str]:
            return [
                f"{self.difficulty} quantile {quantile[row]:.3f} in its task, "
                f"{distance[row]:.3f} from the window centre {centres[groups[row]]:.3f} "
                f"for {group_budgets[groups[row]]} picks"
                for row in picked
            ]

        return order, explain
