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
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.data.table import ExampleTable, embedding_matrix, scores_of


@dataclass(frozen=True, eq=False)
class Selection:
    """An ordered selection: row positions into the table, best first.

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


class ParamCheck(NamedTuple):
    """The outcome of :meth:`Param.check`: whether the value is valid and, when it is not and the
    expected form alone does not say why, what is wrong with it."""

    valid: bool
    detail: str = ""


@dataclass(frozen=True)
class Param:
    """A declared parameter: what a valid value looks like, the test, and an optional explanation.

    ``accepts(value)`` is True for a valid value. ``explain(value)``, when given, says what is
    wrong with a refused value (e.g. "did you mean 'asc'?"); ``convert``, when given, turns what a
    caller passes by name (a string, a JSON mapping) into the value the strategy stores, or returns
    the value unchanged when it cannot, so that the test then refuses it with the uniform message
    (:func:`build_strategy` applies it; the constructor itself only stores).

    ``flag`` is the parameter's type on the command line (``float``, ``int``, ``str``, ``bool``,
    or ``Path`` for a file that ``load`` reads into parameters), None where no flag can give it
    (e.g. a mapping); ``help`` is that flag's help. ``tunewise select`` generates one flag per
    parameter name from these (:func:`tunewise.cli.options.with_strategy_options`).
    """

    expected: str
    accepts: Callable[[Any], bool]
    explain: Callable[[Any], str] | None = None
    convert: Callable[[Any], Any] | None = None
    flag: type | None = None
    help: str = ""
    load: Callable[[Any], dict] | None = None

    def check(self, value: Any) -> ParamCheck:
        """``ParamCheck(True)`` for a valid value, else ``ParamCheck(False, detail)``."""
        if self.accepts(value):
            return ParamCheck(True)
        return ParamCheck(False, self.explain(value) if self.explain is not None else "")


def invalid_parameter(strategy: str, name: str, value: Any, expected: str, detail: str = "") -> TunewiseError:
    """The one error every invalid strategy parameter raises."""
    message = f"strategy '{strategy}': invalid parameter {name}={value!r}: expected {expected}"
    if detail:
        message += f" ({detail})"
    return TunewiseError(message)


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable[[Any], bool]:
    """Test: a finite real number in [low, high] (or (low, high] with ``low_open``)."""

    def accepts(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        return high is None or value <= high

    return accepts


def integer(low: int) -> Callable[[Any], bool]:
    """Test: a whole number ≥ low."""
    return lambda value: not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low


def boolean(value: Any) -> bool:
    """Test: True or False."""
    return isinstance(value, bool)


def near_miss(value: Any, choices) -> str:
    """"did you mean 'x'?" for a string close to one of ``choices``, else ""."""
    close = difflib.get_close_matches(value, list(choices), n=1) if isinstance(value, str) else []
    return f"did you mean '{close[0]}'?" if close else ""


def choice(expected: str, choices, help: str = "") -> Param:
    """A parameter that takes one of ``choices`` (strings), a ``--flag`` with ``help``; a near miss
    gets "did you mean"."""
    choices = tuple(choices)
    return Param(expected, lambda value: isinstance(value, str) and value in choices,
                 lambda value: near_miss(value, choices), flag=str, help=help)


def column_name(value: Any) -> bool:
    """Test: a non-empty column name (whether the column exists is checked against the scores)."""
    return isinstance(value, str) and bool(value)


class Strategy:
    """Base class: parameter declaration and checks, budget handling, input checks.

    Subclasses set ``name``, declare ``parameters`` and implement :meth:`_select`; they may
    override :meth:`required_columns` and :meth:`_check_params` (for checks across parameters).
    A parameter may itself be a strategy (the ``within`` order of the task strategies); as in
    scikit-learn, :meth:`get_params` with ``deep=True`` then also lists its parameters as
    ``within__c0`` and :meth:`set_params` sets them. Strategies hold no fitted state, so two of the
    same class with the same parameters are equal.
    """

    name: ClassVar[str]
    parameters: ClassVar[dict[str, Param]] = {}
    #: False for a strategy that needs inputs no flag can give (efficiency: predicted curves).
    command_line: ClassVar[bool] = True

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters as stored; with ``deep``, nested strategies' too, as ``outer__inner``."""
        params: dict[str, Any] = {}
        for key in self.parameters:
            value = getattr(self, key)
            if deep and isinstance(value, Strategy):
                params.update((f"{key}__{inner}", item) for inner, item in value.get_params().items())
            params[key] = value
        return params

    def set_params(self, **params) -> Strategy:
        """Set parameters, ``outer__inner`` names reaching into nested strategies; returns self.

        Only the names are checked here (unknown ones get the uniform error); the values are
        checked by :meth:`validate` and :meth:`select`.
        """
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            outer, separator, inner = key.partition("__")
            if outer not in self.parameters:
                raise unknown_parameter(type(self), key, value)
            if separator:
                nested.setdefault(outer, {})[inner] = value
            else:
                setattr(self, key, value)
        for outer, inner_params in nested.items():
            inner = getattr(self, outer)
            if not isinstance(inner, Strategy):
                raise invalid_parameter(self.name, outer, inner, self.parameters[outer].expected,
                                        f"cannot set {', '.join(sorted(inner_params))} on it")
            inner.set_params(**inner_params)
        return self

    def json_params(self) -> dict[str, Any]:
        """The parameters, JSON-ready: a nested strategy becomes ``{"strategy": name, **its params}``
        (what ``get_strategy`` takes back), a mapping a plain dict."""
        params = {}
        for key in self.parameters:
            value = getattr(self, key)
            if isinstance(value, Strategy):
                value = {"strategy": value.name, **value.json_params()}
            elif isinstance(value, Mapping):
                value = dict(value)
            params[key] = value
        return params

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.json_params() == self.json_params()

    __hash__ = None  # parameters may change (set_params), so a strategy is no dictionary key

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_params(deep=False).items())
        return f"{type(self).__name__}({arguments})"

    def validate(self) -> Strategy:
        """Check every parameter (nested strategies' included); raise the uniform error on the first
        invalid one."""
        for key, param in self.parameters.items():
            value = getattr(self, key)
            valid, detail = param.check(value)
            if not valid:
                raise invalid_parameter(self.name, key, value, param.expected, detail)
            if isinstance(value, Strategy):
                value.validate()
        self._check_params()
        return self

    def _check_params(self) -> None:
        """Checks that involve several parameters; raise :func:`invalid_parameter`."""

    def required_columns(self) -> tuple[str, ...]:
        """Score columns this strategy reads; each must exist and hold no NaN."""
        return ()

    def select(self, table: ExampleTable | pd.DataFrame, budget: int, seed: int = 0) -> Selection:
        """Pick ``budget`` rows of ``table``, best first.

        ``table`` is an :class:`~tunewise.data.table.ExampleTable`, or a bare scores frame (a scores
        file read without its pool); strategies read only its score columns. A budget larger than
        the pool selects every row (and says so in ``notes``); all randomness comes from
        ``np.random.default_rng(seed)``, so the same inputs and seed give the same selection.
        """
        scores = scores_of(table)
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


def unknown_parameter(strategy_class: type[Strategy], key: str, value: Any) -> TunewiseError:
    """The uniform error for a parameter name the strategy does not declare."""
    known = list(strategy_class.parameters)
    expected = f"one of its parameters: {did_you_mean(key, known)}" if known else "no parameters at all"
    return invalid_parameter(strategy_class.name, key, value, expected)


def build_strategy(strategy_class: type[Strategy], params: Mapping[str, Any]) -> Strategy:
    """Construct and validate a strategy from keyword parameters.

    Names it does not declare are refused with the uniform error. A parameter with a ``convert``
    (a nested strategy given by name or as its JSON form) is converted first; ``outer__inner``
    names then set parameters of nested strategies, as :meth:`Strategy.set_params` does.
    """
    direct, nested = {}, {}
    for key, value in params.items():
        outer, separator, _ = key.partition("__")
        if outer not in strategy_class.parameters:
            raise unknown_parameter(strategy_class, key, value)
        (nested if separator else direct)[key] = value
    for key, value in direct.items():
        convert = strategy_class.parameters[key].convert
        if convert is not None:
            direct[key] = convert(value)
    strategy = strategy_class(**direct)
    if nested:
        for key in {key.partition("__")[0] for key in nested}:
            inner = getattr(strategy, key)
            if isinstance(inner, Strategy):
                # Never change a strategy object the caller passed in: set the values on a copy.
                setattr(strategy, key, type(inner)(**inner.get_params(deep=False)))
        strategy.set_params(**nested)
    return strategy.validate()


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


def check_label_budget(budget) -> None:
    """The one check of a ``--budget`` of labels (``plan`` and ``select``): a whole number ≥ 1.

    A budget of 0 would write an empty plan or selection, which is never what was meant.
    """
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TunewiseError(f"--budget must be a whole number ≥ 1, got {budget!r} (a {type(budget).__name__})",
                            field="budget", fix="pass a whole number of labels, e.g. --budget 200")
    if budget < 1:
        raise TunewiseError(f"--budget {budget} selects nothing" if budget == 0 else
                            f"--budget must be ≥ 1, got {budget}", field="budget", fix="pass --budget 1 or more")


def check_budget_fits_pool(budget: int, pool_size: int, path, cap_to_pool: bool) -> None:
    """Stop on a budget above the pool, usually a typo or the wrong file, unless --cap-to-pool."""
    if budget > pool_size and not cap_to_pool:
        raise TunewiseError(f"--budget {budget} is larger than the pool ({pool_size} examples)", file=path,
                            field="budget",
                            fix=f"pass --budget {pool_size} or less, or add --cap-to-pool to take the whole pool")
