"""Several indicators combined by weights (DESIGN.md §4 steps 1–2), for ``weighted_indicators``
and for the weight search of ``tune-weights`` alike.

Each indicator (a *feature*) becomes its rank quantile in [0, 1], oriented so that higher means
"prefer"; a row's score is the weighted sum of its quantiles, and the highest scores are picked
first. The weights come from a JSON file such as ``tunewise tune-weights`` writes::

    {"weights": {"loss": 0.5, "ifd": 0.3, "confidence": 0.2},
     "orientation": {"loss": "higher"}, "set_diversity": false}

``orientation`` is optional; by default a higher value is preferred for every indicator except
``confidence``, where the low-confidence example is the informative one. The quantiles, the
orientation, the weighted sum and the tie-breaking are the same here and in
:class:`FeatureMatrix`, so a weights file found by ``tunewise tune-weights`` selects the same
examples under ``tunewise select --strategy weighted_indicators --weights``.

Diversity comes in two forms. ``diversity`` is a per-example feature computed from the
``embedding`` column: the mean cosine distance of an example to its nearest neighbours in the pool
(an isolated example scores high, so a large weight picks outliers). ``set_diversity`` is a property
of the selected set: the n picks are chosen by greedy facility location among the 2n best-scored
rows (:func:`diverse_top`), so they cover the region the weights prefer instead of crowding into it.
Paper D's text names "semantic diversity" without a formula; both forms are tunewise's.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.indicators.registry import preferred_direction
from tunewise.select.base import (
    GroupRanker,
    Param,
    Strategy,
    boolean,
    check_column,
    embeddings_without_nan,
    invalid_parameter,
    rank_quantile,
)
from tunewise.select.embedding import greedy_coverage, unit_rows

ORIENTATIONS = ("higher", "lower")
WEIGHT_SUM_TOLERANCE = 1e-6


# --- features: oriented rank quantiles of the indicators -------------------------------------

FEATURES = ("loss", "ifd", "length", "cot_length", "confidence", "diversity")
DIVERSITY_NEIGHBOURS = 10
# Bounds the (chunk × pool) similarity block of the neighbour search to about 64 MiB of float32.
_SIMILARITY_BLOCK_FLOATS = 16 * 1024 * 1024


def knn_diversity(embeddings: np.ndarray, neighbours: int = DIVERSITY_NEIGHBOURS) -> np.ndarray:
    """Mean cosine distance of each row to its ``neighbours`` nearest other rows.

    Rows are L2-normalised first. The search is exact and runs over blocks of rows, so memory
    stays at the embedding matrix plus one block of similarities whatever the pool size. With
    fewer than ``neighbours + 1`` rows every other row is a neighbour; a single row gets 0.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    rows = len(embeddings)
    result = np.zeros(rows, dtype=np.float64)
    k = min(neighbours, rows - 1)
    if k < 1:
        return result
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, np.finfo(np.float32).tiny)
    chunk = max(1, _SIMILARITY_BLOCK_FLOATS // rows)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        similarity = unit[start:stop] @ unit.T
        similarity[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # a row is not its own neighbour
        nearest = np.partition(similarity, rows - k, axis=1)[:, rows - k:]
        result[start:stop] = 1.0 - nearest.astype(np.float64).mean(axis=1)
    return result


def source_columns(names: Sequence[str] = FEATURES) -> tuple[str, ...]:
    """The scores-table columns the features ``names`` are computed from, in order, once each."""
    return tuple(dict.fromkeys("embedding" if name == "diversity" else name for name in names))


def feature_values(scores: pd.DataFrame, name: str, neighbours: int = DIVERSITY_NEIGHBOURS) -> np.ndarray:
    """The raw values of one feature for every row of ``scores`` (checked: present, no NaN)."""
    if name == "diversity":
        check_column(scores, "embedding")
        return knn_diversity(embeddings_without_nan(scores), neighbours)
    check_column(scores, name)
    return scores[name].to_numpy(dtype=np.float64)


def oriented_quantile(values: np.ndarray, prefer: str, groups: np.ndarray | None = None) -> np.ndarray:
    """Rank quantile in [0, 1] (within ``groups``), flipped when lower values are preferred."""
    quantile = rank_quantile(values, groups)
    return quantile if prefer == "higher" else 1.0 - quantile


def weighted_order(quantiles: Mapping[str, np.ndarray], weights: Mapping[str, float],
                   groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by weighted score, best first, and the scores themselves.

    Features with weight 0 are left out; the sum runs in the order of ``weights``. Scores are
    rounded to 12 decimals so that sums equal on paper tie exactly, and ties keep the pool order.
    """
    rows = len(next(iter(quantiles.values()))) if quantiles else 0
    combined = np.zeros(rows)
    for name, weight in weights.items():
        if weight > 0:
            combined += weight * quantiles[name]
    if groups is None:
        groups = np.zeros(rows, dtype=np.int64)
    order = np.lexsort((np.arange(rows), -np.round(combined, 12), groups))
    return order, combined


def selection_size(fraction: float, rows: int) -> int:
    """ρ·N rounded half up, as ``tunewise select --fraction`` rounds it."""
    return math.floor(fraction * rows + 0.5)


SET_DIVERSITY_CANDIDATES = 2
# Candidates the coverage of a set-diverse pick is measured on, at most (a seeded sample beyond).
_SET_DIVERSITY_REFERENCE = 2048


def diverse_top(ranking: np.ndarray, unit: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """``ranking`` reordered so that its first ``count`` rows are a diverse set of its best.

    The candidates are the first ``SET_DIVERSITY_CANDIDATES · count`` rows of ``ranking`` (row
    positions, best first); greedy facility location (:func:`tunewise.select.embedding.greedy_coverage`,
    coverage of the candidates, measured on a seeded sample of at most 2048 of them) picks
    ``count`` of them, in pick order; every other row follows in its ``ranking`` order. ``unit``
    holds the unit-length embeddings of all rows. Returns the order and, per picked row, its
    coverage gain.
    """
    ranking = np.asarray(ranking, dtype=np.int64)
    count = min(count, len(ranking))
    candidates = ranking[: SET_DIVERSITY_CANDIDATES * count]
    if count == 0:
        return ranking, {}
    reference = candidates
    if len(candidates) > _SET_DIVERSITY_REFERENCE:
        reference = np.sort(np.random.default_rng(seed).choice(candidates, _SET_DIVERSITY_REFERENCE, replace=False))
    picked, gains, _ = greedy_coverage(unit[candidates], unit[reference], count)
    chosen = candidates[picked]
    rest = ranking[~np.isin(ranking, chosen)]
    return np.concatenate([chosen, rest]), dict(zip(chosen.tolist(), gains))


@dataclass(frozen=True, eq=False)
class FeatureMatrix:
    """Oriented rank-quantile features of a pool, one column per feature name.

    ``values[:, j]`` is feature ``names[j]`` for every row, in [0, 1], higher preferred. With
    ``set_diversity`` the selection S(w) is made set-diverse (:func:`diverse_top`) from ``unit``,
    the pool's unit-length embeddings.
    """

    names: tuple[str, ...]
    orientation: dict[str, str]
    values: np.ndarray
    set_diversity: bool = False
    unit: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def ranking(self, weights: Mapping[str, float]) -> np.ndarray:
        """Every row, best weighted score first (ties in pool order)."""
        return weighted_order({name: self.column(name) for name in weights}, weights)[0]

    def top(self, weights: Mapping[str, float], count: int) -> np.ndarray:
        """S(w): the ``count`` rows with the highest weighted score, best first (with
        ``set_diversity``: a diverse ``count`` of the best 2 · ``count``, in pick order)."""
        ranking = self.ranking(weights)
        if self.set_diversity:
            ranking = diverse_top(ranking, self.unit, count)[0]
        return ranking[:count]


def check_feature_names(names: Sequence[str]) -> tuple[str, ...]:
    """The names without repeats, in order; an unknown name gets "did you mean"."""
    for name in names:
        if name not in FEATURES:
            raise TunewiseError(f"unknown feature '{name}'", field="features", fix=did_you_mean(name, FEATURES))
    if not names:
        raise TunewiseError("no features given", field="features", fix=f"name some of: {', '.join(FEATURES)}")
    return tuple(dict.fromkeys(names))


def resolve_orientation(names: Sequence[str], orientation: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every feature's orientation: as given, else the ``weighted_indicators`` default."""
    orientation = dict(orientation or {})
    for name, prefer in orientation.items():
        if name not in names:
            raise TunewiseError(f"an orientation is given for '{name}', which is not among the features",
                                field="orientation", fix=f"orient only features in use: {', '.join(names)}")
        if prefer not in ORIENTATIONS:
            raise TunewiseError(f"the orientation of '{name}' is {prefer!r}", field="orientation",
                                fix="use 'higher' or 'lower'")
    return {name: orientation.get(name, default_orientation(name)) for name in names}


def indicator_features(
    scores: pd.DataFrame,
    names: Sequence[str] = FEATURES,
    orientation: Mapping[str, str] | None = None,
    neighbours: int = DIVERSITY_NEIGHBOURS,
    set_diversity: bool = False,
) -> FeatureMatrix:
    """The :class:`FeatureMatrix` of a scores table over the whole pool.

    Parameters
    ----------
    names:
        Features to build, from :data:`FEATURES`.
    orientation:
        ``{feature: "higher" | "lower"}`` for the features whose preferred direction is not the
        default (higher is preferred for all but ``confidence``).
    neighbours:
        k of the ``diversity`` feature's k-nearest-neighbour distance.
    set_diversity:
        Make every selection S(w) set-diverse (:func:`diverse_top`); needs the ``embedding`` column.
    """
    names = check_feature_names(names)
    orientation = resolve_orientation(names, orientation)
    columns = [oriented_quantile(feature_values(scores, name, neighbours), orientation[name]) for name in names]
    values = np.stack(columns, axis=1) if len(scores) else np.zeros((0, len(names)))
    unit = None
    if set_diversity:
        check_column(scores, "embedding")
        unit = unit_rows(embeddings_without_nan(scores))
    return FeatureMatrix(names=names, orientation=orientation, values=values, set_diversity=set_diversity, unit=unit)



def default_orientation(indicator: str) -> str:
    """Which values of ``indicator`` are preferred when the weights file does not say."""
    return preferred_direction(indicator)


def weights_problem(weights) -> str | None:
    """What is wrong with an indicator → weight mapping, or None when it is valid."""
    if not isinstance(weights, Mapping) or not weights:
        return "give at least one indicator"
    for indicator, weight in weights.items():
        if not isinstance(indicator, str) or not indicator:
            return f"indicator names must be strings, got {indicator!r}"
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight):
            return f"the weight of '{indicator}' is not a number"
        if weight < 0:
            return f"the weight of '{indicator}' is negative"
    total = float(sum(weights.values()))
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        return f"the weights sum to {total:.9g}, not 1"
    return None


def orientation_problem(orientation) -> str | None:
    """What is wrong with an indicator → 'higher'/'lower' mapping, or None when it is valid."""
    if orientation is None:
        return None
    if not isinstance(orientation, Mapping):
        return "give a mapping from indicator name to 'higher' or 'lower'"
    for indicator, direction in orientation.items():
        if direction not in ORIENTATIONS:
            return f"the orientation of '{indicator}' is {direction!r}, not 'higher' or 'lower'"
    return None


_WEIGHTS_EXPECTED = "a mapping from indicator name to a weight ≥ 0, the weights summing to 1 (within 1e-6)"
_ORIENTATION_EXPECTED = "None or a mapping from indicator name to 'higher' or 'lower'"


def read_indicator_weights(path: str | os.PathLike) -> dict:
    """Read a weights file into ``{"weights": {...}, "orientation": {...} or None}``, plus
    ``"set_diversity": True`` when the file asks for it.

    The result can be passed as ``WeightedIndicators(**result)``. Other keys in the file (e.g. the
    search log of ``tune-weights``) are ignored.
    """
    path = Path(path)
    fix = 'write {"weights": {"loss": 0.5, "ifd": 0.5}} with weights ≥ 0 that sum to 1'
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunewiseError("no such weights file", file=path, fix=fix) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TunewiseError(f"not a readable JSON weights file ({error})", file=path, fix=fix) from None
    if not isinstance(content, dict) or "weights" not in content:
        raise TunewiseError("the weights file has no 'weights' object", file=path, field="weights", fix=fix)
    weights, orientation = content["weights"], content.get("orientation")
    for key, problem in (("weights", weights_problem(weights)), ("orientation", orientation_problem(orientation))):
        if problem is not None:
            raise TunewiseError(f"invalid {key}: {problem}", file=path, field=key, fix=fix)
    set_diversity = content.get("set_diversity", False)
    if not isinstance(set_diversity, bool):
        raise TunewiseError(f"invalid set_diversity: {set_diversity!r} is not true or false", file=path,
                            field="set_diversity", fix="write true or false, or leave it out")
    result = {"weights": dict(weights), "orientation": None if orientation is None else dict(orientation)}
    if set_diversity:
        result["set_diversity"] = True
    return result


class WeightedIndicators(GroupRanker, Strategy):
    """Highest weighted sum of oriented rank quantiles first.

    Used within tasks, the quantiles are taken within each task. Indicators with weight 0 are
    ignored (and may be missing from the scores). Ties keep the pool order.

    Parameters
    ----------
    weights:
        Indicator (or feature, e.g. ``diversity``) → weight ≥ 0, summing to 1.
    orientation:
        Indicator → ``higher`` or ``lower``, where the default direction does not apply.
    set_diversity:
        Pick a diverse set: each group's n picks are chosen by greedy facility location among its
        2n best-scored rows (:func:`diverse_top`); needs the ``embedding`` column.
    """

    name = "weighted_indicators"
    parameters = {
        "weights": Param(_WEIGHTS_EXPECTED, lambda value: weights_problem(value) is None, weights_problem,
                         flag=Path, load=read_indicator_weights,
                         help='JSON file {"weights": {...}} (with "orientation" and "set_diversity" if need be).'),
        "orientation": Param(_ORIENTATION_EXPECTED, lambda value: orientation_problem(value) is None,
                             orientation_problem),
        "set_diversity": Param("True or False", boolean, flag=bool,
                               help="pick a diverse set among the 2n best (greedy facility location on embeddings)."),
    }

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        orientation: Mapping[str, str] | None = None,
        set_diversity: bool = False,
    ) -> None:
        self.weights = weights
        self.orientation = orientation
        self.set_diversity = set_diversity

    def _check_params(self) -> None:
        stray = sorted(set(self.orientation or {}) - set(self.weights))
        if stray:
            raise invalid_parameter(
                self.name, "orientation", self.orientation, _ORIENTATION_EXPECTED,
                f"{', '.join(map(repr, stray))} has no weight",
            )

    def _used(self) -> dict[str, float]:
        return {indicator: weight for indicator, weight in self.weights.items() if weight > 0}

    def required_columns(self):
        columns = source_columns(list(self._used()))
        return (*columns, "embedding") if self.set_diversity and "embedding" not in columns else columns

    def rank_in_groups(self, scores, groups, group_budgets, rng):
        orientation = self.orientation or {}
        quantiles = {
            indicator: oriented_quantile(
                feature_values(scores, indicator), orientation.get(indicator, default_orientation(indicator)), groups
            )
            for indicator in self._used()
        }
        order, combined = weighted_order(quantiles, self._used(), groups)
        gains: dict[int, float] = {}
        if self.set_diversity and len(order):
            unit = unit_rows(embeddings_without_nan(scores))
            sizes = np.bincount(groups, minlength=len(group_budgets))
            parts = np.split(order, np.cumsum(sizes)[:-1])
            reordered = []
            for group, part in enumerate(parts):
                part, group_gains = diverse_top(part, unit, int(group_budgets[group]), seed=int(rng.integers(2**32)))
                reordered.append(part)
                gains.update(group_gains)
            order = np.concatenate(reordered)

        def explain(picked: np.ndarray) -> list[str]:
            return [
                f"weighted score {combined[row]:.4f} of oriented quantiles: "
                + ", ".join(f"{name} {quantiles[name][row]:.3f}" for name in quantiles)
                + (f"; picked for coverage among the {SET_DIVERSITY_CANDIDATES}n best (gain {gains[int(row)]:.4g})"
                   if int(row) in gains else "")
                for row in picked
            ]

        return order, explain


__all__ = [
    "DIVERSITY_NEIGHBOURS",
    "FEATURES",
    "FeatureMatrix",
    "WeightedIndicators",
    "check_feature_names",
    "diverse_top",
    "feature_values",
    "indicator_features",
    "knn_diversity",
    "oriented_quantile",
    "read_indicator_weights",
    "resolve_orientation",
    "selection_size",
    "weighted_order",
]
