"""Padding-free forward passes against one sequence at a time through ``model(ids).logits``."""

from __future__ import annotations

import numpy as np
import pytest

from tunewise.model.packed import padded_width, padding_share, plan_packed_rows, plan_padded_chunks

torch = pytest.importorskip("torch")


# -- planning (pure) ------------------------------------------------------------------------------


def test_padded_widths_waste_at_most_the_share_and_never_shrink():

    widths = [padded_width(n) for n in range(1, 3000)]
    assert all(w >= n and (w - n) <= 0.05 * w + 1e-9 for n, w in zip(range(1, 3000), widths))
    assert widths == sorted(widths) and len(set(widths)) < 200


def test_padded_chunks_keep_padding_under_the_share_and_the_budget():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(20, 400, size=300)]
    chunks = plan_padded_chunks(lengths, 4096, max_padding=0.05)
    assert sorted(i for _, chunk in chunks for i in chunk) == list(range(300))
    for width, chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * width <= 4096
        assert all(0.95 * width <= lengths[i] <= width for i in chunk)
    assert padding_share(lengths, chunks) <= 0.05
    # A sequence's width depends on its own length only; a sequence over the budget runs alone.
    alone = {i: plan_padded_chunks([lengths[i]], 4096)[0][0] for i in range(300)}
    assert all(alone[i] == width for width, chunk in chunks for i in chunk)
    assert plan_padded_chunks([5000, 10, 10], 4096) == [(padded_width(5000), [0]), (10, [1, 2])]


def test_packed_rows_hold_every_item_once_within_the_width():
    sizes = [7, 3, 9, 2, 2, 5, 1, 9]
    width, batches = plan_packed_rows(sizes, 20)
    assert width == 9
    rows = [row for batch in batches for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in row) <= width for row in rows)
    assert all(len(batch) * width <= 20 for batch in batches)
    # First-fit decreasing fills 38 tokens into 5 rows of 9 (45 slots).
    assert len(rows) == 5


# -- the passes (tiny-random, fp32) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lively():
    from tunewise.model.load import load_model

    loaded = load_model("tiny-random", dtype="fp32")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return loaded


def naive_logprobs(model, context, continuation):
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
    return logprobs[positions, torch.tensor(continuation)].numpy()


def random_ids(rng, low, high):
    return [int(x) for x in rng.integers(5, 200, size=int(rng.integers(low, high)))]


@pytest.mark.integration
@pytest.mark.parametrize("budget", [1, 64, 100_000], ids=["row_per_batch", "few_rows", "one_batch"])
def test_shared_prefix_logprobs_equal_each_continuation_run_alone(lively, budget):
    from tunewise.model.packed import shared_prefix_logprobs

    rng = np.random.default_rng(1)
    items = [(random_ids(rng, 1, 30), [random_ids(rng, 1, 6) for _ in range(int(rng.integers(1, 5)))])
             for _ in range(9)]
    packed = shared_prefix_logprobs(lively.model, items, lively.tokenizer.pad_token_id, max_batch_tokens=budget)
    for (context, continuations), got in zip(items, packed):
        assert len(got) == len(continuations)
        for continuation, values in zip(continuations, got):
            np.testing.assert_allclose(values, naive_logprobs(lively.model, context, continuation), atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("budget", [1, 120, 100_000], ids=["alone", "small_chunks", "one_chunk"])
def test_sequence_logprobs_equal_each_sequence_run_alone(lively, budget):
    from tunewise.model.packed import sequence_logprobs

    rng = np.random.default_rng(2)
    sequences = [random_ids(rng, 2, 40) for _ in range(12)]
    starts = [int(rng.integers(1, len(s))) for s in sequences]
    got = sequence_logprobs(lively.model, sequences, starts, lively.tokenizer.pad_token_id, max_batch_tokens=budget)
    for sequence, start, values in zip(sequences, starts, got):
        np.testing.assert_allclose(values, naive_logprobs(lively.model, sequence[:start], sequence[start:]), atol=1e-5)


@pytest.mark.integration
def test_sequence_logprobs_in_bf16_do_not_depend_on_the_batch(lively):
    from tunewise.model.packed import sequence_logprobs

    model = lively.model.to(torch.bfloat16)
    try:
        rng = np.random.default_rng(4)
        sequences = [random_ids(rng, 5, 120) for _ in range(30)]
        starts = [len(s) // 2 for s in sequences]
        together = sequence_logprobs(model, sequences, starts, lively.tokenizer.pad_token_id, max_batch_tokens=100_000)
        for sequence, start, values in zip(sequences, starts, together):
            (alone,) = sequence_logprobs(model, [sequence], [start], lively.tokenizer.pad_token_id)
            np.testing.assert_array_equal(values, alone)
    finally:
        model.to(torch.float32)


@pytest.mark.integration
def test_passes_refuse_empty_segments(lively):
    from tunewise.model.packed import sequence_logprobs, shared_prefix_logprobs

    with pytest.raises(ValueError):
        shared_prefix_logprobs(lively.model, [([1, 2], [[3], []])], 0)
    with pytest.raises(ValueError):
        sequence_logprobs(lively.model, [[1, 2]], [0], 0)


@pytest.mark.integration
def test_target_logprobs_bounds_its_logits_block_without_changing_a_value(lively, monkeypatch):
    """The float32 logits are formed a block of rows at a time (a 128k vocabulary would otherwise
    need gigabytes per chunk); every value is the one the whole projection gives."""
    from tunewise.model import packed

    head = lively.model.get_output_embeddings()
    hidden = torch.randn(50, head.in_features, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, head.out_features, (50,), generator=torch.Generator().manual_seed(1))
    whole = torch.log_softmax(head(hidden).float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    widths = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, *rest: widths.append(len(x)) or real_linear(x, *rest))
    block = 7 * 4 * head.out_features
    with torch.no_grad():
        blocked = packed.target_logprobs(head, hidden, targets, block_bytes=block)
    assert max(widths) == 7 and sum(widths) == 50
    torch.testing.assert_close(blocked, whole, rtol=0, atol=0)
