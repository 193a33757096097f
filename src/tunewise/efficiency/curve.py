"""Learning curves and their data-efficiency AUC (paper A, DESIGN.md §2).

A learning curve maps a fine-tuning budget n (number of labelled examples; 0 is zero-shot) to the
score a(n) of the model fine-tuned on that many examples, measured once per seed. Its data
efficiency is the area under the curve after both axes are normalised: budgets on a log scale up to
the largest budget kept, scores from the curve's floor (its zero-shot score) to its ceiling (the
human or target score, or the best measured score when that is higher).

The computation follows the released code of Je & Raffel (github.com/r-three/dataefficiency at
commit 2430231, ``utils/calculate_per_task_auc.py``, cited below as ``auc.py:LINE``) step by step,
so that it reproduces their 100 published per-task values (``results/auc_res/*.json``; the tests
recompute all of them). The paper's written definition (``plots/dataefficiency_def.png``: a mean
of f(n) over n = 0..N, linear in n) is not what its code computes (a trapezoid over log2 budgets);
tunewise follows the code, because the published coefficients were fitted on the code's values.
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

Curve = Mapping[int, float]


@dataclass(frozen=True)
class NormalisedCurve:
    """A learning curve (one or several seeds) after steps 1–6 of :func:`normalise_curve`.

    ``budgets`` are increasing; ``seed_envelopes[s][i]`` is seed s's running maximum at
    ``budgets[i]``; ``envelope`` is their mean over seeds; ``x`` and ``y`` are the normalised log
    budget and score in [0, 1]. ``max_budget`` is the N asked for (budgets above it are dropped);
    ``axis_end`` is the largest budget kept, where x = 1 (N itself when N is measured or on the grid).
    """

    budgets: tuple[int, ...]
    envelope: tuple[float, ...]
    x: tuple[float, ...]
    y: tuple[float, ...]
    floor: float
    ceiling: float
    max_budget: int
    axis_end: int
    seed_envelopes: tuple[tuple[float, ...], ...]

    @property
    def seeds(self) -> int:
        """How many seeds the curve averages."""
        return len(self.seed_envelopes)

    @property
    def auc(self) -> float:
        """Trapezoidal area under (x, y), as ``sklearn.metrics.auc`` in auc.py:13-19."""
        return sum(
            (self.x[i + 1] - self.x[i]) * (self.y[i] + self.y[i + 1]) / 2 for i in range(len(self.x) - 1)
        )


def normalised_log_budget(budget: float, max_budget: int = DEFAULT_MAX_BUDGET) -> float:
    """x = log2(max(n, 1)) / log2(N): where budget n sits on an AUC axis that ends at N (auc.py:133-135)."""
    return math.log2(max(budget, 1)) / math.log2(max_budget)


def budget_at(x: float, max_budget: int = DEFAULT_MAX_BUDGET) -> float:
    """The budget n whose normalised log budget is ``x`` (the inverse of normalised_log_budget)."""
    return float(max_budget) ** x


def normalise_curve(
    points: Curve | Sequence[Curve],
    ceiling: float | None = None,
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
) -> NormalisedCurve:
    """Normalise a learning curve ``{budget: score}``, or a list of them (one per seed).

    Steps, each as in the released code (``auc.py`` = ``utils/calculate_per_task_auc.py``):

    1. Per seed, keep the zero-shot point (n = 0) and the points with min(grid) <= n <= N
       (auc.py:63, 69, where the grid starts at 50). A seed with fewer than two kept points is not
       a curve and is refused (the released code skips it, auc.py:104-105).
    2. Per seed, add every grid budget up to N that was not measured (auc.py:25-29) and take the
       running maximum over increasing budgets, starting from 0 (auc.py:32-38): the monotone
       envelope. An added budget thus gets the best score measured before it, or 0.
    3. Average the seeds' envelopes over the budgets all seeds have (auc.py:121-122, an inner
       join): the envelope is taken per seed, then the mean, never the other way round.
    4. Ceiling C = max(``ceiling``, highest kept raw score of any seed) (auc.py:100-102); floor
       F = the lowest value of the mean envelope (auc.py:128).
    5. y = (envelope − F) / (C − F) (auc.py:128).
    6. x = log2(max(n, 1)) / log2(largest budget kept) (auc.py:133-135): the axis ends at the
       largest budget kept, which is N when N is measured or on the grid.

    Parameters
    ----------
    points:
        ``{budget: score}`` for one seed, or a list of them, one per seed (each seed's monotone
        envelope is taken first, then their mean: auc.py:103-122). Budget 0 is the zero-shot
        score. Scores are non-negative (accuracy, F1, exact match …), on any scale.
    ceiling:
        The human or target score; the ceiling is the larger of it and the best measured score.
        Without it the best measured score is the ceiling, which is not paper A's normalisation
        (it used published human scores) and inflates early gains; see
        :mod:`tunewise.efficiency.ceilings` for the human scores tunewise ships.
    max_budget:
        N: budgets above it are ignored. The log-budget axis ends at the largest budget kept.
    grid:
        The budgets the curve was meant to be measured at; a missing one counts as the best
        score at a smaller budget; budgets below the smallest are ignored (except 0).

    Raises
    ------
    TunewiseError
        Bad settings or points, a seed with fewer than two kept budgets, or a curve whose floor
        reaches its ceiling (its AUC is undefined: pass a higher ``ceiling``).
    """
    _check_grid(grid)
    if max_budget < 2 or max_budget < min(grid):
        raise TunewiseError(f"the maximum budget {max_budget} must be at least 2 and at least the smallest "
                            f"grid budget {min(grid)}", field="max_budget", fix="raise --max-budget or lower the grid")
    if ceiling is not None and (isinstance(ceiling, bool) or not math.isfinite(ceiling)):
        raise TunewiseError(f"the ceiling {ceiling} is not a finite number", field="ceiling",
                            fix="pass the human or target score, e.g. --ceiling 0.92")
    seeds = _seed_curves(points)
    smallest_grid_budget = min(grid)
    filled_in = {g for g in grid if g <= max_budget}
    top = None if ceiling is None else float(ceiling)
    envelopes: list[dict[int, float]] = []
    for number, seed in enumerate(seeds):
        _check_points(seed)
        kept = {int(n): float(s) for n, s in seed.items() if n == 0 or smallest_grid_budget <= n <= max_budget}
        which = f"seed {number}: " if len(seeds) > 1 else ""
        if len(kept) < 2:
            raise TunewiseError(
                f"{which}{'no' if not kept else 'only one'} measured budget is 0 or between "
                f"{smallest_grid_budget} and {max_budget}; a learning curve needs two",
                field="budgets",
                fix="measure the zero-shot score and at least one grid budget, or change --grid / --max-budget",
            )
        top = max(kept.values()) if top is None else max(top, max(kept.values()))
        envelope, best = {}, 0.0
        for budget in sorted(set(kept) | filled_in):
            best = max(best, kept.get(budget, 0.0))
            envelope[budget] = best
        envelopes.append(envelope)
    budgets = sorted(set.intersection(*(set(envelope) for envelope in envelopes)))
    axis_end = budgets[-1]
    if axis_end < 2:
        raise TunewiseError(f"the largest budget kept is {axis_end}, so the log-budget axis has no length",
                            field="budgets", fix="measure a budget of at least 2")
    seed_envelopes = tuple(tuple(envelope[n] for n in budgets) for envelope in envelopes)
    mean = tuple(sum(column) / len(column) for column in zip(*seed_envelopes))
    floor = min(mean)
    if top <= floor:
        raise TunewiseError(
            f"the curve is flat at {floor:g} and no ceiling above it was given, so its AUC is undefined",
            field="ceiling",
            fix="pass the human or target score with --ceiling",
        )
    return NormalisedCurve(
        budgets=tuple(budgets),
        envelope=mean,
        x=tuple(normalised_log_budget(n, axis_end) for n in budgets),
        y=tuple((value - floor) / (top - floor) for value in mean),
        floor=floor,
        ceiling=top,
        max_budget=max_budget,
        axis_end=axis_end,
        seed_envelopes=seed_envelopes,
    )


def curve_auc(points: Curve | Sequence[Curve], **settings) -> float:
    """Data efficiency of a learning curve: the area under its normalised envelope, in [0, 1];
    higher means the task learns from fewer examples. ``settings`` are :func:`normalise_curve`'s
    (``ceiling``, ``max_budget``, ``grid``)."""
    return normalise_curve(points, **settings).auc


def read_curve(path: str | os.PathLike) -> dict[int, float] | list[dict[int, float]]:
    """Read a curve file: a JSON object mapping budgets to scores, ``{"0": 0.39, "50": 0.385}``, or a
    JSON list of such objects, one per seed (returned as a list)."""
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
        return parse_curves(data)
    except TunewiseError as error:
        raise TunewiseError(error.message, file=path, field=error.field, fix=error.fix) from None


def parse_curves(data: object) -> dict[int, float] | list[dict[int, float]]:
    """Validate a decoded JSON curve: an object (one seed, see :func:`parse_curve`) or a non-empty
    list of objects (one per seed, errors name ``[i].budget``)."""
    if not isinstance(data, list):
        return parse_curve(data)
    if not data:
        raise TunewiseError("the list of per-seed curves is empty",
                            fix='write one {"0": 0.39, "50": 0.41, ...} object per seed')
    curves = []
    for number, item in enumerate(data):
        try:
            curves.append(parse_curve(item))
        except TunewiseError as error:
            raise TunewiseError(error.message, field=f"[{number}]" + (f".{error.field}" if error.field else ""),
                                fix=error.fix) from None
    return curves


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
    points: Curve | Sequence[Curve],
    path: str | os.PathLike,
    ceiling: float | None = None,
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
    title: str | None = None,
) -> Path:
    """Draw the normalised curve, its envelope and the shaded AUC to a PNG file; return its path.

    With several seeds the envelope is their mean and every seed's measured points are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = normalise_curve(points, ceiling=ceiling, max_budget=max_budget, grid=grid)
    span = curve.ceiling - curve.floor
    measured = sorted((n, s) for seed in _seed_curves(points) for n, s in seed.items() if n in curve.budgets)
    figure, axes = plt.subplots(figsize=(6, 4))
    try:
        axes.fill_between(curve.x, curve.y, alpha=0.2, label=f"AUC = {curve.auc:.3f}")
        envelope_label = "envelope" if curve.seeds == 1 else f"mean of {curve.seeds} seeds' envelopes"
        axes.plot(curve.x, curve.y, marker="o", label=envelope_label)
        axes.scatter(
            [normalised_log_budget(n, curve.axis_end) for n, _ in measured],
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


def _seed_curves(points: Curve | Sequence[Curve]) -> list[Curve]:
    """One curve as a one-seed list; a list of curves as it is."""
    if isinstance(points, Mapping):
        return [points]
    if isinstance(points, Sequence) and not isinstance(points, (str, bytes)) and points \
            and all(isinstance(seed, Mapping) for seed in points):
        return list(points)
    raise TunewiseError("a learning curve is a mapping {budget: score} or a non-empty list of them, one per seed",
                        fix='give e.g. {0: 0.39, 50: 0.41} or [{0: 0.39, 50: 0.41}, {0: 0.39, 50: 0.45}]')


def _check_points(points: Curve) -> None:
    if not points:
        raise TunewiseError("the curve has no points", fix="give at least the zero-shot score and one budget")
    for budget, score in points.items():
        if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0:
            raise TunewiseError(f"budget {budget!r} is not a non-negative whole number", field=str(budget),
                                fix="use whole-number budgets such as 0, 50, 100")
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score) or score < 0:
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
    "parse_curves",
    "parse_grid",
    "plot_curve",
    "read_curve",
]
