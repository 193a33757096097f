"""Indicator features for learned selection weights (DESIGN.md §4 steps 1–2).

Each feature is an indicator turned into its rank quantile in [0, 1] over the pool and oriented
so that higher means "prefer". A weight vector on the simplex scores every example as the
weighted sum of its features, and the selection S(w) is the top of that score.

The quantiles, the orientation, the weighted sum and the tie-breaking are exactly those of the
``weighted_indicators`` strategy, so a weights file found by ``tunewise tune-weights`` selects the
same examples under ``tunewise select --strategy weighted_indicators --weights``.

``diversity`` is the one feature that is not a column of the scores table: it is computed from
the ``embedding`` column as the mean cosine distance of an example to its nearest neighbours in
the pool (an isolated example is a diverse one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.select.base import check_column, embeddings_without_nan, rank_quantile
from tunewise.select.weighted import ORIENTATIONS, default_orientation

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


@dataclass(frozen=True, eq=False)
class FeatureMatrix:
    """Oriented rank-quantile features of a pool, one column per feature name.

    ``values[:, j]`` is feature ``names[j]`` for every row, in [0, 1], higher preferred.
    """

    names: tuple[str, ...]
    orientation: dict[str, str]
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def ranking(self, weights: Mapping[str, float]) -> np.ndarray:
        """Every row, best weighted score first (ties in pool order)."""
        return weighted_order({name: self.column(name) for name in weights}, weights)[0]

    def top(self, weights: Mapping[str, float], count: int) -> np.ndarray:
        """S(w): the ``count`` rows with the highest weighted score, best first."""
        return self.ranking(weights)[:count]


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
    """
    names = check_feature_names(names)
    orientation = resolve_orientation(names, orientation)
    columns = [oriented_quantile(feature_values(scores, name, neighbours), orientation[name]) for name in names]
    values = np.stack(columns, axis=1) if len(scores) else np.zeros((0, len(names)))
    return FeatureMatrix(names=names, orientation=orientation, values=values)


__all__ = [
    "DIVERSITY_NEIGHBOURS",
    "FEATURES",
    "FeatureMatrix",
    "check_feature_names",
    "feature_values",
    "indicator_features",
    "knn_diversity",
    "oriented_quantile",
    "resolve_orientation",
    "selection_size",
    "weighted_order",
]
