"""The tiny validation set: a few weighted anchor items that stand for a whole dev set.

Embedding-stratified sampling (DESIGN.md §4 step 3): cluster the dev set in the scoring model's
embedding space with k-means (m clusters, seeded), take as anchor the dev example nearest each
cluster centre, and weight it by its cluster's share of the dev set. The weighted mean of the
anchors' scores then estimates the mean score over the whole dev set from m items only.

This is not tinyBenchmarks' method (Polo et al. 2024), although it borrows the word "anchor": their
anchor points cluster items by the *correctness pattern of many source models* (and add IRT
estimates), which a user's own task does not have. Paper D (Song et al., arXiv 2605.09665) names
"compact tiny-validation sets" without a construction that could be read; this one is tunewise's.
:func:`tracking_report` measures how well it tracks the full dev mean against a random subset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunewise.data.pool import Example

DEFAULT_ANCHORS = 64


@dataclass(frozen=True, eq=False)
class Anchors:
    """Anchor items of a dev set.

    ``positions[a]`` is the dev row of anchor a and ``cluster_sizes[a]`` the number of dev rows
    it stands for (its own included); the sizes sum to the dev set's size.
    """

    positions: np.ndarray
    cluster_sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def dev_size(self) -> int:
        return int(self.cluster_sizes.sum())

    @property
    def weights(self) -> np.ndarray:
        """Each anchor's share of the dev set; they sum to 1."""
        return self.cluster_sizes / self.cluster_sizes.sum()


def embedding_stratified_anchors(embeddings: np.ndarray, count: int = DEFAULT_ANCHORS, seed: int = 0) -> Anchors:
    """Pick ``count`` anchors among the rows of ``embeddings`` by embedding-stratified sampling:
    one per cluster of a seeded k-means, weighted by the cluster's size.

    With ``count`` at least the number of rows, every row is its own anchor of weight 1/n. When
    the rows hold fewer distinct points than ``count`` (duplicates), k-means finds fewer
    clusters and there are fewer anchors. Anchors come back in dev-row order.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    rows = len(embeddings)
    if rows == 0:
        raise ValueError("no dev examples to choose anchors from")
    if count >= rows:
        return Anchors(positions=np.arange(rows), cluster_sizes=np.ones(rows, dtype=np.int64))
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Duplicate rows make k-means find fewer distinct clusters; the empty ones are dropped.
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=count, n_init=4, random_state=seed).fit(embeddings)
    positions, sizes = [], []
    for cluster, centre in enumerate(kmeans.cluster_centers_):
        members = np.flatnonzero(kmeans.labels_ == cluster)
        if len(members) == 0:
            continue
        distances = np.square(embeddings[members] - centre).sum(axis=1)
        positions.append(int(members[np.argmin(distances)]))
        sizes.append(len(members))
    order = np.argsort(positions, kind="mergesort")
    return Anchors(positions=np.asarray(positions)[order], cluster_sizes=np.asarray(sizes, dtype=np.int64)[order])


def anchor_estimate(anchor_scores: Sequence[float], anchors: Anchors) -> float:
    """The weighted mean of the anchors' scores: the estimate of the dev set's mean score.

    ``anchor_scores[a]`` is anchor a's score. With every dev row its own anchor, this is exactly
    the dev mean (the same sum, in the same order, divided by n).
    """
    scores = np.asarray(anchor_scores, dtype=np.float64)
    return float(np.sum(anchors.cluster_sizes * scores) / anchors.dev_size)


def tracking_report(dev_scores: Sequence[float], embeddings: np.ndarray, count: int = DEFAULT_ANCHORS,
                    seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict:
    """How well the anchor estimate tracks the full dev mean, against a random subset.

    For every seed, the anchors' weighted estimate and the plain mean of a seeded random subset
    of the same size are compared with the mean over the whole dev set.
    """
    dev_scores = np.asarray(dev_scores, dtype=np.float64)
    full = float(dev_scores.mean())
    runs = []
    for seed in seeds:
        anchors = embedding_stratified_anchors(embeddings, count, seed)
        subset = np.random.default_rng(seed).choice(len(dev_scores), size=len(anchors), replace=False)
        anchor_value = anchor_estimate(dev_scores[anchors.positions], anchors)
        random_value = float(dev_scores[subset].mean())
        runs.append({
            "seed": int(seed),
            "anchors": len(anchors),
            "anchor_estimate": anchor_value,
            "anchor_error": abs(anchor_value - full),
            "random_estimate": random_value,
            "random_error": abs(random_value - full),
        })
    return {
        "dev_size": len(dev_scores),
        "full_mean": full,
        "runs": runs,
        "mean_anchor_error": float(np.mean([run["anchor_error"] for run in runs])),
        "mean_random_error": float(np.mean([run["random_error"] for run in runs])),
    }


def anchor_records(dev: Sequence[Example], anchors: Anchors, dev_scores: Sequence[float] | None = None) -> list[dict]:
    """One JSON-ready record per anchor: the example in ``messages`` form, its ids, task and the
    user's other fields (:func:`tunewise.data.export.example_identity`), weight and cluster size
    (and its dev score when given). The file reads back as a pool with ``--task-field task``
    (and ``--id-field id`` for the user's ids)."""
    from tunewise.data.export import example_identity

    records = []
    for index, position in enumerate(anchors.positions):
        example = dev[int(position)]
        record = {
            "messages": example.messages,
            **example_identity(example),
            "anchor_weight": float(anchors.weights[index]),
            "cluster_size": int(anchors.cluster_sizes[index]),
        }
        if dev_scores is not None:
            record["dev_score"] = float(dev_scores[int(position)])
        records.append(record)
    return records


def write_anchors(path: str | os.PathLike, dev: Sequence[Example], anchors: Anchors,
                  dev_scores: Sequence[float] | None = None) -> Path:
    """Write :func:`anchor_records` as JSONL, atomically."""
    from tunewise.io import write_jsonl

    path = Path(path)
    write_jsonl(path, anchor_records(dev, anchors, dev_scores))
    return path


__all__ = ["DEFAULT_ANCHORS", "Anchors", "anchor_estimate", "anchor_records", "embedding_stratified_anchors", "tracking_report",
           "write_anchors"]
