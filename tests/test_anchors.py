"""The tiny validation set: k-means anchors weighted by cluster size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunewise.weights.anchors import Anchors, anchor_estimate, embedding_stratified_anchors, tracking_report, write_anchors
from tunewise.data.pool import Example, example_id, read_pool


def blobs(sizes, dim=8, seed=0):
    """Well separated clusters of the given sizes, rows shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim)) * 20
    rows = np.concatenate([centres[c] + rng.standard_normal((size, dim)) * 0.1 for c, size in enumerate(sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(rows))
    return rows[order].astype(np.float32), labels[order]


@pytest.mark.parametrize("count_over_size", [0, 5])
def test_anchors_as_many_as_dev_rows_reproduce_the_full_mean_exactly(count_over_size):
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((37, 5))
    scores = rng.standard_normal(37) * 3 - 1
    anchors = embedding_stratified_anchors(embeddings, 37 + count_over_size, seed=4)
    assert anchors.positions.tolist() == list(range(37))
    assert anchor_estimate(scores[anchors.positions], anchors) == np.mean(scores)


def test_weights_are_cluster_shares_that_sum_to_one():
    embeddings, labels = blobs([10, 25, 5])
    anchors = embedding_stratified_anchors(embeddings, 3, seed=0)
    assert len(anchors) == 3 and anchors.dev_size == 40
    assert anchors.weights.sum() == pytest.approx(1.0, abs=1e-12)
    # One anchor per blob, standing for exactly that blob's rows.
    assert sorted(labels[anchors.positions].tolist()) == [0, 1, 2]
    assert dict(zip(labels[anchors.positions].tolist(), anchors.cluster_sizes.tolist())) == {0: 10, 1: 25, 2: 5}
    assert anchors.positions.tolist() == sorted(anchors.positions.tolist())


def test_each_anchor_is_the_member_nearest_its_cluster_centre():
    embeddings, labels = blobs([12, 12])
    anchors = embedding_stratified_anchors(embeddings, 2, seed=0)
    for position in anchors.positions:
        members = np.flatnonzero(labels == labels[position])
        centre = embeddings[members].mean(axis=0)
        nearest = members[np.argmin(((embeddings[members] - centre) ** 2).sum(axis=1))]
        assert position == nearest


def test_anchor_estimate_is_the_size_weighted_mean():
    anchors = Anchors(positions=np.array([0, 3, 7]), cluster_sizes=np.array([2, 5, 3]))
    assert anchor_estimate([1.0, 2.0, 4.0], anchors) == pytest.approx((2 * 1 + 5 * 2 + 3 * 4) / 10)


def test_same_seed_same_anchors():
    embeddings = np.random.default_rng(7).standard_normal((120, 6)).astype(np.float32)
    first, second = embedding_stratified_anchors(embeddings, 16, seed=3), embedding_stratified_anchors(embeddings, 16, seed=3)
    assert first.positions.tolist() == second.positions.tolist()
    assert first.cluster_sizes.tolist() == second.cluster_sizes.tolist()
    assert first.cluster_sizes.sum() == 120 and len(set(first.positions.tolist())) == 16


def test_duplicate_rows_give_fewer_anchors_that_still_cover_the_dev_set():
    embeddings = np.repeat(np.eye(3, dtype=np.float32), [4, 4, 4], axis=0)
    anchors = embedding_stratified_anchors(embeddings, 6, seed=0)
    assert len(anchors) == 3 and anchors.cluster_sizes.tolist() == [4, 4, 4]
    assert anchors.weights.sum() == pytest.approx(1.0)


def test_tracking_report_with_every_row_an_anchor_has_no_anchor_error():
    rng = np.random.default_rng(2)
    report = tracking_report(rng.standard_normal(20), rng.standard_normal((20, 4)), count=20, seeds=(0, 1))
    assert report["mean_anchor_error"] == 0.0
    assert [run["seed"] for run in report["runs"]] == [0, 1]
    assert report["dev_size"] == 20


def test_anchors_file_reads_back_as_a_pool_with_weights(tmp_path):
    prompts = [({"role": "user", "content": f"q{i}"},) for i in range(6)]
    dev = [Example(example_id(prompt, f"a{i}"), ("arith", "qa")[i % 2], prompt, f"a{i}")
           for i, prompt in enumerate(prompts)]
    anchors = Anchors(positions=np.array([1, 4]), cluster_sizes=np.array([4, 2]))
    path = write_anchors(tmp_path / "anchors.jsonl", dev, anchors, dev_scores=np.arange(6.0))
    pool = read_pool(path, task_field="task")
    assert [e.id for e in pool.examples] == [dev[1].id, dev[4].id]
    assert [e.task for e in pool.examples] == ["qa", "arith"]
    assert [e.metadata["anchor_weight"] for e in pool.examples] == pytest.approx([4 / 6, 2 / 6])
    assert [e.metadata["dev_score"] for e in pool.examples] == [1.0, 4.0]


def test_anchors_keep_the_users_ids_and_fields(tmp_path):
    """Issue 16: an anchor record carries the user's own id and fields, as the exports do."""
    from tunewise.data.pool import Columns

    prompts = [({"role": "user", "content": f"q{i}"},) for i in range(4)]
    dev = [Example(example_id(prompt, f"a{i}"), "qa", prompt, f"a{i}", {"source": f"sheet {i}"}, f"mine-{i}")
           for i, prompt in enumerate(prompts)]
    anchors = Anchors(positions=np.array([2, 0]), cluster_sizes=np.array([3, 1]))
    path = write_anchors(tmp_path / "anchors.jsonl", dev, anchors)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["id"], r["tunewise_id"], r["source"]) for r in records] == [
        ("mine-2", dev[2].id, "sheet 2"), ("mine-0", dev[0].id, "sheet 0")]
    back = read_pool(path, task_field="task", columns=Columns(id_field="id"))
    assert [(e.user_id, e.id, e.metadata["source"]) for e in back.examples] == [
        ("mine-2", dev[2].id, "sheet 2"), ("mine-0", dev[0].id, "sheet 0")]
