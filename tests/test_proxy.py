"""The in-context proxy: the shared-prefix cache gives the naive proxy's values, faster."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunewise.weights.anchors import Anchors, anchor_estimate
from tunewise.data.pool import Example, example_id, parse_record
from tunewise.model.packed import shared_prefix_length
from tunewise.weights.proxy import InContextProxy, ProxyModel, in_context_conversation

from conftest import require_shared_data, require_smollm2


def example(question: str, answer: str, task: str = "arith", system: str | None = None) -> Example:
    prompt = (({"role": "system", "content": system},) if system else ()) + ({"role": "user", "content": question},)
    return Example(example_id(prompt, answer), task, prompt, answer)


POOL = [example(f"What is {i} + {i + 1}?", f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}") for i in range(10)]
ANCHORS = [
    example("Tom has 3 apples and buys 2 more. How many now?", "3 + 2 = 5\n#### 5"),
    example("Double 21.", "21 * 2 = 42\n#### 42"),
    example("A box holds 6 eggs. How many eggs are in 4 boxes?", "6 * 4 = 24 eggs.\nSo 24.\n#### 24"),
    example("What is 9 - 4?", "5\n#### 5", task="short"),
    example("Halve 18, then add 1.", "18 / 2 = 9\n9 + 1 = 10\n#### 10", task="short"),
]


@pytest.fixture(scope="module")
def tiny():
    from tunewise.model import load_backend

    # A small batch budget forces several batches, so cache expansion is exercised per batch.
    return ProxyModel(load_backend("tiny-random", device="cpu"), max_batch_tokens=700)


def test_shared_prefix_leaves_every_sequence_one_own_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([]) == 0


def test_demonstrations_become_prior_turns_and_the_anchor_system_prompt_comes_first():
    demo = example("q1", "a1", system="ignored in demos")
    anchor = example("q2", "a2", system="be brief")
    assert in_context_conversation([demo, demo], anchor.prompt) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]


def test_cached_prefix_loglik_equals_the_naive_one_on_tiny_random(tiny):
    demos = POOL[:3]
    contexts = tiny.context_ids(demos, [anchor.prompt for anchor in ANCHORS])
    assert shared_prefix_length(contexts) > 100  # the demonstrations really are shared
    cached = tiny.answer_logliks(demos, ANCHORS)
    naive = tiny.answer_logliks(demos, ANCHORS, naive=True)
    assert np.all(np.isfinite(cached)) and np.all(cached < 0)
    np.testing.assert_allclose(cached, naive, rtol=0, atol=1e-4)


def test_cached_prefix_greedy_answers_equal_the_naive_ones_on_tiny_random(tiny):
    limits = [3, 9, 5, 1, 7]
    cached = tiny.greedy_answers(POOL[:2], ANCHORS, limits)
    assert cached == tiny.greedy_answers(POOL[:2], ANCHORS, limits, naive=True)


def test_proxy_draws_demonstrations_from_the_selection_never_an_anchor(tiny):
    pool = POOL + [ANCHORS[0]]
    anchors = Anchors(positions=np.arange(5), cluster_sizes=np.array([1, 2, 3, 1, 3]))
    proxy = InContextProxy(tiny, pool, ANCHORS, anchors, repeats=3, demos=2, seed=5)
    selection = [10, 2, 4, 6, 8]
    draws = proxy.demonstrations(selection)
    assert len(draws) == 3
    # The showable members in rank order, 2 4 | 6 8, are two strata: one demonstration from each.
    assert all(len(draw) == 2 and len(set(draw) & {2, 4}) == 1 == len(set(draw) & {6, 8}) for draw in draws)
    assert draws == InContextProxy(tiny, pool, ANCHORS, anchors, repeats=3, demos=2, seed=5).demonstrations(selection)
    # Common random numbers: a stratum with the same members shows the same demonstration.
    for draw, other in zip(draws, proxy.demonstrations([10, 2, 4, 8, 6])):
        assert set(draw) == set(other)


def test_demonstrations_represent_the_whole_selection_so_different_selections_show_different_ones(tiny):
    pool = [example(f"q{i}", f"a{i}") for i in range(40)]
    anchors = Anchors(positions=np.arange(5), cluster_sizes=np.ones(5, dtype=np.int64))
    proxy = InContextProxy(tiny, pool, ANCHORS, anchors, repeats=3, demos=4, seed=0)
    selection = list(range(20))  # ranked best first: strata 0–4, 5–9, 10–14, 15–19
    draws = proxy.demonstrations(selection)
    assert all(sorted(p // 5 for p in draw) == [0, 1, 2, 3] for draw in draws)  # one per rank quantile
    for stratum in range(4):  # replacing the members of any one stratum changes every repeat's draw
        changed = selection[:5 * stratum] + list(range(20 + 5 * stratum, 25 + 5 * stratum)) + selection[5 * stratum + 5:]
        assert all(a != b for a, b in zip(draws, proxy.demonstrations(changed)))
    value = proxy.evaluate(selection)
    assert len(value.repeats) == 3 and value.value == pytest.approx(np.mean(value.repeats))
    assert value.spread == pytest.approx(np.std(value.repeats, ddof=1)) and value.spread > 0
    assert [list(draw) for draw in value.draws] == draws


def test_proxy_value_is_the_anchor_weighted_loglik_averaged_over_repeats(tiny):
    anchors = Anchors(positions=np.arange(5), cluster_sizes=np.array([1, 2, 3, 1, 3]))
    proxy = InContextProxy(tiny, POOL, ANCHORS, anchors, repeats=2, demos=2, seed=0)
    selection = [0, 3, 5, 7]
    expected = np.mean([anchor_estimate(tiny.answer_logliks([POOL[p] for p in draw], ANCHORS), anchors)
                        for draw in proxy.demonstrations(selection)])
    assert proxy(selection) == pytest.approx(expected, abs=1e-12)
    naive = InContextProxy(tiny, POOL, ANCHORS, anchors, repeats=2, demos=2, seed=0, naive=True)
    assert naive(selection) == pytest.approx(proxy(selection), abs=1e-4)


def test_exact_match_proxy_scores_each_anchor_right_or_wrong(tiny):
    anchors = Anchors(positions=np.arange(5), cluster_sizes=np.ones(5, dtype=np.int64))
    proxy = InContextProxy(tiny, POOL, ANCHORS, anchors, repeats=1, demos=1, metric="exact_match")
    value = proxy([0, 1])
    assert 0.0 <= value <= 1.0
    assert set(proxy.anchor_scores(proxy.demonstrations([0, 1])[0]).tolist()) <= {0.0, 1.0}


@pytest.mark.real
def test_cached_prefix_equals_naive_on_smollm2_with_gsm8k():
    path = require_shared_data("gsm8k", "train.jsonl")
    require_smollm2()
    from tunewise.model import load_backend

    with path.open() as handle:
        items = [parse_record(json.loads(next(handle))) for _ in range(4)]
    demos, anchors = items[:1], items[1:]
    model = ProxyModel(load_backend("smollm2", device="cpu", dtype="fp32"), max_batch_tokens=600)
    cached = model.answer_logliks(demos, anchors)
    naive = model.answer_logliks(demos, anchors, naive=True)
    assert np.all(cached > -5) and np.all(cached < 0)
    np.testing.assert_allclose(cached, naive, rtol=0, atol=1e-4)
    limits = [6] * len(anchors)
    assert model.greedy_answers(demos, anchors, limits) == model.greedy_answers(demos, anchors, limits, naive=True)
