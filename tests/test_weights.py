"""Features, the Optuna weight search (seeded, resumable) and its weights file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tunewise.select import weighted as features_module
from tunewise.weights.anchors import Anchors
from tunewise.errors import TunewiseError
from tunewise.select.weighted import indicator_features, knn_diversity, selection_size
from tunewise.data.pool import Example, example_id
from tunewise.select import get_strategy, read_indicator_weights
from tunewise.weights.search import (TrialRecord, correlation_verdict, rank_correlation, search_weights, simplex_weights,
                              spread_trials, tune_weights)

TARGET = {"loss": 0.5, "ifd": 0.3, "diversity": 0.2}


def distance_to_target(weights):
    return -sum((weights[name] - TARGET[name]) ** 2 for name in TARGET)


def generated_scores(rows=30, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": ids or [f"ex{i:03d}" for i in range(rows)], "task": "default"})
    for name in ("loss", "ifd", "length", "cot_length", "confidence"):
        frame[name] = rng.integers(0, 6, rows).astype(float)  # few distinct values: many ties
    frame["embedding"] = list(rng.standard_normal((rows, 5)).astype(np.float32))
    return frame


# -- features ------------------------------------------------------------------------------------


def test_knn_diversity_matches_brute_force_whatever_the_block_size(monkeypatch):
    embeddings = np.random.default_rng(3).standard_normal((57, 6)).astype(np.float32)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    distances = 1 - unit @ unit.T
    np.fill_diagonal(distances, np.inf)
    expected = np.sort(distances, axis=1)[:, :4].mean(axis=1)
    np.testing.assert_allclose(knn_diversity(embeddings, 4), expected, atol=1e-6)
    monkeypatch.setattr(features_module, "_SIMILARITY_BLOCK_FLOATS", 57 * 5)  # 5 rows per block
    np.testing.assert_allclose(knn_diversity(embeddings, 4), expected, atol=1e-6)
    assert knn_diversity(embeddings[:1]).tolist() == [0.0]


def test_features_are_oriented_rank_quantiles():
    scores = generated_scores()
    matrix = indicator_features(scores, ["loss", "confidence", "diversity"], {"loss": "lower"})
    assert matrix.orientation == {"loss": "lower", "confidence": "lower", "diversity": "higher"}
    assert matrix.values.min() >= 0 and matrix.values.max() <= 1
    lowest_loss = int(np.argmin(scores["loss"]))
    assert matrix.column("loss")[lowest_loss] == matrix.column("loss").max()


def test_unknown_feature_or_orientation_is_a_clear_error():
    with pytest.raises(TunewiseError, match="did you mean 'loss'"):
        indicator_features(generated_scores(), ["los"])
    with pytest.raises(TunewiseError, match="orientation"):
        indicator_features(generated_scores(), ["loss"], {"loss": "up"})
    with pytest.raises(TunewiseError, match="no 'embedding' column"):
        indicator_features(generated_scores().drop(columns="embedding"), ["diversity"])


def test_top_selection_equals_the_weighted_indicators_strategy(tmp_path):
    scores = generated_scores(rows=40)
    matrix = indicator_features(scores, ["loss", "ifd", "confidence", "diversity"], {"ifd": "lower"})
    weights = {"loss": 0.25, "ifd": 0.25, "confidence": 0.2, "diversity": 0.3}
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"weights": weights, "orientation": matrix.orientation}))
    strategy = get_strategy("weighted_indicators", **read_indicator_weights(path))
    size = selection_size(0.3, len(scores))
    assert size == 12
    assert strategy.select(scores, size).positions.tolist() == matrix.top(weights, size).tolist()


# -- the search ----------------------------------------------------------------------------------


def test_simplex_weights_are_non_negative_and_sum_to_one():
    weights = simplex_weights({"a": 0.2, "b": 0.9, "c": 1e-9})
    assert all(value >= 0 for value in weights.values())
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert weights["c"] > weights["a"] > weights["b"]


def test_search_logs_every_trial_with_weights_on_the_simplex(tmp_path):
    result = search_weights(distance_to_target, list(TARGET), tmp_path, trials=4, seed=1)
    assert [record.index for record in result.trials] == [0, 1, 2, 3]
    for record in result.trials:
        assert sum(record.weights.values()) == pytest.approx(1.0, abs=1e-9)
        assert record.value == pytest.approx(distance_to_target(record.weights))
    logged = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert [(row["trial"], row["weights"], row["J"]) for row in logged] == [
        (r.index, r.weights, r.value) for r in result.trials
    ]
    assert all(row["seconds"] >= 0 for row in logged)
    assert (tmp_path / "optuna.db").exists()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_a_killed_search_resumed_ends_like_an_uninterrupted_one(tmp_path, sampler):
    # 11 trials: 10 random start-up trials, then one proposed by the model of the sampler.
    uninterrupted = search_weights(distance_to_target, list(TARGET), tmp_path / "a", trials=11, sampler=sampler, seed=7)
    calls = 0

    def killed_at_the_sixth_trial(weights):
        nonlocal calls
        calls += 1
        if calls == 6:
            raise Interrupt  # the trial stays "running" in the study, as when the process is killed
        return distance_to_target(weights)

    with pytest.raises(Interrupt):
        search_weights(killed_at_the_sixth_trial, list(TARGET), tmp_path / "b", trials=11, sampler=sampler, seed=7)
    resumed = search_weights(distance_to_target, list(TARGET), tmp_path / "b", trials=11, sampler=sampler, seed=7)
    assert resumed.resumed_from == 5
    assert [(r.weights, r.value) for r in resumed.trials] == [(r.weights, r.value) for r in uninterrupted.trials]
    assert (resumed.best.index, resumed.best.weights) == (uninterrupted.best.index, uninterrupted.best.weights)


def test_other_seeds_search_elsewhere_and_a_finished_run_is_not_rerun(tmp_path):
    first = search_weights(distance_to_target, list(TARGET), tmp_path / "a", trials=3, seed=0)
    other = search_weights(distance_to_target, list(TARGET), tmp_path / "b", trials=3, seed=1)
    assert first.trials[0].weights != other.trials[0].weights
    again = search_weights(lambda weights: pytest.fail("no trial should run"), list(TARGET), tmp_path / "a",
                           trials=3, seed=0)
    assert again.resumed_from == 3 and again.trials == first.trials


def test_a_run_folder_refuses_other_settings(tmp_path):
    search_weights(distance_to_target, list(TARGET), tmp_path, trials=1, settings={"demos": 4})
    with pytest.raises(TunewiseError, match="demos differ"):
        search_weights(distance_to_target, list(TARGET), tmp_path, trials=2, settings={"demos": 8})


def test_timeout_stops_the_search_after_the_running_trial(tmp_path):
    result = search_weights(distance_to_target, list(TARGET), tmp_path, trials=50, timeout=1e-6)
    assert len(result.trials) == 1


# -- checking the proxy --------------------------------------------------------------------------


def test_spread_trials_cover_the_range_of_j_with_distinct_selections():
    records = [TrialRecord(i, {"x": float(i)}, value, 0.0) for i, value in enumerate([0.1, 0.5, 0.9, 0.2, 0.8])]
    chosen = spread_trials(records, 3, selection_of=lambda weights: [int(weights["x"])])
    assert [record.value for record in chosen] == [0.1, 0.5, 0.9]
    same_selection = spread_trials(records, 3, selection_of=lambda weights: [0])
    assert len(same_selection) == 1


def test_rank_correlation_reports_a_weak_proxy_plainly():
    strong = rank_correlation([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.5, 0.4])
    assert strong["spearman"] == pytest.approx(0.9) and strong["verdict"].startswith("strong")
    weak = rank_correlation([1, 2, 3, 4, 5], [0.3, 0.1, 0.5, 0.2, 0.4])
    assert weak["verdict"].startswith("weak: the proxy does not track")
    undefined = rank_correlation([1, 2, 3], [0.2, 0.2, 0.2])
    assert undefined["spearman"] is None and undefined["verdict"].startswith("undefined")
    assert "very uncertain" in correlation_verdict(0.8, 0.7, 3)
    assert "opposite" in correlation_verdict(-0.8, -0.6, 6)


# -- end to end on the tiny random model ---------------------------------------------------------


def make_example(question: str, answer: str) -> Example:
    prompt = ({"role": "user", "content": question},)
    return Example(example_id(prompt, answer), "arith", prompt, answer)


@pytest.mark.integration
def test_tune_weights_on_tiny_random_writes_weights_that_select_the_searched_selection(tmp_path):
    from tunewise.model import load_backend
    from tunewise.weights.proxy import ProxyModel

    pool = [make_example(f"{i} + {i % 3}?", f"{i + i % 3}") for i in range(24)]
    dev = [make_example(f"{i} - 1?", f"{i - 1}") for i in range(4)]
    scores = generated_scores(rows=24, ids=[example.id for example in pool])
    matrix = indicator_features(scores, ["loss", "confidence", "diversity"])
    model = ProxyModel(load_backend("tiny-random", device="cpu"))
    anchors = Anchors(positions=np.arange(4), cluster_sizes=np.array([1, 1, 2, 1]))
    arguments = dict(fraction=0.25, trials=3, repeats=2, demos=2, seed=2)
    tuned = tune_weights(matrix, pool, dev, anchors, model, tmp_path / "run", **arguments)
    document = tuned.document()
    assert document["J"] == max(trial["J"] for trial in document["trials"]) < 0
    assert document["selection_size"] == 6 and document["model_fingerprint"] == model.fingerprint
    assert set(document["weights"]) == {"loss", "confidence", "diversity"}
    (tmp_path / "weights.json").write_text(json.dumps(document))
    strategy = get_strategy("weighted_indicators", **read_indicator_weights(tmp_path / "weights.json"))
    picked = strategy.select(scores, document["selection_size"]).positions
    assert picked.tolist() == tuned.selection(document["weights"]).tolist()

    again = tune_weights(matrix, pool, dev, anchors, model, tmp_path / "again", **arguments)
    assert again.document()["trials"][0]["J"] == document["trials"][0]["J"]
    assert [t["weights"] for t in again.document()["trials"]] == [t["weights"] for t in document["trials"]]

    # J's spread over the repeats, and how many trials the proxy could tell apart.
    for trial in document["trials"]:
        assert len(trial["J_repeats"]) == 2 and trial["J"] == pytest.approx(np.mean(trial["J_repeats"]))
        assert trial["J_spread"] == pytest.approx(np.std(trial["J_repeats"], ddof=1))
    best = document["trials"][document["best_trial"]]
    assert document["J_spread"] == best["J_spread"]
    distinct = document["distinct"]
    assert distinct["trials"] == 3 and 1 <= distinct["demonstrations"] <= 3 and 1 <= distinct["selections"] <= 3
    assert document["proxy"]["demonstrations"] == "stratified"


@pytest.mark.integration
def test_set_diverse_weights_select_under_tune_weights_as_under_select(tmp_path):
    from tunewise.model import load_backend
    from tunewise.weights.proxy import ProxyModel

    pool = [make_example(f"{i} * 2?", f"{2 * i}") for i in range(20)]
    scores = generated_scores(rows=20, ids=[example.id for example in pool])
    matrix = indicator_features(scores, ["loss", "ifd"], set_diversity=True)
    anchors = Anchors(positions=np.arange(2), cluster_sizes=np.array([1, 1]))
    tuned = tune_weights(matrix, pool, pool[:2], anchors, ProxyModel(load_backend("tiny-random", device="cpu")),
                         tmp_path / "run", fraction=0.3, trials=2, repeats=1, demos=2)
    document = tuned.document()
    assert document["set_diversity"] is True
    (tmp_path / "weights.json").write_text(json.dumps(document))
    strategy = get_strategy("weighted_indicators", **read_indicator_weights(tmp_path / "weights.json"))
    assert strategy.set_diversity
    picked = strategy.select(scores, document["selection_size"]).positions
    assert picked.tolist() == tuned.selection(document["weights"]).tolist()


def test_weight_search_fit_returns_self_with_the_best_trial(tmp_path):
    from tunewise.model import load_backend
    from tunewise.weights.proxy import ProxyModel
    from tunewise.weights.search import WeightSearch

    pool = [make_example(f"{i} + {i % 3}?", f"{i + i % 3}") for i in range(24)]
    dev = [make_example(f"{i} - 1?", f"{i - 1}") for i in range(4)]
    scores = generated_scores(rows=24, ids=[example.id for example in pool])
    matrix = indicator_features(scores, ["loss", "confidence", "diversity"])
    anchors = Anchors(positions=np.arange(4), cluster_sizes=np.array([1, 1, 2, 1]))
    search = WeightSearch(fraction=0.25, trials=3, repeats=2, demos=2, seed=2)
    with pytest.raises(TunewiseError, match="not fitted"):
        search.select()
    model = ProxyModel(load_backend("tiny-random", device="cpu"))
    assert search.fit(matrix, pool, dev, anchors, model, tmp_path / "run") is search
    assert search.J_ == max(trial.value for trial in search.trials_)
    assert search.weights_ == search.tuned_.document()["weights"]
    assert search.select().tolist() == search.tuned_.selection(search.weights_).tolist()


def test_a_search_stopped_before_its_first_trial_finished_leaves_nothing(tmp_path):
    """E.g. demonstrations too long for the model's context: the error comes in trial 1, and no
    optuna.db / trials.jsonl (nor the folders made for them) stay to look like a search to resume."""
    def too_long(weights):
        raise TunewiseError("a demonstrations + anchor conversation is too long", field="demos")

    with pytest.raises(TunewiseError, match="too long"):
        search_weights(too_long, list(TARGET), tmp_path / "run" / "weights.run", trials=2)
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "given"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(TunewiseError, match="too long"):
        search_weights(too_long, list(TARGET), existing, trials=2)
    assert [path.name for path in existing.iterdir()] == ["notes.txt"]
    # Once a trial finished the folder is a resumable search, kept on a later error.
    search_weights(distance_to_target, list(TARGET), tmp_path / "kept", trials=1)
    with pytest.raises(TunewiseError, match="too long"):
        search_weights(too_long, list(TARGET), tmp_path / "kept", trials=3)
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == ["optuna.db", "trials.jsonl"]
    assert len(search_weights(distance_to_target, list(TARGET), tmp_path / "kept", trials=2).trials) == 2


def test_plan_and_tune_weights_share_the_demos_flag():
    import dataclasses

    from typer.testing import CliRunner

    import tunewise.cli
    from tunewise.cli.app import app
    from tunewise.run import PlanConfig
    from tunewise.weights import DEFAULT_DEMOS, DEMOS_HELP

    tunewise.cli._register_commands()
    demos = next(f for f in dataclasses.fields(PlanConfig) if f.name == "demos")
    assert demos.default == DEFAULT_DEMOS and DEMOS_HELP in demos.metadata["help"]
    for command in ("plan", "tune-weights"):
        assert "--demos" in CliRunner().invoke(app, [command, "--help"]).output
    with pytest.raises(TunewiseError, match="--demos must be at least 1"):
        PlanConfig(budget=4, demos=0)
