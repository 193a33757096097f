"""Several indicators combined by weights (DESIGN.md §4 steps 1–2).

Each indicator becomes its rank quantile in [0, 1], oriented so that higher means "prefer"; a row's
score is the weighted sum of its quantiles, and the highest scores are picked first. The weights
come from a JSON file such as ``tunewise tune-weights`` writes::

    {"weights": {"loss": 0.5, "ifd": 0.3, "confidence": 0.2},
     "orientation": {"loss": "higher"}}

``orientation`` is optional; by default a higher value is preferred for every indicator except
``confidence``, where the low-confidence example is the informative one. Besides the scores
columns, ``diversity`` may be weighted: it is computed from the ``embedding`` column (see
:mod:`tunewise.select.features`, which holds the quantile and weighted-sum arithmetic shared with
``tune-weights``).
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.indicators.registry import preferred_direction
from tunewise.select.base import GroupRanker, Param, Strategy, invalid_parameter

ORIENTATIONS = ("higher", "lower")
WEIGHT_SUM_TOLERANCE = 1e-6


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
    """Read a weights file into ``{"weights": {...}, "orientation": {...} or None}``.

    The result can be passed as ``get_strategy("weighted_indicators", **result)``. Other keys in
    the file (e.g. the search log of ``tune-weights``) are ignored.
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
    return {"weights": dict(weights), "orientation": None if orientation is None else dict(orientation)}


class WeightedIndicators(GroupRanker, Strategy):
    """Highest weighted sum of oriented rank quantiles first.

    Used within tasks, the quantiles are taken within each task. Indicators with weight 0 are
    ignored (and may be missing from the scores). Ties keep the pool order.
    """

    name = "weighted_indicators"
    parameters = {
        "weights": Param(_WEIGHTS_EXPECTED, weights_problem),
        "orientation": Param(_ORIENTATION_EXPECTED, orientation_problem),
    }

    def __init__(
        self, weights: Mapping[str, float] | None = None, orientation: Mapping[str, str] | None = None
    ) -> None:
        self.weights = weights
        self.orientation = orientation

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
        # Imported here: tunewise.select.features imports this module.
        from tunewise.select.features import source_columns

        return source_columns(list(self._used()))

    def rank_in_groups(self, scores, groups, group_budgets, rng):
        # Imported here: tunewise.select.features imports this module.
        from tunewise.select.features import feature_values, oriented_quantile, weighted_order

        orientation = self.orientation or {}
        quantiles = {
            indicator: oriented_quantile(
                feature_values(scores, indicator), orientation.get(indicator, default_orientation(indicator)), groups
            )
            for indicator in self._used()
        }
        order, combined = weighted_order(quantiles, self._used(), groups)

        def explain(picked: np.ndarray) -> list[str]:
            return [
                f"weighted score {combined[row]:.4f} of oriented quantiles: "
                + ", ".join(f"{name} {quantiles[name][row]:.3f}" for name in quantiles)
                for row in picked
            ]

        return order, explain
