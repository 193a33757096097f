"""Diversity baselines on the ``embedding`` column: greedy k-center and facility location."""

from __future__ import annotations

import heapq

import numpy as np

from tunewise.select.base import Param, Strategy, embeddings_without_nan, integer

# Rows per block when scoring every candidate against the reference sample: bounds the
# temporary (block × reference) similarity matrix to a few tens of MiB.
_BLOCK_ROWS = 4096


class KCenter(Strategy):
    """Greedy k-center: start at a seeded random row, then always take the row farthest from
    everything picked so far (Euclidean distance).

    Memory stays at the float32 embedding matrix plus a few vectors of one value per row: each
    step computes the distances to the newest centre only and folds them into the running
    minimum distance to the picked set.
    """

    name = "k_center"

    def required_columns(self):
        return ("embedding",)

    def _select(self, scores, budget, rng):
        if budget == 0:
            return np.zeros(0, dtype=np.int64), [], {}
        embeddings = embeddings_without_nan(scores)
        squared_norms = np.einsum("ij,ij->i", embeddings, embeddings)
        nearest_picked = np.full(len(embeddings), np.inf, dtype=np.float32)
        distances = np.empty(len(embeddings), dtype=np.float32)
        picked = [int(rng.integers(len(embeddings)))]
        reasons = ["first centre, drawn at random"]
        while len(picked) < budget:
            newest = picked[-1]
            # ‖x − c‖² = ‖x‖² − 2·x·c + ‖c‖², in place to avoid (rows × dim) temporaries. einsum
            # rather than BLAS: as fast here (one pass over memory either way), and free of
            # BLAS thread pools fighting over shared cores.
            np.einsum("ij,j->i", embeddings, embeddings[newest], out=distances)
            distances *= -2.0
            distances += squared_norms
            distances += squared_norms[newest]
            np.minimum(nearest_picked, distances, out=nearest_picked)
            nearest_picked[newest] = -np.inf  # never pick a row twice
            farthest = int(np.argmax(nearest_picked))
            picked.append(farthest)
            distance = float(np.sqrt(max(nearest_picked[farthest], 0.0)))
            reasons.append(f"farthest from every earlier pick (distance {distance:.4g})")
        return np.array(picked, dtype=np.int64), reasons, {}


class FacilityLocation(Strategy):
    """Greedy facility location: maximise how well the picks cover the pool.

    Coverage F(S) = Σ_r max_{s ∈ S} sim(r, s) over a seeded sample of ``reference_size`` rows
    (every row when the pool is smaller), with sim = (1 + cosine) / 2 in [0, 1]. Every row is a
    candidate. F is submodular, so lazy greedy (re-scoring a candidate only when it reaches the
    top of the queue) gives the same picks as plain greedy at a fraction of the cost.
    """

    name = "facility_location"
    parameters = {
        "reference_size": Param("a whole number ≥ 1", integer(1)),
    }

    def __init__(self, reference_size: int = 2048) -> None:
        self.reference_size = reference_size

    def required_columns(self):
        return ("embedding",)

    def _select(self, scores, budget, rng):
        if budget == 0:
            return np.zeros(0, dtype=np.int64), [], {}
        embeddings = embeddings_without_nan(scores)
        lengths = np.linalg.norm(embeddings, axis=1, keepdims=True)
        unit = embeddings / np.maximum(lengths, np.finfo(np.float32).tiny)
        rows = len(unit)
        reference_rows = np.sort(rng.choice(rows, size=min(rows, self.reference_size), replace=False))
        reference = unit[reference_rows]

        coverage = np.zeros(len(reference_rows), dtype=np.float32)

        def similarity(candidates: np.ndarray) -> np.ndarray:
            return (1.0 + unit[candidates] @ reference.T) / 2.0

        def gains(similarities: np.ndarray) -> np.ndarray:
            return np.maximum(similarities - coverage, 0.0).sum(axis=1, dtype=np.float64)

        blocks = (np.arange(start, min(start + _BLOCK_ROWS, rows)) for start in range(0, rows, _BLOCK_ROWS))
        first_gains = np.concatenate([gains(similarity(block)) for block in blocks])
        rounding_slack = 1e-6 * len(reference_rows)
        queue = [(-gain, row) for row, gain in enumerate(first_gains.tolist())]
        heapq.heapify(queue)
        picked, reasons = [], []
        while len(picked) < budget:
            _, row = heapq.heappop(queue)
            row_similarity = similarity(np.array([row]))
            gain = float(gains(row_similarity)[0])
            # A one-row product may round differently from the block product that queued the
            # row; a gain that moved by rounding alone is still the best and is not re-queued.
            if queue and gain < -queue[0][0] - rounding_slack:
                heapq.heappush(queue, (-gain, row))
                continue
            np.maximum(coverage, row_similarity[0], out=coverage)
            picked.append(row)
            reasons.append(
                f"coverage gain {gain:.4g}; mean similarity of the {len(reference_rows)} reference rows "
                f"to their nearest pick now {float(coverage.mean()):.4f}"
            )
        return np.array(picked, dtype=np.int64), reasons, {"reference_rows": len(reference_rows)}
