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


def test_the_answer_loss_in_blocks_of_rows_gives_the_gradients_of_one_block_to_the_bit(tiny, monkeypatch):
    """The vocabulary projection and its backward pass run a block of rows at a time
    (``_answer_loss_gradient``); blocks of 8 rows give what one block of all rows gives."""
    import torch

    from tunewise.model import packed

    prompts, responses = mixed_examples()
    _, whole = gradients(tiny.model, tiny.tokenizer, prompts, responses, max_batch_tokens=4096)
    vocabulary = tiny.model.get_output_embeddings().out_features
    monkeypatch.setattr(packed, "LOGITS_BLOCK_BYTES", 4 * vocabulary * 8)
    blocked, got = gradients(tiny.model, tiny.tokenizer, prompts, responses, max_batch_tokens=4096)
    assert all(torch.equal(g, w) for g, w in zip(got, whole)) and len(got) == len(whole)


def test_the_probe_on_each_adapter_output_holds_one_number():
    """The leaf that replaces lora_B's output is one zero expanded to its shape: the autograd graph
    keeps every leaf until the backward pass, and a full-size one per adapted module cost 1.5 MB
    per token of Llama-3.2-1B's shape."""
    import torch

    from tunewise.model.gradients import _PerExampleCapture

    capture = _PerExampleCapture(dimension=16, seed=0, keep_full=False)
    capture.start(torch.ones((2, 5), dtype=torch.bool), modules=1)
    output = torch.randn(2, 5, 12)
    probe = capture.forward_hook(0, None, (torch.randn(2, 5, 3),), torch.zeros(2, 5, 12))
    assert probe.shape == output.shape and probe.is_leaf and probe.requires_grad
    assert probe.untyped_storage().nbytes() == 4 and torch.equal(probe, torch.zeros_like(output))


class _Shaped(__import__("torch").nn.Module):
    """A stand-in with a model's config, dtype and weights' bytes, for the batch budget."""

    def __init__(self, config, dtype, weight_bytes: int):
        import torch

        super().__init__()
        self.config = config
        self.dtype = dtype
        self.embed = torch.nn.Embedding(1, 1)
        self.weight_bytes = weight_bytes

    def get_input_embeddings(self):
        return self.embed

    def parameters(self, recurse: bool = True):
        import torch

        yield torch.empty(self.weight_bytes // 2, dtype=torch.bfloat16, device="meta")


def test_the_default_batch_follows_the_activations_against_the_weights():
    import torch
    from transformers import LlamaConfig

    from tunewise.model.gradients import DEFAULT_BATCH_TOKENS, activation_bytes_per_token, default_batch_tokens

    llama1b = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=128_256)
    # 1.47 MB a token, as torch.autograd.graph.saved_tensors_hooks counts it (BENCHMARKS.md).
    assert activation_bytes_per_token(llama1b, 2) == 1_474_560
    assert default_batch_tokens(_Shaped(llama1b, torch.bfloat16, 2_471_000_000)) == 364
    # SmolLM2-135M's shape keeps the CPU default in fp32 (and so its values: the batches do not change).
    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49_152)
    assert default_batch_tokens(_Shaped(smollm2, torch.float32, 538_060_032)) == DEFAULT_BATCH_TOKENS["cpu"]
    # An 8B Llama: 1/8 of its 16 GB of weights, not the floor, bounds the batch.
    llama8b = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=128_256)
    assert default_batch_tokens(_Shaped(llama8b, torch.bfloat16, 16_060_000_000)) == 364
    # A config that does not name its sizes the usual way keeps the device default.
    assert default_batch_tokens(_Shaped(__import__("types").SimpleNamespace(), torch.bfloat16, 10**9)) == 512


def test_the_default_batch_reaches_the_gradients(tiny, monkeypatch):
    """With no floor the tiny model's budget is a few tokens: one example per pass, the same
    gradients as its batches of 512 tokens."""
    from tunewise.model import gradients as module
    from tunewise.model import packed

    prompts, responses = mixed_examples(4)
    _, batched = gradients(tiny.model, tiny.tokenizer, prompts, responses)
    monkeypatch.setattr(module, "ACTIVATION_FLOOR_BYTES", 1)
    budget = module.default_batch_tokens(tiny.model)
    seen, plan = [], packed.plan_padded_chunks

    def spy(lengths, tokens, *args, **kwargs):
        seen.append(tokens)
        return plan(lengths, tokens, *args, **kwargs)

    monkeypatch.setattr(packed, "plan_padded_chunks", spy)
    _, alone = gradients(tiny.model, tiny.tokenizer, prompts, responses)
    assert seen == [budget] and 1 <= budget < 20
    assert max(relative_errors(alone, batched)) <= 1e-6
