"""The transformers backend on the tiny random model: the fused batched pass against a naive one.

The naive reference runs one example at a time through ``model(ids).logits`` (loss, IFD) and
``model.generate`` (confidence), with no padding, no KV-cache tricks and no shared prompt pass,
so any mistake in the backend's masking, positions, cache cropping or batching shows up here.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tunewise.data.pool import parse_record
from tunewise.indicators.score import score_pool

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")

MAX_NEW_TOKENS = 12
RECORDS = [
    {"question": "Hi", "answer": "Hello there, how can I help?"},
    {"question": "What is 2+2?", "answer": "4"},
    {"question": "Name a colour.", "answer": "Blue.\nOr maybe green."},
    {"question": "Tell me a story about a dragon who learned to fly over the mountains", "answer": "Once upon a time."},
    {"question": "x", "answer": "y"},
    {"question": "yes or no"},  # unlabelled: confidence only
    {"messages": [{"role": "system", "content": "Answer tersely."}, {"role": "user", "content": "Translate 'cat'"},
                  {"role": "assistant", "content": "chat"}]},
    {"messages": [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2"},
                  {"role": "user", "content": "Go on."}, {"role": "assistant", "content": "3"}]},
    {"question": "abc def ghi", "answer": "jkl mno pqr stu vwx yz " * 3},
    {"question": "Hello world!", "answer": "!dlrow olleH"},
    {"question": "Q"},
    {"question": "zzz", "answer": "sleep"},
]


@pytest.fixture(scope="module")
def backend():
    """tiny-random with sharper, seeded weights: the stock init is so flat that every greedy
    answer is the same token; these give varied answers, some of which stop early."""
    from tunewise.model import load_backend

    loaded = load_backend("tiny-random", device="cpu", dtype="fp32", max_new_tokens=MAX_NEW_TOKENS)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.35)
        loaded.model.get_output_embeddings().weight[loaded.tokenizer.eos_token_id] *= 1.8
    yield loaded


@pytest.fixture(scope="module")
def examples():
    return [parse_record(record) for record in RECORDS]


# -- the naive reference --------------------------------------------------------------------------


def naive_prompt_ids(tokenizer, example) -> list[int]:
    rendered = tokenizer.apply_chat_template(list(example.prompt), tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def naive_mean_nll(model, context: list[int], targets: list[int]) -> float:
    """Mean negative log-likelihood of ``targets`` following ``context``, from full logits."""
    ids = torch.tensor([context + targets])
    logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    positions = torch.arange(len(context) - 1, len(context) + len(targets) - 1)
    return float(-logprobs[positions, torch.tensor(targets)].mean())


def naive_stop_ids(model, tokenizer) -> list[int]:
    """eos, pad, unknown (<|endoftext|>) and the generation config's eos; tiny-random's ChatML
    template ends a turn with <|im_end|>, its eos."""
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    configured = model.generation_config.eos_token_id
    stops.update([configured] if isinstance(configured, int) else (configured or []))
    return sorted(s for s in stops if s is not None)


def naive_confidence(model, tokenizer, tokens: list[int], probabilities: np.ndarray) -> float:
    """Mean probability over the answer tokens: no stop token and no bare newline (ChatML's "\n")."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    excluded = set(naive_stop_ids(model, tokenizer)) | set(newline)
    kept = [p for token, p in zip(tokens, probabilities) if token not in excluded]
    return float(np.mean(kept)) if kept else 0.0


def naive_greedy(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy answer and the probability of each chosen token, up to and including a stop token."""
    output = model.generate(
        torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=naive_stop_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True,
    )
    tokens = output.sequences[0, len(prompt_ids):].tolist()
    probabilities = [float(torch.softmax(step[0].double(), dim=-1)[token])
                     for step, token in zip(output.logits, tokens)]
    return tokens, np.array(probabilities)


@pytest.fixture(scope="module")
def naive_scores(backend, examples):
    model, tokenizer = backend.model, backend.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows = []
    with torch.no_grad():
        for example in examples:
            prompt_ids = naive_prompt_ids(tokenizer, example)
            tokens, probabilities = naive_greedy(model, tokenizer, prompt_ids, MAX_NEW_TOKENS)
            row = {"confidence": naive_confidence(model, tokenizer, tokens, probabilities),
                   "prompt_length": len(prompt_ids), "answer_tokens": len(tokens),
                   "loss": np.nan, "ifd": np.nan, "length": np.nan}
            if example.response is not None:
                response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
                loss = naive_mean_nll(model, prompt_ids, response_ids)
                unconditional = naive_mean_nll(model, [start], response_ids)
                row.update(loss=loss, ifd=np.exp(loss - unconditional), length=len(response_ids))
            rows.append(row)
    return rows


# -- fused pass == naive --------------------------------------------------------------------------


def test_the_reference_exercises_both_early_stops_and_full_length_answers(naive_scores):
    lengths = {row["answer_tokens"] for row in naive_scores}
    assert min(lengths) < MAX_NEW_TOKENS and max(lengths) == MAX_NEW_TOKENS


@pytest.mark.parametrize("batch_tokens", [120, 100_000], ids=["many_small_batches", "one_padded_batch"])
def test_fused_batched_scores_equal_the_naive_per_example_computation(backend, examples, naive_scores, tmp_path,
                                                                      batch_tokens):
    scores = score_pool(examples, backend, ["loss", "ifd", "confidence", "length"], cache_dir=tmp_path,
                        max_batch_tokens=batch_tokens)
    for column in ("loss", "ifd", "confidence", "length", "prompt_length"):
        expected = np.array([row[column] for row in naive_scores], dtype=float)
        np.testing.assert_allclose(scores[column].to_numpy(), expected, atol=1e-4, rtol=0, equal_nan=True,
                                   err_msg=column)
    np.testing.assert_allclose(scores["ppl"], np.exp(scores["loss"]), rtol=1e-12)


def test_batches_really_mix_lengths_under_the_small_budget(backend, examples):
    from tunewise.model import plan_batches

    encoded = backend.encode([e.prompt for e in examples], [e.response for e in examples])
    lengths = [e.prompt_length + max(e.response_length, MAX_NEW_TOKENS) for e in encoded]
    batches = plan_batches(lengths, 120)
    assert any(len(batch) > 1 and len({lengths[p] for p in batch}) > 1 for batch in batches)


def test_encode_matches_the_chat_template_and_plain_response_tokens(backend, examples):
    encoded = backend.encode([e.prompt for e in examples], [e.response for e in examples])
    for example, item in zip(examples, encoded):
        assert list(item.prompt_ids) == naive_prompt_ids(backend.tokenizer, example)
        expected = None if example.response is None else \
            tuple(backend.tokenizer(example.response, add_special_tokens=False)["input_ids"])
        assert item.response_ids == expected


def test_only_the_asked_outputs_are_computed(backend, examples):
    encoded = backend.encode([e.prompt for e in examples[:3]], [e.response for e in examples[:3]])
    assert set(backend.score_batch(encoded, {"loss_unconditional"})) == {"loss_unconditional"}
    alone = backend.score_batch(encoded, {"loss"})["loss"]
    together = backend.score_batch(encoded, {"loss", "confidence", "embedding"})["loss"]
    np.testing.assert_allclose(alone, together, atol=1e-6)


# -- embeddings and generation --------------------------------------------------------------------


def test_embeddings_are_unit_norm_and_independent_of_batching(backend, examples, tmp_path):
    scores = score_pool(examples, backend, ["embedding"], cache_dir=tmp_path, max_batch_tokens=120)
    matrix = np.stack(scores["embedding"].to_numpy())
    assert matrix.shape == (len(examples), backend.model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)

    texts = ["short", "a somewhat longer text to embed", "", "ünïcødé ✓"]
    together = backend.embed(texts)
    one_by_one = np.concatenate([backend.embed([text]) for text in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together[[0, 1, 3]], axis=1), 1.0, atol=1e-5)
    assert backend.embed([]).shape == (0, backend.model.config.hidden_size)


def test_batched_generation_equals_one_prompt_at_a_time(backend, examples, naive_scores):
    prompts = [e.prompt for e in examples]
    together = backend.generate(prompts, MAX_NEW_TOKENS)
    for prompt, generation, row in zip(prompts, together, naive_scores):
        (alone,) = backend.generate([prompt], MAX_NEW_TOKENS)
        assert generation.text == alone.text
        np.testing.assert_allclose(generation.token_probabilities, alone.token_probabilities, atol=1e-5)
        assert generation.confidence == pytest.approx(row["confidence"], abs=1e-4, nan_ok=True)


# -- lazy imports ---------------------------------------------------------------------------------


def test_importing_tunewise_and_its_light_modules_does_not_import_torch():
    code = (
        "import sys, tunewise, tunewise.data.pool, tunewise.indicators.score, tunewise.model, tunewise.cli.score\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
