"""The baselines the papers compare against: random, top-k by an indicator, uncertainty."""

from __future__ import annotations

import numpy as np

from tunewise.select.base import GroupRanker, Param, Strategy, choice, column_name


class RandomSelection(GroupRanker, Strategy):
    """Uniformly random order (a seeded permutation of the pool)."""

    name = "random"

    def rank_in_groups(self, scores, groups, group_budgets, rng):
        # Shuffle, then bring each group together with a stable sort: random within each group.
        shuffled = rng.permutation(len(scores))
        order = shuffled[np.argsort(groups[shuffled], kind="stable")]
        return order, lambda picked: ["random order"] * len(picked)


class TopK(Strategy):
    """The rows with the highest (``direction="desc"``) or lowest (``"asc"``) ``indicator``.

    Ties keep the pool order (stable sort).
    """

    name = "top_k"
    parameters = {
        "indicator": Param("the name of a score column", column_name, flag=str, help="the score column to rank by."),
        "direction": choice("'asc' (lowest first) or 'desc' (highest first)", ("asc", "desc"),
                            help="desc (highest first) or asc."),
    }

    def __init__(self, indicator: str = "loss", direction: str = "desc") -> None:
        self.indicator = indicator
        self.direction = direction

    def required_columns(self):
        return (self.indicator,)

    def _select(self, scores, budget, rng):
        values = scores[self.indicator].to_numpy(dtype=np.float64)
        key = values if self.direction == "asc" else -values
        picked = np.argsort(key, kind="mergesort")[:budget]
        word = "lowest" if self.direction == "asc" else "highest"
        reasons = [
            f"{self.indicator} = {values[row]:.6g}, rank {rank} by {word} {self.indicator}"
            for rank, row in enumerate(picked, start=1)
        ]
        return picked, reasons, {}


CONFIDENCE_COLUMN = Param("the name of a score column", column_name, flag=str,
                          help="column holding the model's confidence.")


class Uncertainty(Strategy):
    """Lowest model confidence first: the examples the model is least sure how to answer."""

    name = "uncertainty"
    parameters = {"confidence_column": CONFIDENCE_COLUMN}

    def __init__(self, confidence_column: str = "confidence") -> None:
        self.confidence_column = confidence_column

    def required_columns(self):
        return (self.confidence_column,)

    def _select(self, scores, budget, rng):
        confidence = scores[self.confidence_column].to_numpy(dtype=np.float64)
        picked = np.argsort(confidence, kind="mergesort")[:budget]
        reasons = [
            f"{self.confidence_column} = {confidence[row]:.6g}, rank {rank} by lowest confidence"
            for rank, row in enumerate(picked, start=1)
        ]
        return picked, reasons, {}
