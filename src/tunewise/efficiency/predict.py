"""Predict a task's learning curve and the labels it needs from its CoS-Low (paper A, DESIGN.md §2).

AUC' = c · CoS-Low + I, with the two coefficients fitted per model over tasks whose curves were
measured. The predicted normalised curve is y = x^p with p = (1 − AUC') / AUC', where x is the
normalised log budget and y the fraction of the way from zero-shot to ceiling; the budget needed
for a normalised target τ is then n* = N^(τ^(AUC' / (1 − AUC'))).

Coefficients come from three places only: the paper's three models, a calibration file written by
``tunewise calibrate`` (or :func:`write_calibration`), or one shipped with tunewise and measured
by real sweeps. Nothing else is made up.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from tunewise.efficiency.curve import (
    DEFAULT_GRID,
    DEFAULT_MAX_BUDGET,
    budget_at,
    normalise_curve,
)
from tunewise.errors import TunewiseError, did_you_mean
from tunewise.io import write_json

# AUC' is clipped into the open interval (0, 1): at exactly 0 or 1 the curve exponent
# p = (1 - AUC') / AUC' is infinite or zero and every budget prediction degenerates.
_AUC_MARGIN = 1e-6
_PAPER = "Je & Raffel, arXiv 2512.24991"
# How the caveat of a calibration marked superseded starts, wherever it is printed.
SUPERSEDED = "SUPERSEDED, do not rely on it:"


class Coefficients(NamedTuple):
    """AUC' = slope · CoS-Low + intercept, where the two numbers come from, and the curves' axis.

    An AUC depends on the budgets it was measured over, so coefficients predict AUCs on the axis
    they were fitted on: ``max_budget`` (N) and ``grid``. Predicted curves and labels needed must
    use the same N, or a calibration made with N = 64 would be read as one made with N = 5000.
    """

    slope: float
    intercept: float
    source: str = ""
    max_budget: int = DEFAULT_MAX_BUDGET
    grid: tuple[int, ...] = DEFAULT_GRID
    caveat: str = ""  # what a reader of the predictions must know, e.g. a calibration's poor fit


@dataclass(frozen=True)
class _PaperModel:
    model_id: str
    coefficients: Coefficients


PAPER_COEFFICIENTS = {
    "llama-3.1-8b": _PaperModel(
        "meta-llama/Llama-3.1-8B-Instruct",
        Coefficients(0.545, 0.310, f"paper:llama-3.1-8b ({_PAPER}, Llama-3.1-8B-Instruct)"),
    ),
    "mistral-7b": _PaperModel(
        "mistralai/Mistral-7B-Instruct-v0.3",
        Coefficients(0.797, 0.357, f"paper:mistral-7b ({_PAPER}, Mistral-7B-Instruct-v0.3)"),
    ),
    "qwen2.5-14b": _PaperModel(
        "Qwen/Qwen2.5-14B-Instruct",
        Coefficients(0.526, 0.305, f"paper:qwen2.5-14b ({_PAPER}, Qwen2.5-14B-Instruct)"),
    ),
}
PAPER_PREFIX = "paper:"


def predict_auc(coslow: float, coefficients: Coefficients | Sequence[float]) -> float:
    """AUC' = c · CoS-Low + I, clipped into the open interval (0, 1)."""
    slope, intercept = coefficients[0], coefficients[1]
    return min(max(slope * coslow + intercept, _AUC_MARGIN), 1 - _AUC_MARGIN)


def curve_exponent(auc: float) -> float:
    """p = (1 − AUC) / AUC, the exponent of the predicted curve y = x^p."""
    return (1 - auc) / auc


def predicted_curve(auc: float, x):
    """The predicted normalised score y = x^p at normalised log budget(s) ``x`` in [0, 1].

    ``x`` may be a number or a numpy array; the result has the same shape.
    """
    return x ** curve_exponent(auc)


def labels_needed(auc: float, tau: float, max_budget: int = DEFAULT_MAX_BUDGET) -> float:
    """n* = N^(τ^(AUC / (1 − AUC))): the budget at which the predicted curve reaches ``tau``.

    ``tau`` is a normalised target in (0, 1]: the fraction of the way from the zero-shot score to
    the ceiling, not a raw accuracy.
    """
    _check_target(tau)
    return budget_at(tau ** (1 / curve_exponent(auc)), max_budget)


def normalised_target(target: float, zero_shot: float, ceiling: float) -> float:
    """τ = (target − zero-shot) / (ceiling − zero-shot): a raw target score as the fraction of the
    way from the zero-shot score to the ceiling, which is what :func:`labels_needed` takes.

    ``ceiling`` is the one the AUC is normalised by (paper A: max(human score, best measured score),
    ``calculate_per_task_auc.py:102, 128``). Paper A's README calls τ = 0.9 "90 % accuracy"; it is
    this fraction, not an accuracy.

    Raises
    ------
    TunewiseError
        A non-finite input, a ceiling not above the zero-shot score, or a target at or below the
        zero-shot score (already reached without labels) or above the ceiling (the curve never gets
        there).
    """
    for name, value in (("target_accuracy", target), ("zero_shot", zero_shot), ("ceiling", ceiling)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TunewiseError(f"{value!r} is not a finite number", field=name, fix="give a score such as 0.8")
    if ceiling <= zero_shot:
        raise TunewiseError(f"the ceiling {ceiling:g} is not above the zero-shot score {zero_shot:g}", field="ceiling",
                            fix="give the human or target score the task could reach, above its zero-shot score")
    if target <= zero_shot:
        raise TunewiseError(f"the target {target:g} is not above the zero-shot score {zero_shot:g}: it needs no labels",
                            field="target_accuracy", fix="aim above the zero-shot score")
    if target > ceiling:
        raise TunewiseError(f"the target {target:g} is above the ceiling {ceiling:g}, which the curve never exceeds",
                            field="target_accuracy", fix="aim at or below the ceiling, or raise --ceiling")
    return (target - zero_shot) / (ceiling - zero_shot)


def observed_labels_needed(
    curve: Mapping[int, float] | Sequence[Mapping[int, float]],
    tau: float,
    ceiling: float | None = None,
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
) -> float | None:
    """The budget at which a measured curve's normalised envelope first reaches ``tau``.

    ``curve`` is one seed's ``{budget: score}`` or a list of them (see
    :func:`tunewise.efficiency.curve.normalise_curve`). Between two budgets the envelope is interpolated linearly in log budget (the geometry of the
    AUC). Returns None when the curve never reaches ``tau`` up to ``max_budget``.
    """
    _check_target(tau)
    normalised = normalise_curve(curve, ceiling=ceiling, max_budget=max_budget, grid=grid)
    points = list(zip(normalised.x, normalised.y))
    for (x_before, y_before), (x_after, y_after) in zip(points, points[1:]):
        if y_after >= tau:
            x = x_before + (tau - y_before) / (y_after - y_before) * (x_after - x_before)
            return budget_at(x, normalised.axis_end)
    return None


@dataclass(frozen=True)
class ScheduleCost:
    """What an annotate-train-evaluate doubling schedule spends before it reaches a target.

    ``labels`` is the total annotated (labels are kept between rounds, so it is the last round's
    budget); ``examples_trained`` sums every round's training set; ``budgets`` lists the rounds.
    """

    labels: int
    rounds: int
    examples_trained: int
    budgets: tuple[int, ...]


def doubling_schedule_cost(
    curve: Mapping[int, float] | Sequence[Mapping[int, float]],
    tau: float,
    start: int = 50,
    ceiling: float | None = None,
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
) -> ScheduleCost | None:
    """The cost of labelling ``start``, 2·start, 4·start, … (the last round capped at
    ``max_budget``) until the measured curve reaches ``tau``.

    A round succeeds when its budget is at or past :func:`observed_labels_needed`. Returns None
    when the curve never reaches ``tau``.
    """
    if start < 1:
        raise TunewiseError(f"the schedule must start at 1 or more labels, got {start}", field="start",
                            fix="start the schedule at e.g. 50")
    needed = observed_labels_needed(curve, tau, ceiling=ceiling, max_budget=max_budget, grid=grid)
    if needed is None:
        return None
    budgets = [min(start, max_budget)]
    while budgets[-1] < needed and budgets[-1] < max_budget:
        budgets.append(min(budgets[-1] * 2, max_budget))
    return ScheduleCost(labels=budgets[-1], rounds=len(budgets), examples_trained=sum(budgets),
                        budgets=tuple(budgets))


# Predictor columns a measured-tasks file may hold beside CoS-Low (paper A's comparison predictors,
# plots/result_comparison.png): CoS-Low on a random sample, the gradient norm, the mean confidence.
PREDICTORS = ("coslow", "coslow_random", "grad_norm", "mean_confidence")


@dataclass(frozen=True)
class TaskFit:
    """One task of a calibration: its measurement and its leave-one-task-out predictions.

    ``loto_predicted_auc`` is ``loto_slope`` · CoS-Low + ``loto_intercept`` with the coefficients
    fitted on the other tasks, not clipped (as ``pred`` in misc_utils.py:52-59); ``loto_mean_auc``
    is the other tasks' mean AUC.
    """

    task: str
    coslow: float
    measured_auc: float
    loto_predicted_auc: float
    loto_mean_auc: float
    loto_slope: float
    loto_intercept: float


@dataclass(frozen=True)
class Spread:
    """Minimum, maximum and standard deviation (n − 1 in the denominator) of a coefficient over
    the leave-one-task-out folds."""

    min: float
    max: float
    std: float | None


@dataclass(frozen=True)
class PredictorReport:
    """How well one predictor column tracks the measured AUC, over the ``tasks`` rows that have it.

    ``pearson`` and ``spearman`` (with two-sided p-values) correlate the predictor with the AUC
    (None when either is constant); ``loto_mae`` is the leave-one-task-out absolute error of
    AUC ~ predictor (ordinary least squares), ``mean_mae`` that of predicting the other tasks'
    mean AUC on the same rows. Errors are in AUC units (× 100 for AUC points).
    """

    predictor: str
    tasks: int
    pearson: float | None
    pearson_p: float | None
    spearman: float | None
    spearman_p: float | None
    loto_mae: float | None
    mean_mae: float | None


@dataclass(frozen=True)
class Calibration:
    """Coefficients fitted by least squares, with leave-one-task-out (LOTO) errors.

    ``loto_mae`` is the mean absolute error |AUC − AUC'| on each task when the coefficients are
    fitted on the other tasks, in AUC units: the ``abs_diff`` of paper A's released code
    (misc_utils.py:65) and, × 100, the unit of the paper's 8.6 (CoS-Low) and 12.5 (predicting the
    mean). ``mean_mae`` does the same for the baseline that predicts the other tasks' mean AUC.
    ``*_relative_error`` are the mean of those errors divided by the measured AUC, in percent
    (None when some measured AUC is 0): a different quantity, never to be set beside 8.6 / 12.5.
    ``slope_spread`` and ``intercept_spread`` describe the coefficients over the LOTO folds;
    ``predictors`` reports every predictor column given (CoS-Low first).
    """

    coefficients: Coefficients
    tasks: tuple[TaskFit, ...]
    loto_mae: float
    loto_relative_error: float | None
    mean_mae: float
    mean_relative_error: float | None
    slope_spread: Spread | None = None
    intercept_spread: Spread | None = None
    predictors: tuple[PredictorReport, ...] = ()
    metadata: dict = field(default_factory=dict)


def fit_coefficients(coslows: Sequence[float], aucs: Sequence[float]) -> Coefficients:
    """Ordinary least squares of AUC on CoS-Low: (slope, intercept), as ``ols("auc ~ coslow")``
    in misc_utils.py:46-50."""
    mean_x = sum(coslows) / len(coslows) if coslows else 0.0
    spread = sum((x - mean_x) ** 2 for x in coslows)
    if spread == 0:
        raise TunewiseError("least squares needs at least two different CoS-Low values", field="coslow",
                            fix="measure tasks whose CoS-Low values differ")
    mean_y = sum(aucs) / len(aucs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(coslows, aucs)) / spread
    return Coefficients(slope, mean_y - slope * mean_x)


def calibrate(
    points: Iterable[tuple[str, float, float] | Mapping],
    source: str = "calibration",
    max_budget: int = DEFAULT_MAX_BUDGET,
    grid: Sequence[int] = DEFAULT_GRID,
) -> Calibration:
    """Fit AUC' = c · CoS-Low + I over ``(task, coslow, measured_auc)`` rows, leave-one-task-out.

    Follows ``run_leave_one_out`` of paper A's released code (``utils/misc_utils.py:34-65`` of
    github.com/r-three/dataefficiency at commit 2430231): per held-out task, OLS on the other
    tasks, an unclipped linear prediction, and its absolute error. A row may also be a mapping with
    ``task``, ``coslow``, ``auc`` and any of the other :data:`PREDICTORS` (None or absent when not
    measured); each predictor present is then reported (:class:`PredictorReport`).

    Several rows may share a task (e.g. repeated measurements); leave-one-task-out leaves all of a
    task's rows out together. Needs at least three tasks, so that every LOTO fit has two.
    ``max_budget`` and ``grid`` are those the AUCs were computed with; the coefficients keep them.
    """
    rows = [_calibration_row(point) for point in points]
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    if len(tasks) < 3:
        raise TunewiseError(f"calibration needs at least 3 tasks, got {len(tasks)}", field="tasks",
                            fix="measure the learning curve and CoS-Low of more tasks")
    coefficients = fit_coefficients([row["coslow"] for row in rows], [row["auc"] for row in rows])
    folds = _leave_one_task_out(rows, "coslow")
    fits = [TaskFit(row["task"], row["coslow"], row["auc"], predicted, mean, fold.slope, fold.intercept)
            for row, predicted, mean, fold in folds]
    per_fold = {fit.task: fit for fit in fits}.values()
    return Calibration(
        coefficients=Coefficients(coefficients.slope, coefficients.intercept, source, max_budget, tuple(grid)),
        tasks=tuple(fits),
        loto_mae=_mean([abs(f.loto_predicted_auc - f.measured_auc) for f in fits]),
        loto_relative_error=_mean_relative_error([(f.loto_predicted_auc, f.measured_auc) for f in fits]),
        mean_mae=_mean([abs(f.loto_mean_auc - f.measured_auc) for f in fits]),
        mean_relative_error=_mean_relative_error([(f.loto_mean_auc, f.measured_auc) for f in fits]),
        slope_spread=_spread([fit.loto_slope for fit in per_fold]),
        intercept_spread=_spread([fit.loto_intercept for fit in per_fold]),
        predictors=tuple(compare_predictors(rows)),
    )


class CurvePredictor:
    """Predicts a task's learning curve from its CoS-Low: AUC' = ``coef_`` · CoS-Low + ``intercept_``.

    The fitted thing of paper A, in scikit-learn's shape: ``__init__`` stores settings only,
    :meth:`fit` returns ``self`` with the learned state in trailing-underscore attributes
    (``coef_``, ``intercept_``, ``coefficients_``, ``calibration_`` with the leave-one-task-out
    errors, ``loto_mae_`` in AUC units). :meth:`from_paper` and :meth:`from_coefficients` give an
    already fitted predictor (the paper's coefficients, a calibration file's).
    """

    def __init__(self, *, max_budget: int = DEFAULT_MAX_BUDGET, grid: Sequence[int] = DEFAULT_GRID,
                 source: str = "calibration") -> None:
        self.max_budget = max_budget
        self.grid = tuple(grid)
        self.source = source

    def fit(self, points: Iterable[tuple[str, float, float] | Mapping]) -> CurvePredictor:
        """Fit on ``(task, coslow, measured_auc)`` rows (see :func:`calibrate`); returns ``self``."""
        self.calibration_ = calibrate(points, self.source, self.max_budget, self.grid)
        self._set(self.calibration_.coefficients)
        self.loto_mae_ = self.calibration_.loto_mae
        return self

    @classmethod
    def from_coefficients(cls, coefficients: Coefficients) -> CurvePredictor:
        """A predictor with known coefficients (a calibration file, the shipped ones)."""
        predictor = cls(max_budget=coefficients.max_budget, grid=coefficients.grid, source=coefficients.source)
        predictor._set(coefficients)
        return predictor

    @classmethod
    def from_paper(cls, model: str) -> CurvePredictor:
        """Paper A's coefficients for ``llama-3.1-8b``, ``mistral-7b`` or ``qwen2.5-14b``."""
        return cls.from_coefficients(paper_coefficients(model))

    def _set(self, coefficients: Coefficients) -> None:
        self.coefficients_ = coefficients
        self.coef_, self.intercept_ = coefficients.slope, coefficients.intercept

    def _check_fitted(self) -> Coefficients:
        if not hasattr(self, "coefficients_"):
            raise TunewiseError("this CurvePredictor is not fitted yet", field="coefficients",
                                fix="call fit(rows), or make it with from_paper / from_coefficients")
        return self.coefficients_

    def predict_auc(self, coslow: float) -> float:
        """The predicted AUC' in (0, 1) of a task with this CoS-Low."""
        return predict_auc(coslow, self._check_fitted())

    def labels_needed(self, coslow: float, tau: float) -> float:
        """Labels for the predicted curve to reach the normalised target ``tau`` (see :func:`labels_needed`)."""
        return labels_needed(self.predict_auc(coslow), tau, self._check_fitted().max_budget)

    def predicted_curve(self, coslow: float, x):
        """The predicted normalised score at normalised log budget(s) ``x``."""
        return predicted_curve(self.predict_auc(coslow), x)

    def __repr__(self) -> str:
        fitted = f", coef_={self.coef_:.4g}, intercept_={self.intercept_:.4g}" if hasattr(self, "coef_") else ""
        return f"CurvePredictor(max_budget={self.max_budget}{fitted})"


def compare_predictors(rows: Sequence[Mapping], predictors: Sequence[str] = PREDICTORS) -> list[PredictorReport]:
    """Pearson and Spearman correlation with the AUC, and the leave-one-task-out error against
    predicting the mean, of every predictor in ``predictors`` that some row holds.

    ``rows`` are mappings with ``task``, ``auc`` and predictor values (None or absent when not
    measured); each predictor is judged on the rows that have it. A predictor measured on fewer
    than three tasks is reported without correlations or errors. Paper A compares CoS-Low with the
    same three alternatives by correlation (``plots/result_comparison.png``).
    """
    from scipy import stats

    reports = []
    for name in predictors:
        have = [row for row in rows if row.get(name) is not None]
        if not have:
            continue
        tasks = {row["task"] for row in have}
        values = [float(row[name]) for row in have]
        aucs = [float(row["auc"]) for row in have]
        pearson = pearson_p = spearman = spearman_p = loto = mean_mae = None
        if len(tasks) >= 3:
            if len(set(values)) > 1 and len(set(aucs)) > 1:
                pearson, pearson_p = (float(v) for v in stats.pearsonr(values, aucs))
                spearman, spearman_p = (float(v) for v in stats.spearmanr(values, aucs))
                folds = _leave_one_task_out(have, name)
                loto = _mean([abs(predicted - row["auc"]) for row, predicted, _, _ in folds])
            mean_mae = _mean([abs(_mean([r["auc"] for r in have if r["task"] != row["task"]]) - row["auc"])
                              for row in have])
        reports.append(PredictorReport(name, len(tasks), pearson, pearson_p, spearman, spearman_p, loto, mean_mae))
    return reports


def _calibration_row(point) -> dict:
    """A row as a dict with a str task and float coslow, auc and predictors (None when absent)."""
    if isinstance(point, Mapping):
        row = {"task": str(point["task"]), "coslow": point["coslow"], "auc": point["auc"],
               **{name: point.get(name) for name in PREDICTORS[1:]}}
    else:
        task, coslow, auc = point
        row = {"task": str(task), "coslow": coslow, "auc": auc}
    for key, value in row.items():
        if key == "task" or (value is None and key not in ("coslow", "auc")):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TunewiseError(f"task '{row['task']}' has a missing or non-finite {key}: {value!r}",
                                field=f"{row['task']}.{key}", fix="give finite numbers")
        row[key] = float(value)
    return row


def _leave_one_task_out(rows: Sequence[Mapping], predictor: str) -> list[tuple[Mapping, float, float, Coefficients]]:
    """Per row: (row, prediction from the fit without its task, mean AUC of the other tasks, that fit)."""
    results = []
    for held_out in dict.fromkeys(row["task"] for row in rows):
        rest = [row for row in rows if row["task"] != held_out]
        fold = fit_coefficients([row[predictor] for row in rest], [row["auc"] for row in rest])
        rest_mean = _mean([row["auc"] for row in rest])
        results.extend((row, fold.slope * row[predictor] + fold.intercept, rest_mean, fold)
                       for row in rows if row["task"] == held_out)
    return results


def _spread(values: Sequence[float]) -> Spread:
    mean = _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Spread(min(values), max(values), std)


def write_calibration(calibration: Calibration, path: str | os.PathLike) -> Path:
    """Write a calibration as JSON (atomically), readable by :func:`read_calibration` and ``--coefficients``.

    Errors are in AUC units; ``loto_mae_points`` and ``mean_predictor_mae_points`` give them × 100,
    the unit of paper A's 8.6 and 12.5.
    """

    document = {
        **calibration.metadata,
        **calibration_summary(calibration),
        "source": calibration.coefficients.source,
        "max_budget": calibration.coefficients.max_budget,
        "grid": list(calibration.coefficients.grid),
        "tasks": [asdict(fit) for fit in calibration.tasks],
    }
    return write_json(path, document)


def calibration_summary(calibration: Calibration) -> dict:
    """The fit and its errors as plain data: coefficients, leave-one-task-out errors in AUC units and
    × 100 (``*_points``, the unit of paper A's 8.6 and 12.5), relative errors, every predictor's
    report and the coefficients' spread over the folds."""
    return {
        "slope": calibration.coefficients.slope,
        "intercept": calibration.coefficients.intercept,
        "loto_mae": calibration.loto_mae,
        "loto_mae_points": 100 * calibration.loto_mae,
        "mean_predictor_mae": calibration.mean_mae,
        "mean_predictor_mae_points": 100 * calibration.mean_mae,
        "loto_relative_error_percent": calibration.loto_relative_error,
        "mean_predictor_relative_error_percent": calibration.mean_relative_error,
        "coefficient_spread": {
            "slope": None if calibration.slope_spread is None else asdict(calibration.slope_spread),
            "intercept": None if calibration.intercept_spread is None else asdict(calibration.intercept_spread),
        },
        "predictors": [asdict(report) for report in calibration.predictors],
    }


def read_calibration(path: str | os.PathLike) -> Coefficients:
    """Read the coefficients from a calibration JSON file: ``slope`` and ``intercept``, and the
    ``max_budget`` and ``grid`` they were fitted with (DESIGN's 5000 and grid when absent), and the
    ``caveat`` to print beside every prediction; a file marked ``"superseded": true`` gets a caveat
    that starts with :data:`SUPERSEDED`."""
    path = Path(path)
    if not path.is_file():
        raise TunewiseError("no such calibration file", file=path,
                            fix="run `tunewise calibrate MEASURED.json -o calibration.json` first")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunewiseError(f"malformed JSON ({error.msg})", file=path, line=error.lineno,
                            fix="pass the file written by `tunewise calibrate -o`") from None
    except UnicodeDecodeError as error:
        raise TunewiseError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=path,
                            fix="pass the file written by `tunewise calibrate -o` (or re-encode it as UTF-8)") from None
    if not isinstance(document, dict):
        raise TunewiseError("a calibration file must be a JSON object", file=path,
                            fix="pass the file written by `tunewise calibrate -o`")
    values = []
    for key in ("slope", "intercept"):
        value = document.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TunewiseError(f"missing or not a finite number: {value!r}", file=path, field=key,
                                fix="pass the file written by `tunewise calibrate -o`")
        values.append(float(value))
    max_budget = document.get("max_budget", DEFAULT_MAX_BUDGET)
    if isinstance(max_budget, bool) or not isinstance(max_budget, int) or max_budget < 2:
        raise TunewiseError(f"not a whole number ≥ 2: {max_budget!r}", file=path, field="max_budget",
                            fix="pass the file written by `tunewise calibrate -o`")
    grid = document.get("grid", list(DEFAULT_GRID))
    if (not isinstance(grid, list) or not grid
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in grid)):
        raise TunewiseError(f"not a list of positive whole numbers: {grid!r}", file=path, field="grid",
                            fix="pass the file written by `tunewise calibrate -o`")
    caveat = document.get("caveat", "")
    if not isinstance(caveat, str):
        raise TunewiseError(f"not a text: {caveat!r}", file=path, field="caveat",
                            fix="write the caveat as one string, or leave it out")
    superseded = document.get("superseded", False)
    if not isinstance(superseded, bool):
        raise TunewiseError(f"not true or false: {superseded!r}", file=path, field="superseded",
                            fix="write true when the calibration must no longer be trusted, or leave it out")
    if superseded and not caveat.startswith(SUPERSEDED):
        caveat = f"{SUPERSEDED} {caveat}".strip()
    fitted_on = document.get("model") or document.get("model_fingerprint")
    source = f"{path}" + (f" (calibrated on {fitted_on})" if fitted_on else "")
    return Coefficients(values[0], values[1], source, max_budget, tuple(grid), caveat)


def paper_coefficients(name: str) -> Coefficients:
    """The coefficients paper A reports for one of its models: ``llama-3.1-8b``, ``mistral-7b``,
    ``qwen2.5-14b`` (a leading ``paper:`` is accepted)."""
    key = name.removeprefix(PAPER_PREFIX).lower()
    if key not in PAPER_COEFFICIENTS:
        raise TunewiseError(f"the paper has no coefficients for '{key}'", field="coefficients",
                            fix=did_you_mean(key, PAPER_COEFFICIENTS))
    return PAPER_COEFFICIENTS[key].coefficients


def load_coefficients(spec: str) -> Coefficients:
    """``paper:NAME`` for the paper's figures, otherwise the path of a calibration file."""
    if spec.startswith(PAPER_PREFIX):
        return paper_coefficients(spec)
    if spec.lower() in PAPER_COEFFICIENTS and not Path(spec).exists():
        raise TunewiseError(f"'{spec}' is neither a calibration file nor a paper model", field="coefficients",
                            fix=f"write {PAPER_PREFIX}{spec.lower()} for the paper's coefficients")
    return read_calibration(spec)


def coefficients_for(model_name_or_fingerprint: str, calibration_file: str | os.PathLike | None = None) -> Coefficients:
    """The coefficients to use for a model.

    In order: the ``calibration_file`` when given; the paper's figures when the name or
    fingerprint names one of its three models; a calibration shipped with tunewise for this model
    (``tunewise/data/calibration_<model>.json``). Any other model must be calibrated first.
    """
    if calibration_file is not None:
        return read_calibration(calibration_file)
    wanted = model_name_or_fingerprint.lower()
    for paper_model in PAPER_COEFFICIENTS.values():
        if paper_model.model_id.lower().split("/")[-1] in wanted:
            return paper_model.coefficients
    shipped = _shipped_calibration(model_name_or_fingerprint)
    if shipped is not None:
        return shipped
    raise TunewiseError(
        f"no coefficients are known for model '{model_name_or_fingerprint}': they must be fitted on "
        "this model's own measured learning curves",
        field="coefficients",
        fix="run `tunewise calibrate MEASURED.json -o calibration.json` and pass --coefficients "
        "calibration.json, or knowingly borrow the paper's figures for another model with "
        + " / ".join(f"--coefficients {PAPER_PREFIX}{key}" for key in PAPER_COEFFICIENTS),
    )


def _shipped_calibration(model: str) -> Coefficients | None:
    data = resources.files("tunewise") / "efficiency"
    if not data.is_dir():
        return None
    for entry in sorted(data.iterdir(), key=lambda e: e.name):
        if not (entry.name.startswith("calibration_") and entry.name.endswith(".json")):
            continue
        document = json.loads(entry.read_text(encoding="utf-8"))
        names = {entry.name[len("calibration_"):-len(".json")], document.get("model"),
                 document.get("model_fingerprint")}
        if model in names:
            with resources.as_file(entry) as path:
                return read_calibration(path)
    return None


def _check_target(tau: float) -> None:
    if not 0 < tau <= 1:
        raise TunewiseError(f"the target {tau} is not in (0, 1]", field="targets",
                            fix="give targets as fractions of the way from zero-shot to ceiling, e.g. 0.5,0.8,0.9")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _mean_relative_error(predicted_and_measured: Sequence[tuple[float, float]]) -> float | None:
    if any(measured == 0 for _, measured in predicted_and_measured):
        return None
    return 100 * _mean([abs(p - m) / m for p, m in predicted_and_measured])


__all__ = [
    "PAPER_COEFFICIENTS",
    "PREDICTORS",
    "SUPERSEDED",
    "Calibration",
    "Coefficients",
    "CurvePredictor",
    "PredictorReport",
    "ScheduleCost",
    "Spread",
    "TaskFit",
    "calibrate",
    "calibration_summary",
    "coefficients_for",
    "compare_predictors",
    "curve_exponent",
    "doubling_schedule_cost",
    "fit_coefficients",
    "labels_needed",
    "load_coefficients",
    "normalised_target",
    "observed_labels_needed",
    "paper_coefficients",
    "predict_auc",
    "predicted_curve",
    "read_calibration",
    "write_calibration",
]
