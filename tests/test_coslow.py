"""CoS-Low (DESIGN.md §2): choosing the prompts to label, and the gradient similarity itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_shared_data, require_smollm2
from tunewise.efficiency.coslow import (
    coslow,
    lora_gradient_vectors,
    lowest_confidence_prompts,
    minimum_pool_size,
)
from tunewise.errors import TunewiseError
from tunewise.model.gradients import sketch_gradient

# -- which prompts to label ----------------------------------------------------------------------


def test_minimum_pool_size_is_ten_times_k():
    assert minimum_pool_size() == 320
    assert minimum_pool_size(k=8, fraction=0.25) == 32


def test_a_pool_of_exactly_320_gives_its_32_least_confident_prompts():
    confidences = np.random.default_rng(1).random(320)
    chosen = lowest_confidence_prompts(confidences)
    assert chosen == list(np.argsort(confidences, kind="mergesort")[:32])


def test_sample_comes_from_the_lowest_tenth_and_is_seeded():
    confidences = np.random.default_rng(2).random(1000)
    lowest_hundred = set(np.argsort(confidences)[:100].tolist())
    first = lowest_confidence_prompts(confidences, seed=0)
    assert len(first) == len(set(first)) == 32
    assert set(first) <= lowest_hundred
    assert lowest_confidence_prompts(confidences, seed=0) == first
    assert lowest_confidence_prompts(confidences, seed=1) != first
    assert [confidences[i] for i in first] == sorted(confidences[i] for i in first)


def test_ties_resolve_by_position():
    assert lowest_confidence_prompts([0.5] * 320) == list(range(32))


def test_small_pool_is_an_error_unless_allowed():
    confidences = np.linspace(1, 0.01, 100)
    with pytest.raises(TunewiseError, match="100 prompts available, 320 needed") as raised:
        lowest_confidence_prompts(confidences)
    assert "--allow-small-pool" in raised.value.fix
    assert sorted(lowest_confidence_prompts(confidences, allow_small_pool=True)) == list(range(68, 100))
    with pytest.raises(TunewiseError, match="20 prompts available, 32 requested"):
        lowest_confidence_prompts(confidences[:20], allow_small_pool=True)


@pytest.mark.parametrize(
    "confidences, options, message",
    [([0.1, float("inf")] * 200, {}, "one number per prompt"), ([0.1] * 400, {"k": 1}, "k >= 2"),
     ([0.1] * 400, {"fraction": 0.0}, r"\(0, 1\]")],
)
def test_invalid_selection_arguments(confidences, options, message):
    with pytest.raises(TunewiseError, match=message):
        lowest_confidence_prompts(confidences, **options)


# -- CoS-Low on the tiny random model ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from tunewise.model.load import load_model

    return load_model("tiny-random", device="cpu", dtype="fp32")


def arithmetic(count: int):
    prompts = [[{"role": "user", "content": f"What is {i} plus {i + 3}?"}] for i in range(count)]
    return prompts, [str(2 * i + 3) for i in range(count)]


@pytest.mark.integration
def test_coslow_is_a_median_cosine_and_deterministic_for_the_seed(tiny):
    prompts, responses = arithmetic(8)
    result = coslow(tiny.model, tiny.tokenizer, prompts, responses, seed=0)
    assert -1.0 <= result["coslow"] <= 1.0
    assert result["n"] == 8 and len(result["cosines"]) == 8 * 7 // 2
    assert result["coslow"] == pytest.approx(float(np.median(result["cosines"])))
    assert all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in result["cosines"])
    assert result["peak_memory"] > 0 and result["peak_memory_kind"] == "process_max_rss"
    again = coslow(tiny.model, tiny.tokenizer, prompts, responses, seed=0)
    assert again["cosines"] == result["cosines"]
    assert coslow(tiny.model, tiny.tokenizer, prompts, responses, seed=1)["cosines"] != result["cosines"]


@pytest.mark.integration
def test_identical_examples_have_cosine_one(tiny):
    prompt = [{"role": "user", "content": "Name a colour."}]
    result = coslow(tiny.model, tiny.tokenizer, [prompt, prompt], ["red", "red"])
    assert result["coslow"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.integration
def test_the_model_is_left_as_it_was(tiny):
    import torch

    before = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    rng_state = torch.random.get_rng_state()
    coslow(tiny.model, tiny.tokenizer, *arithmetic(3), seed=5)
    after = dict(tiny.model.named_parameters())
    assert after.keys() == before.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.requires_grad and p.grad is None for p in after.values())
    assert not tiny.model.training
    assert torch.equal(torch.random.get_rng_state(), rng_state)


@pytest.mark.integration
def test_gradients_are_streamed_one_example_at_a_time(tiny):
    """Vectors come one example at a time, and no gradient stays in the model between them."""
    config = tiny.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    outputs_per_layer = (
        2 * config.hidden_size  # q_proj, o_proj
        + 2 * config.num_key_value_heads * head_dim  # k_proj, v_proj
        + 2 * config.intermediate_size + config.hidden_size  # gate_proj, up_proj, down_proj
    )
    generator = lora_gradient_vectors(tiny.model, tiny.tokenizer, *arithmetic(4), rank=8)
    seen = 0
    for vector in generator:
        seen += 1
        assert vector.device.type == "cpu"
        assert vector.numel() == 8 * outputs_per_layer * config.num_hidden_layers
        # While the generator is paused the adapter sits inside the model's own modules.
        lora_parameters = [p for name, p in tiny.model.named_parameters() if "lora_" in name]
        assert len(lora_parameters) == 2 * 7 * config.num_hidden_layers  # q/k/v/o, gate/up/down
        assert all(p.grad is None for p in lora_parameters)
    assert seen == 4


@pytest.mark.integration
def test_coslow_errors(tiny):
    prompts, responses = arithmetic(3)
    with pytest.raises(TunewiseError, match="3 prompts but 2 responses"):
        coslow(tiny.model, tiny.tokenizer, prompts, responses[:2])
    with pytest.raises(TunewiseError, match="at least 2"):
        coslow(tiny.model, tiny.tokenizer, prompts[:1], responses[:1])
    with pytest.raises(TunewiseError, match="projection dimension"):
        coslow(tiny.model, tiny.tokenizer, prompts, responses, dimension=0)


# -- the projection -------------------------------------------------------------------------------


def test_sketch_is_seeded_linear_and_keeps_inner_products():
    import torch

    generator = torch.Generator().manual_seed(0)
    x = [torch.randn(3000, generator=generator), torch.randn(50, 40, generator=generator)]
    noise = [torch.randn(b.shape, generator=generator) for b in x]
    y = [0.6 * a + 0.8 * n for a, n in zip(x, noise)]  # cosine about 0.6 with x
    sx, sy = sketch_gradient(x, 4096, seed=3), sketch_gradient(y, 4096, seed=3)
    assert sx.shape == (4096,) and sx.dtype == torch.float32
    assert torch.equal(sketch_gradient(x, 4096, seed=3), sx)
    assert not torch.equal(sketch_gradient(x, 4096, seed=4), sx)
    both = sketch_gradient([a + b for a, b in zip(x, y)], 4096, seed=3)
    assert torch.allclose(both, sx + sy, atol=1e-4)
    flat_x, flat_y = (torch.cat([b.reshape(-1) for b in v]) for v in (x, y))
    exact = torch.nn.functional.cosine_similarity(flat_x, flat_y, dim=0)
    projected = torch.nn.functional.cosine_similarity(sx, sy, dim=0)
    # One cosine's standard deviation is √((1 + c²)/d) ≈ 0.018 here; five of them is a safe bound.
    assert abs(float(projected - exact)) < 5 * ((1 + float(exact) ** 2) / 4096) ** 0.5


def test_sketch_of_one_coordinate_is_that_coordinate_with_a_sign():
    import torch

    vector = torch.zeros(100)
    vector[17] = 2.5
    sketch = sketch_gradient([vector], 64, seed=0)
    assert sketch.abs().max() == 2.5 and int((sketch != 0).sum()) == 1


@pytest.mark.integration
def test_projected_coslow_stays_near_the_exact_value(tiny):
    prompts, responses = arithmetic(8)
    exact = coslow(tiny.model, tiny.tokenizer, prompts, responses, seed=0, dimension=None)
    projected = coslow(tiny.model, tiny.tokenizer, prompts, responses, seed=0, dimension=4096)
    assert not exact["projected"] and exact["dimension"] == exact["gradient_dimension"]
    assert projected["projected"] and projected["dimension"] == 4096
    assert projected["gradient_dimension"] == exact["gradient_dimension"] > 4096
    assert abs(projected["coslow"] - exact["coslow"]) < 4 * projected["projection_std"]
    assert projected["coslow"] != exact["coslow"]


@pytest.mark.integration
def test_coslow_runs_on_a_bf16_model_and_leaves_it_bf16():
    import torch

    from tunewise.model.load import load_model

    prompts, responses = arithmetic(6)
    fp32 = load_model("tiny-random", device="cpu", dtype="fp32")
    bf16 = load_model("tiny-random", device="cpu", dtype="bf16")
    exact = coslow(fp32.model, fp32.tokenizer, prompts, responses, dimension=None)
    result = coslow(bf16.model, bf16.tokenizer, prompts, responses, dimension=None)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert not any("lora_" in name for name, _ in bf16.model.named_parameters())
    assert result["coslow"] == pytest.approx(exact["coslow"], abs=0.05)


# -- CoS-Low on the bundled model and real data --------------------------------------------------


@pytest.mark.real
def test_coslow_on_smollm2_for_a_bbh_task():
    require_smollm2()
    task_file = require_shared_data("bbh", "tasks", "boolean_expressions.json")
    from tunewise.model import load_backend
    from tunewise.data.pool import parse_record
    from tunewise.indicators.score import score_pool

    records = json.loads(task_file.read_text())["examples"]
    examples = [parse_record({"prompt": r["input"], "response": r["target"]}) for r in records]
    backend = load_backend("smollm2", device="cpu", dtype="fp32")
    confidence = score_pool(examples, backend, ["confidence"])["confidence"].to_numpy()
    # BBH tasks hold 250 examples at most, below the paper's 320.
    chosen = lowest_confidence_prompts(confidence, allow_small_pool=True)
    result = coslow(backend.loaded.model, backend.loaded.tokenizer, [list(examples[i].prompt) for i in chosen],
                    [examples[i].response for i in chosen])
    assert -1.0 <= result["coslow"] <= 1.0
    assert result["n"] == 32 and len(result["cosines"]) == 496


# -- paper A's masking, the comparison predictors, LoRA targets from the model ----------------------


def test_unanswerable_prompts_are_left_out_of_the_lowest_decile():
    confidences = np.random.default_rng(3).random(400)
    confidences[::7] = 0.0  # answered with newlines or a stop token only
    chosen = lowest_confidence_prompts(confidences, allow_small_pool=True)
    assert all(confidences[i] > 0 for i in chosen)
    finite = np.flatnonzero(confidences > 0)
    assert set(chosen) <= set(finite[np.argsort(confidences[finite])[:34]].tolist())


def test_the_ppl_metric_takes_the_highest_perplexities():
    perplexity = np.arange(320, dtype=float)
    assert sorted(lowest_confidence_prompts(perplexity, metric="confidence_ppl")) == list(range(288, 320))
    with pytest.raises(TunewiseError, match="unknown confidence metric"):
        lowest_confidence_prompts(perplexity, metric="entropy")


def test_random_prompts_are_seeded_and_differ_from_the_low_confidence_draw():
    from tunewise.efficiency.coslow import random_prompts

    first = random_prompts(500, seed=0)
    assert len(set(first)) == 32 and first == sorted(first) and max(first) < 500
    assert random_prompts(500, seed=0) == first and random_prompts(500, seed=1) != first
    with pytest.raises(TunewiseError, match="10 prompts available, 32 requested"):
        random_prompts(10)


@pytest.mark.integration
def test_lora_targets_are_every_linear_projection_of_the_blocks(tiny):
    from tunewise.model.gradients import lora_target_modules

    assert lora_target_modules(tiny.model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]


@pytest.mark.integration
def test_coslow_runs_on_an_architecture_without_llama_names():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tunewise.model.gradients import lora_target_modules
    from tunewise.model.load import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=256))
    model.eval()
    assert lora_target_modules(model) == ["c_attn", "c_fc", "c_proj"]
    result = coslow(model, tokenizer, *arithmetic(3), rank=4)
    assert result["target_modules"] == ["c_attn", "c_fc", "c_proj"] and len(result["cosines"]) == 3


@pytest.mark.integration
def test_the_end_token_is_left_out_unless_asked_and_the_gradient_norm_is_reported(tiny):
    prompts, responses = arithmetic(4)
    answer_only = coslow(tiny.model, tiny.tokenizer, prompts, responses)
    with_end = coslow(tiny.model, tiny.tokenizer, prompts, responses, include_eos=True)
    assert not answer_only["include_eos"] and with_end["include_eos"]
    assert answer_only["cosines"] != with_end["cosines"]
    assert answer_only["grad_norm"] > 0 and np.isfinite(answer_only["grad_norm"])
    with pytest.raises(TunewiseError, match="no answer token"):
        coslow(tiny.model, tiny.tokenizer, prompts[:2], ["3", "\n"])


@pytest.mark.parametrize("allow_small_pool, given", [(True, 40), (False, 400)])
def test_a_model_that_answers_nothing_is_named_as_the_cause_not_the_pool_size(allow_small_pool, given):
    """tiny-random answers only whitespace: every confidence is 0. Enough prompts were given, so
    the fix must not ask for more prompts but for a model that answers."""
    with pytest.raises(TunewiseError) as raised:
        lowest_confidence_prompts([0.0] * given, allow_small_pool=allow_small_pool)
    message = str(raised.value)
    assert f"{given} more were answered with no answer token" in message
    assert f"{given} prompts were given, but the model gave no answer token" in message
    assert "use a model that answers" in message and "give at least" not in message
    with pytest.raises(TunewiseError, match="give at least 32 prompts"):
        lowest_confidence_prompts([0.5] * 20, allow_small_pool=True)
