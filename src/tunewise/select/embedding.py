"""Diversity baselines on the ``embedding`` column (paper B compares against all three): greedy
k-center, facility location and a determinantal point process (greedy MAP)."""

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


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """The rows scaled to length 1 (a zero row stays zero), float32."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    lengths = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(lengths, np.finfo(np.float32).tiny)


def greedy_coverage(unit: np.ndarray, reference: np.ndarray, count: int) -> tuple[list[int], list[float], list[float]]:
    """Greedy facility location: ``count`` rows of ``unit`` that best cover the ``reference`` rows.

    Coverage F(S) = Σ_r max_{s ∈ S} sim(r, s), with sim = (1 + cosine) / 2 in [0, 1] between
    unit-length rows. F is submodular, so lazy greedy (re-scoring a candidate only when it reaches
    the top of the queue) gives the same picks as plain greedy at a fraction of the cost. Returns
    the picked rows in order, each one's coverage gain, and the mean coverage after each pick.
    Memory stays at one (block × reference) similarity matrix.
    """
    rows = len(unit)
    count = min(count, rows)
    if count == 0:
        return [], [], []
    coverage = np.zeros(len(reference), dtype=np.float32)

    def similarity(candidates: np.ndarray) -> np.ndarray:
        return (1.0 + unit[candidates] @ reference.T) / 2.0

    def gains(similarities: np.ndarray) -> np.ndarray:
        return np.maximum(similarities - coverage, 0.0).sum(axis=1, dtype=np.float64)

    blocks = (np.arange(start, min(start + _BLOCK_ROWS, rows)) for start in range(0, rows, _BLOCK_ROWS))
    first_gains = np.concatenate([gains(similarity(block)) for block in blocks])
    rounding_slack = 1e-6 * len(reference)
    queue = [(-gain, row) for row, gain in enumerate(first_gains.tolist())]
    heapq.heapify(queue)
    picked, picked_gains, mean_coverage = [], [], []
    while len(picked) < count:
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
        picked_gains.append(gain)
        mean_coverage.append(float(coverage.mean()))
    return picked, picked_gains, mean_coverage


class FacilityLocation(Strategy):
    """Greedy facility location: maximise how well the picks cover the pool.

    Coverage F(S) = Σ_r max_{s ∈ S} sim(r, s) over a seeded sample of ``reference_size`` rows
    (every row when the pool is smaller), with sim = (1 + cosine) / 2 in [0, 1]. Every row is a
    candidate (:func:`greedy_coverage`).
    """

    name = "facility_location"
    parameters = {
        "reference_size": Param("a whole number ≥ 1", integer(1), flag=int,
                                help="rows the coverage is measured on."),
    }

    def __init__(self, reference_size: int = 2048) -> None:
        self.reference_size = reference_size

    def required_columns(self):
        return ("embedding",)

    def _select(self, scores, budget, rng):
        if budget == 0:
            return np.zeros(0, dtype=np.int64), [], {}
        unit = unit_rows(embeddings_without_nan(scores))
        rows = len(unit)
        reference_rows = np.sort(rng.choice(rows, size=min(rows, self.reference_size), replace=False))
        picked, gains, coverage = greedy_coverage(unit, unit[reference_rows], budget)
        reasons = [
            f"coverage gain {gain:.4g}; mean similarity of the {len(reference_rows)} reference rows "
            f"to their nearest pick now {mean:.4f}"
            for gain, mean in zip(gains, coverage)
        ]
        return np.array(picked, dtype=np.int64), reasons, {"reference_rows": len(reference_rows)}


class DeterminantalPointProcess(Strategy):
    """``dpp``: greedy MAP inference of a k-DPP on the embeddings, a diversity baseline of paper B.

    The kernel is L = S, the cosine similarities of the embeddings (a Gram matrix, so positive
    semi-definite, of rank at most the embedding dimension). Each step adds the row j that most
    increases log det(L_S), found with the incremental Cholesky update of Chen, Zhang & Zhou, *Fast
    Greedy MAP Inference for Determinantal Point Process to Improve Recommendation Diversity*
    (NeurIPS 2018), Algorithm 1: per row a residual d_j² (the squared distance of its feature
    vector from the span of the picks) and a vector c_j, updated in O(N·k) per pick, with the
    kernel's column of the newest pick computed on the fly (O(N·dim)), so the N × N kernel is
    never formed. Memory: N·min(k, dim) float64 for the c vectors.

    The first pick and any exact tie in d² follow an order drawn from the seed. Once every
    residual is below 1e-10 (the picks span the embeddings: at most ``dim`` picks), no pick can
    raise the determinant and the rest of the budget follows in that seeded random order, as the
    reasons say.
    """

    name = "dpp"
    _EXHAUSTED = 1e-10

    def required_columns(self):
        return ("embedding",)

    def _select(self, scores, budget, rng):
        if budget == 0:
            return np.zeros(0, dtype=np.int64), [], {}
        unit = unit_rows(embeddings_without_nan(scores)).astype(np.float64)
        rows = len(unit)
        tiebreak = rng.permutation(rows)  # argmax over this order: the first maximum in it wins
        residual = np.einsum("ij,ij->i", unit, unit)  # d_j² = L_jj
        # The kernel's rank is at most dim, so at most dim picks raise the determinant.
        cholesky = np.zeros((min(budget, unit.shape[1]), rows))
        available = np.ones(rows, dtype=bool)
        picked, reasons = [], []
        while len(picked) < budget:
            candidates = np.where(available, residual, -np.inf)[tiebreak]
            best = int(tiebreak[int(np.argmax(candidates))])
            step = len(picked)
            if residual[best] < self._EXHAUSTED or step == len(cholesky):
                break
            picked.append(best)
            reasons.append(f"greedy DPP MAP: adds log {residual[best]:.4g} to log det of the picks' similarity kernel")
            available[best] = False
            # e_j = (L_{best,j} − ⟨c_best, c_j⟩) / d_best for every row j (Chen et al. 2018, Alg. 1).
            column = unit @ unit[best]
            update = (column - cholesky[:step].T @ cholesky[:step, best]) / np.sqrt(residual[best])
            cholesky[step] = update
            residual = np.maximum(residual - update**2, 0.0)
        if len(picked) < budget:
            rest = [int(row) for row in tiebreak if available[row]][: budget - len(picked)]
            reasons += ["random order: the picks already span the embeddings, so no row adds to the DPP "
                        "determinant"] * len(rest)
            picked += rest
        return np.array(picked, dtype=np.int64), reasons, {}
