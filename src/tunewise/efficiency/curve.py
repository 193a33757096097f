"""Learning curves and their data-efficiency AUC (paper A, DESIGN.md §2).

A learning curve maps a fine-tuning budget n (number of labelled examples; 0 is zero-shot) to the
score a(n) of the model fine-tuned on that many examples. Its data efficiency is the area under
the curve after both axes are normalised: budgets on a log scale from 1 to the maximum budget N,
scores from the curve's floor (its zero-shot score) to its ceiling. The computation follows the
released code of Je & Raffel (github.com/r-three/dataefficiency, ``calculate_per_task_auc.py``)
step by step, so that it reproduces their published per-task values.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunewise.errors import TunewiseError
from tunewise.io import atomic_path

DEFAULT_GRID = (50, 100, 200, 500, 1000, 2500, 5000)
DEFAULT_MAX_BUDGET = 5000


@dataclass(frozen=True)
class NormalisedCurve:
    """A learning curve after steps 1–5 of DESIGN.md §2, ready for its area to be taken.

    ``budgets`` are increasing; ``envelope`` is the running maximum of the scores (missing grid
    budgets filled in); ``x`` and ``y`` are the normalised log budget and score in [0, 1].
    """

    budgets: tuple[int, ...]
    envelope: tuple[float, ...]
    x: tuple[float, ...]
    y: tuple[float, ...]
    floor: float
    ceiling: float
    max_budget: int

    @property
    def auc(self) -> float:
        """Trapezoidal area under (x, y)."""
        return sum(
            (self.x[i + 1] - self.x[i]) * (self.y[i] + self.y[i + 1]) / 2 for i in range(len(self.x) - 1)
        )


def normalised_log_budget(budget: float, max_budget: int = DEFAULT_MAX_BUDGET) -> float:
    """x = log2(max(n, 1)) / log2(N): where budget n sits on the AUC's horizontal axis."""
    return math.log2(max(budget, 1)) / math.log2(max_budget)


def budget_at(x: float, max_budget: int = DEFAULT_MAX_BUDGET) -> float:
    """The budget n whose normalised log budget is ``x`` (the inverse of normalised_log_budget)."""
    return float(max_budget) ** x


def normalise_curve(
    points: Mapping[int, float],
    ceiling: float | None = None,
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
) -> NormalisedCurve:
    """Apply steps 1–5 of DESIGN.md §2 to a curve ``{budget: score}``.

    1. Keep the zero-shot point (n = 0) and the points with min(grid) <= n <= ``max_budget``.
    2. A grid budget up to ``max_budget`` with no measurement is filled in by step 3, which gives
       it the best score measured at a smaller budget (0 when there is none, as in the released
       code).
    3. Each score becomes the running maximum over increasing budgets (the monotone envelope,
       which starts from 0 as in the released code; scores are non-negative).
    4. Ceiling C = max(``ceiling``, highest kept raw score); floor F = lowest envelope value.
    5. y = (envelope - F) / (C - F); x = log2(max(n, 1)) / log2(N).
    """
    _check_grid(grid)
    if max_budget < 2 or max_budget < min(grid):
        raise TunewiseError(f"the maximum budget {max_budget} must be at least 2 and at least the smallest "
                            f"grid budget {min(grid)}", field="max_budget", fix="raise --max-budget or lower the grid")
    if ceiling is not None and not math.isfinite(ceiling):
        raise TunewiseError(f"the ceiling {ceiling} is not a finite number", field="ceiling",
                            fix="pass the human or target score, e.g. --ceiling 0.92")
    _check_points(points)
    smallest_grid_budget = min(grid)
    kept = {int(n): float(s) for n, s in points.items() if n == 0 or smallest_grid_budget <= n <= max_budget}
    if not kept:
        raise TunewiseError(
            f"no measured budget is 0 or between {smallest_grid_budget} and {max_budget}",
            field="budgets",
            fix="measure the zero-shot score or a grid budget, or change --grid / --max-budget",
        )
    budgets = sorted(set(kept) | {g for g in grid if g <= max_budget})
    envelope = []
    best = 0.0
    for budget in budgets:
        best = max(best, kept.get(budget, 0.0))
        envelope.append(best)
    top = max(kept.values()) if ceiling is None else max(float(ceiling), max(kept.values()))
    floor = min(envelope)
    if top <= floor:
        raise TunewiseError(
            f"the curve is flat at {floor:g} and no ceiling above it was given, so its AUC is undefined",
            field="ceiling",
            fix="pass the human or target score with --ceiling",
        )
    return NormalisedCurve(
        budgets=tuple(budgets),
        envelope=tuple(envelope),
        x=tuple(normalised_log_budget(n, max_budget) for n in budgets),
        y=tuple((value - floor) / (top - floor) for value in envelope),
        floor=floor,
        ceiling=top,
        max_budget=max_budget,
    )


def curve_auc(
    points: Mapping[int, float],
    ceiling: float | None = None,
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
) -> float:
    """Data efficiency of a learning curve: the area under its normalised envelope (DESIGN.md §2).

    Parameters
    ----------
    points:
        ``{budget: score}``; budget 0 is the zero-shot score. Scores are non-negative
        (accuracy, F1, exact match …), on any scale.
    ceiling:
        The human or target score; the ceiling is the larger of it and the best measured score.
    max_budget:
        N: budgets above it are ignored and the log-budget axis ends at it.
    grid:
        The budgets the curve was meant to be measured at; a missing one counts as the best
        score at a smaller budget.

    Returns
    -------
    float
        The AUC in [0, 1]; higher means the task learns from fewer examples.
    """
    return normalise_curve(points, ceiling=ceiling, max_budget=max_budget, grid=grid).auc


def read_curve(path: str | os.PathLike) -> dict[int, float]:
    """Read a curve file: a JSON object mapping budgets to scores, ``{"0": 0.39, "50": 0.385}``."""
    path = Path(path)
    if not path.is_file():
        raise TunewiseError("no such curve file", file=path, fix="check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunewiseError(f"malformed JSON ({error.msg})", file=path, line=error.lineno,
                            fix='write the curve as {"0": 0.39, "50": 0.41, ...}') from None
    except UnicodeDecodeError:
        raise TunewiseError("not valid UTF-8", file=path, fix="re-encode the file as UTF-8") from None
    try:
        return parse_curve(data)
    except TunewiseError as error:
        raise TunewiseError(error.message, file=path, field=error.field, fix=error.fix) from None


def parse_curve(data: object) -> dict[int, float]:
    """Validate a decoded JSON curve ``{"budget": score}`` and return ``{budget: score}``."""
    if not isinstance(data, dict) or not data:
        raise TunewiseError("a curve must be a non-empty JSON object mapping budgets to scores",
                            fix='write it as {"0": 0.39, "50": 0.41, ...}')
    curve: dict[int, float] = {}
    for key, score in data.items():
        text = str(key).strip()
        if not text.isdigit():
            raise TunewiseError(f"budget '{key}' is not a whole number of examples", field=str(key),
                                fix='use whole-number keys such as "0", "50", "100"')
        budget = int(text)
        if budget in curve:
            raise TunewiseError(f"budget {budget} appears twice", field=str(key), fix="keep one score per budget")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise TunewiseError(f"the score must be a finite number, got {score!r}", field=str(key),
                                fix="give each budget one number (accuracy, F1, ...)")
        if score < 0:
            raise TunewiseError(f"the score {score} is negative", field=str(key),
                                fix="use a non-negative score such as accuracy or F1")
        curve[budget] = float(score)
    return curve


def parse_grid(text: str) -> tuple[int, ...]:
    """Parse a comma-separated grid such as ``"50,100,200"``."""
    try:
        grid = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise TunewiseError(f"the grid '{text}' is not a comma-separated list of whole numbers",
                            field="grid", fix="write it like 50,100,200,500") from None
    _check_grid(grid)
    return grid


def plot_curve(
    points: Mapping[int, float],
    path: str | os.PathLike,
    ceiling: float | None = None,
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
    title: str | None = None,
) -> Path:
    """Draw the normalised curve, its envelope and the shaded AUC to a PNG file; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = normalise_curve(points, ceiling=ceiling, max_budget=max_budget, grid=grid)
    span = curve.ceiling - curve.floor
    measured = sorted((n, s) for n, s in points.items() if n in curve.budgets)
    figure, axes = plt.subplots(figsize=(6, 4))
    try:
        axes.fill_between(curve.x, curve.y, alpha=0.2, label=f"AUC = {curve.auc:.3f}")
        axes.plot(curve.x, curve.y, marker="o", label="envelope")
        axes.scatter(
            [normalised_log_budget(n, max_budget) for n, _ in measured],
            [(s - curve.floor) / span for _, s in measured],
            marker="x", color="black", zorder=3, label="measured",
        )
        axes.set_xticks(curve.x, [str(n) for n in curve.budgets], rotation=45)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("labelled examples (log scale)")
        axes.set_ylabel(f"normalised score ({curve.floor:.3g} → {curve.ceiling:.3g})")
        # A "$" would start matplotlib's mathtext and can fail the whole drawing.
        axes.set_title((title or "learning curve").replace("$", r"\$"))
        axes.legend(loc="lower right")
        figure.tight_layout()
        path = Path(path)
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=120, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path


def _check_points(points: Mapping[int, float]) -> None:
    if not points:
        raise TunewiseError("the curve has no points", fix="give at least the zero-shot score and one budget")
    for budget, score in points.items():
        if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0:
            raise TunewiseError(f"budget {budget!r} is not a non-negative whole number", field=str(budget),
                                fix="use whole-number budgets such as 0, 50, 100")
        if not math.isfinite(score) or score < 0:
            raise TunewiseError(f"the score {score!r} is not a finite non-negative number", field=str(budget),
                                fix="use a non-negative score such as accuracy or F1")


def _check_grid(grid: Sequence[int]) -> None:
    if not grid or any(isinstance(g, bool) or not isinstance(g, numbers.Integral) or g < 1 for g in grid):
        raise TunewiseError(f"the grid {list(grid)} must be a non-empty list of positive whole numbers",
                            field="grid", fix="use e.g. 50,100,200,500,1000,2500,5000")


__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_MAX_BUDGET",
    "NormalisedCurve",
    "budget_at",
    "curve_auc",
    "normalise_curve",
    "normalised_log_budget",
    "parse_curve",
    "parse_grid",
    "plot_curve",
    "read_curve",
]
