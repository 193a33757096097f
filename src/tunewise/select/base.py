"""What every selection strategy shares: the result type, parameter checks, input checks.

A strategy is a small class in the scikit-learn manner: ``__init__`` only stores its parameters,
:meth:`Strategy.select` checks them (one uniform message for every strategy and parameter),
checks the score columns it needs, and returns a :class:`Selection`.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.data.table import embedding_matrix


@dataclass(frozen=True, eq=False)
class Selection:
    """An ordered selection: row positions into the scores table, best first.

    ``positions[k]`` is the row of the k-th pick and ``reasons[k]`` says why it was picked.
    ``notes`` are things the user should know about the run as a whole (e.g. the budget was
    larger than the pool); ``details`` holds JSON-ready facts for the provenance (e.g. the task
    weights).
    """

    positions: np.ndarray
    reasons: list[str]
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positions)


@dataclass(frozen=True)
class Param:
    """A declared parameter: what a valid value looks like, and the check.

    ``check(value)`` returns None when the value is valid, or a short detail of what is wrong
    (an empty string when ``expected`` already says it all).
    """

    expected: str
    check: Callable[[Any], str | None]


def invalid_parameter(strategy: str, name: str, value: Any, expected: str, detail: str = "") -> TunewiseError:
    """The one error every invalid strategy parameter raises."""
    message = f"strategy '{strategy}': invalid parameter {name}={value!r}: expected {expected}"
    if detail:
        message += f" ({detail})"
    return TunewiseError(message)


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable:
    """Check: a finite real number in [low, high] (or (low, high] with ``low_open``)."""

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
            return ""
        if low is not None and (value <= low if low_open else value < low):
            return ""
        if high is not None and value > high:
            return ""
        return None

    return check


def integer(low: int) -> Callable:
    """Check: a whole number ≥ low."""

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            return ""
        return None

    return check


def one_of(*choices: str) -> Callable:
    """Check: one of the given strings (a near miss gets "did you mean")."""

    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in choices:
            return None
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        return f"did you mean '{close[0]}'?" if close else ""

    return check


def column_name(value: Any) -> str | None:
    """Check: a non-empty column name (whether the column exists is checked against the scores)."""
    return None if isinstance(value, str) and value else ""


class Strategy:
    """Base class: parameter declaration and checks, budget handling, input checks.

    Subclasses set ``name``, declare ``parameters`` and implement :meth:`_select`; they may
    override :meth:`required_columns` and :meth:`_check_params` (for checks across parameters).
    """

    name: ClassVar[str]
    parameters: ClassVar[dict[str, Param]] = {}

    def get_params(self) -> dict[str, Any]:
        """The strategy's parameters, as passed (JSON-ready)."""
        return {key: getattr(self, key) for key in self.parameters}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items())
        return f"{type(self).__name__}({arguments})"

    def validate(self) -> Strategy:
        """Check every parameter; raise the uniform error on the first invalid one."""
        for key, param in self.parameters.items():
            value = getattr(self, key)
            detail = param.check(value)
            if detail is not None:
                raise invalid_parameter(self.name, key, value, param.expected, detail)
        self._check_params()
        return self

    def _check_params(self) -> None:
        """Checks that involve several parameters; raise :func:`invalid_parameter`."""

    def required_columns(self) -> tuple[str, ...]:
        """Score columns this strategy reads; each must exist and hold no NaN."""
        return ()

    def select(self, scores: pd.DataFrame, budget: int, seed: int = 0) -> Selection:
        """Pick ``budget`` rows of ``scores``, best first.

        A budget larger than the pool selects every row (and says so in ``notes``); all
        randomness comes from ``np.random.default_rng(seed)``, so the same inputs and seed give
        the same selection.
        """
        self.validate()
        if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0:
            raise TunewiseError(f"the budget must be a whole number ≥ 0, got {budget!r}", field="budget")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise TunewiseError(f"the seed must be a whole number ≥ 0, got {seed!r}", field="seed")
        for column in self.required_columns():
            check_column(scores, column)
        notes = []
        if budget > len(scores):
            notes.append(
                f"the budget ({budget}) is larger than the pool ({len(scores)} rows): selecting all of them"
            )
            budget = len(scores)
        positions, reasons, details = self._select(scores, int(budget), np.random.default_rng(seed))
        return Selection(np.asarray(positions, dtype=np.int64), list(reasons), notes, details)

    def _select(
        self, scores: pd.DataFrame, budget: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[str], dict]:
        """Positions (best first), one reason per pick, and details; ``budget`` ≤ len(scores)."""
        raise NotImplementedError


def build_strategy(strategy_class: type[Strategy], params: Mapping[str, Any]) -> Strategy:
    """Construct and validate a strategy, refusing parameter names it does not declare."""
    for key, value in params.items():
        if key not in strategy_class.parameters:
            known = list(strategy_class.parameters)
            expected = f"one of its parameters: {did_you_mean(key, known)}" if known else "no parameters at all"
            raise invalid_parameter(strategy_class.name, key, value, expected)
    return strategy_class(**params).validate()


def check_column(scores: pd.DataFrame, column: str) -> None:
    """Raise a clear error if ``column`` is missing from the scores or holds NaN."""
    if column not in scores.columns:
        raise TunewiseError(
            f"the scores have no '{column}' column",
            field=column,
            fix=f"score the pool with the '{column}' indicator, or name another column "
            f"({did_you_mean(column, [str(name) for name in scores.columns])})",
        )
    if column == "embedding":
        return  # a vector column: checked when the matrix is built (embeddings_without_nan)
    missing = int(scores[column].isna().sum())
    if missing:
        raise TunewiseError(
            f"column '{column}' is NaN in {missing} of {len(scores)} rows",
            field=column,
            fix=f"score those rows with the '{column}' indicator, or drop them from the scores",
        )


def embeddings_without_nan(scores: pd.DataFrame) -> np.ndarray:
    """The (rows, dim) float32 embedding matrix, refusing rows with NaN."""
    if len(scores) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    matrix = embedding_matrix(scores)
    missing = int(np.isnan(matrix).any(axis=1).sum())
    if missing:
        raise TunewiseError(
            f"column 'embedding' is NaN in {missing} of {len(scores)} rows",
            field="embedding",
            fix="re-score those rows with the 'embedding' indicator, or drop them from the scores",
        )
    return matrix


def task_codes(scores: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Each row's task as an integer code, and the task names (sorted) the codes index."""
    codes, names = pd.factorize(scores["task"].astype(str), sort=True)
    return codes.astype(np.int64), [str(name) for name in names]


def rank_quantile(values: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each value's rank quantile in [0, 1] within its group (DESIGN.md §4 step 1).

    The smallest value gets 0 and the largest 1; ties share their average rank, so a group whose
    values are all equal, or a group of one row, sits at 0.5.
    """
    values = np.asarray(values, dtype=np.float64)
    if groups is None:
        groups = np.zeros(len(values), dtype=np.int64)
    if len(values) == 0:
        return values.copy()
    ranks = pd.Series(values).groupby(groups).rank(method="average").to_numpy()
    sizes = np.bincount(groups)[groups]
    spread = np.maximum(sizes - 1, 1)
    return np.where(sizes > 1, (ranks - 1.0) / spread, 0.5)


class GroupRanker:
    """A strategy that can also order the rows within each group (used within tasks).

    :meth:`rank_in_groups` returns every row position ordered by group code then preference, and
    a function that explains a set of picked positions (one reason each).
    """

    def rank_in_groups(
        self,
        scores: pd.DataFrame,
        groups: np.ndarray,
        group_budgets: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, Callable[[np.ndarray], list[str]]]:
        raise NotImplementedError

    def _select(self, scores, budget, rng):
        groups = np.zeros(len(scores), dtype=np.int64)
        order, explain = self.rank_in_groups(scores, groups, np.array([budget]), rng)
        picked = order[:budget]
        return picked, explain(picked), {}


def check_budget_fits_pool(budget: int, pool_size: int, path, cap_to_pool: bool) -> None:
    """Stop on a budget above the pool, usually a typo or the wrong file, unless --cap-to-pool."""
    if budget > pool_size and not cap_to_pool:
        raise TunewiseError(f"--budget {budget} is larger than the pool ({pool_size} examples)", file=path,
                            field="budget",
                            fix=f"pass --budget {pool_size} or less, or add --cap-to-pool to take the whole pool")
