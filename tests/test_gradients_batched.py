"""CoS-Low's per-example LoRA gradients taken in batches equal paper A's one-example-per-pass ones
(:class:`tunewise.model.gradients.LoraGradients`, ``batched=True`` against ``batched=False``)."""

from __future__ import annotations

import pytest

from tunewise.errors import TunewiseError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny():
    from tunewise.model.load import load_model

    return load_model("tiny-random", device="cpu", dtype="fp32")


def mixed_examples(count: int = 9):
    """Prompts and answers of many lengths: several share a padded width, several do not."""
    prompts = [[{"role": "user", "content": "Add " + " and ".join(str(j) for j in range(1 + i % 5)) + "."}]
               for i in range(count)]
    responses = [" ".join(["carry"] * (i % 3)) + f" {i}" for i in range(count)]
    return prompts, responses


def gradients(model, tokenizer, prompts, responses, **options):
    from tunewise.model.gradients import LoraGradients

    iterator = LoraGradients(model, tokenizer, prompts, responses, rank=8, seed=3, **options)
    try:
        return iterator, list(iterator)
    finally:
        iterator.close()


def relative_errors(got, expected):
    return [float((g - e).norm() / e.norm()) for g, e in zip(got, expected)]


def test_the_examples_mix_lengths_within_a_batch(tiny):
    """The comparisons below only mean something if a batch holds examples of different lengths."""
    from tunewise.model.chat import gradient_example
    from tunewise.model.packed import plan_padded_chunks

    prompts, responses = mixed_examples()
    lengths = [len(gradient_example(tiny.tokenizer, p, r)[0]) for p, r in zip(prompts, responses)]
    chunks = plan_padded_chunks(lengths, 4096)
    assert len(set(lengths)) >= 5 and len(chunks) >= 3
    assert any(len({lengths[i] for i in positions}) > 1 for _, positions in chunks)


@pytest.mark.parametrize("budget", [4096, 60])
def test_batched_full_gradients_and_norms_equal_the_per_example_ones_in_fp32(tiny, budget):
    prompts, responses = mixed_examples()
    reference, expected = gradients(tiny.model, tiny.tokenizer, prompts, responses, batched=False)
    batched, got = gradients(tiny.model, tiny.tokenizer, prompts, responses, max_batch_tokens=budget)
    assert batched.per_example_reason is None and reference.per_example_reason is not None
    assert batched.gradient_dimension == reference.gradient_dimension == got[0].numel()
    assert max(relative_errors(got, expected)) <= 1e-5
    assert batched.norms == pytest.approx(reference.norms, rel=1e-5)
    assert all(n > 0 for n in batched.norms)


def test_batched_projected_gradients_and_blocks_equal_the_per_example_ones(tiny):
    prompts, responses = mixed_examples()
    _, expected = gradients(tiny.model, tiny.tokenizer, prompts, responses, batched=False, dimension=512)
    _, got = gradients(tiny.model, tiny.tokenizer, prompts, responses, dimension=512)
    assert [v.shape for v in got] == [(512,)] * len(prompts)
    assert max(relative_errors(got, expected)) <= 1e-5
    _, expected_blocks = gradients(tiny.model, tiny.tokenizer, prompts, responses, batched=False, blocks=True)
    _, got_blocks = gradients(tiny.model, tiny.tokenizer, prompts, responses, blocks=True)
    assert [[b.shape for b in example] for example in got_blocks] == [[b.shape for b in example]
                                                                      for example in expected_blocks]
    import torch

    flat = [torch.cat([b.reshape(-1) for b in example]) for example in got_blocks]
    assert max(relative_errors(flat, [torch.cat([b.reshape(-1) for b in e]) for e in expected_blocks])) <= 1e-5


def test_the_batched_projection_is_the_per_example_projection_of_the_batched_gradient(tiny):
    """Same buckets and signs per block: projecting the batched full gradient with sketch_gradient
    gives the batched projected vector."""
    from tunewise.model.gradients import sketch_gradient

    prompts, responses = mixed_examples(5)
    _, blocks = gradients(tiny.model, tiny.tokenizer, prompts, responses, blocks=True)
    _, projected = gradients(tiny.model, tiny.tokenizer, prompts, responses, dimension=256)
    again = [sketch_gradient(example, 256, seed=3) for example in blocks]
    assert max(relative_errors(projected, again)) <= 1e-6


def test_an_example_gets_the_same_gradient_alone_and_in_a_batch(tiny):
    prompts, responses = mixed_examples()
    _, together = gradients(tiny.model, tiny.tokenizer, prompts, responses)
    for position in (0, 4):
        _, alone = gradients(tiny.model, tiny.tokenizer, prompts[position:position + 1],
                             responses[position:position + 1])
        assert relative_errors(alone, together[position:position + 1])[0] <= 1e-6


def test_bf16_batched_gradients_stay_close_to_the_per_example_ones():
    """In bf16 a padded batch could round differently from one example alone; measured here: 0 for
    the full gradients, 8e-8 relative for the projected ones (the sketch's summation order)."""
    from tunewise.model.load import load_model

    bf16 = load_model("tiny-random", device="cpu", dtype="bf16")
    prompts, responses = mixed_examples()
    reference, expected = gradients(bf16.model, bf16.tokenizer, prompts, responses, batched=False)
    batched, got = gradients(bf16.model, bf16.tokenizer, prompts, responses)
    assert max(relative_errors(got, expected)) <= 1e-3
    assert batched.norms == pytest.approx(reference.norms, rel=1e-3)
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 2 for p in bf16.model.parameters())


def test_coslow_is_unchanged_by_batching(tiny):
    """coslow() (batched) against the median cosine of paper A's one-example-per-pass gradients."""
    import numpy as np
    import torch

    from tunewise.efficiency.coslow import coslow
    from tunewise.model.gradients import LoraGradients

    prompts, responses = mixed_examples()
    result = coslow(tiny.model, tiny.tokenizer, prompts, responses, rank=8, seed=3, dimension=None)
    reference = LoraGradients(tiny.model, tiny.tokenizer, prompts, responses, rank=8, seed=3, batched=False)
    units = torch.stack([v / v.norm() for v in reference]).double()
    expected = (units @ units.T)[tuple(torch.triu_indices(len(prompts), len(prompts), offset=1))].numpy()
    assert result["cosines"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert result["coslow"] == pytest.approx(float(np.median(expected)), abs=1e-6)
    assert result["grad_norm"] == pytest.approx(float(np.mean(reference.norms)), rel=1e-6)


def test_a_model_that_rescales_its_logits_takes_one_example_per_pass(tiny, monkeypatch):
    monkeypatch.setattr(tiny.model.config, "final_logit_softcapping", 30.0, raising=False)
    prompts, responses = mixed_examples(3)
    iterator, got = gradients(tiny.model, tiny.tokenizer, prompts, responses)
    assert "final_logit_softcapping" in iterator.per_example_reason and len(got) == 3


@pytest.mark.parametrize("budget", [0, -5, 2.5, True])
def test_a_batch_of_no_tokens_is_refused(tiny, budget):
    from tunewise.model.gradients import LoraGradients

    prompts, responses = mixed_examples(2)
    with pytest.raises(TunewiseError, match="at least 1 token"):
        LoraGradients(tiny.model, tiny.tokenizer, prompts, responses, max_batch_tokens=budget)


def test_no_hook_stays_on_the_model_between_examples_and_the_adapter_goes_at_close(tiny):
    from tunewise.model.gradients import LoraGradients

    prompts, responses = mixed_examples(4)
    iterator = LoraGradients(tiny.model, tiny.tokenizer, prompts, responses, rank=8, max_batch_tokens=60)
    next(iterator)
    lora_b = [module for name, module in tiny.model.named_modules() if name.endswith("lora_B.default")]
    assert lora_b and not any(module._forward_hooks for module in lora_b)
    iterator.close()
    assert not any("lora_" in name for name, _ in tiny.model.named_parameters())
    assert all(p.requires_grad for p in tiny.model.parameters())
