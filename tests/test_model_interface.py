"""The model interface (``tunewise.model.base.Backend``): the fake and the transformers backends
answer every method in the same shapes, and no module outside ``tunewise/model/`` runs a model itself."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "tunewise"

# -- every forward pass goes through tunewise.model ----------------------------------------------

# Fine-tuning's forward and backward passes are TRL's SFTTrainer's own (inside TRL), so
# training/finetune.py runs no model itself either and is held to the same rule.
_MODEL_KEYWORDS = {"input_ids", "inputs_embeds", "past_key_values", "cache", "logits_to_keep", "use_cache"}
_MODEL_METHODS = {"backward", "generate", "get_decoder", "get_output_embeddings", "batch_select_indices"}
_MODEL_OUTPUTS = {"logits", "last_hidden_state", "past_key_values", "lm_head"}
_MODEL_CALLEES = {"model", "peft_model", "decoder", "_decoder", "base_model"}
# dataclasses.replace(encoded, input_ids=...) edits token lists, it runs nothing.
_NOT_A_MODEL = {"replace"}


def direct_model_calls(source: str) -> list[str]:
    """Lines of ``source`` that run a transformers model directly: a call with a model keyword
    (``input_ids=``, ``past_key_values=`` ...), ``.backward()``, ``.generate()`` on anything but a
    backend, a call of something named ``model`` or ``decoder``, or a read of ``.logits`` and the like."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name in _NOT_A_MODEL:
                continue
            receiver = ast.unparse(function.value) if isinstance(function, ast.Attribute) else ""
            keywords = sorted(k.arg for k in node.keywords if k.arg in _MODEL_KEYWORDS)
            if keywords:
                found.append(f"{node.lineno}: {ast.unparse(function)}({', '.join(keywords)}=...)")
            elif isinstance(function, ast.Attribute) and name in _MODEL_METHODS and not (
                    name == "generate" and receiver.endswith("backend")):
                found.append(f"{node.lineno}: .{name}()")
            elif name in _MODEL_CALLEES:
                found.append(f"{node.lineno}: {ast.unparse(function)}(...)")
        elif isinstance(node, ast.Attribute) and node.attr in _MODEL_OUTPUTS:
            found.append(f"{node.lineno}: .{node.attr}")
    return found


def test_the_scan_finds_the_forward_passes_it_forbids():
    offending = (
        "out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)\n"
        "token = out.logits[:, -1].argmax(-1)\n"
        "peft_model(ids).loss.backward()\n"
        "hidden = self._decoder(ids)\n"
        "text = loaded.model.generate(ids, max_new_tokens=4)\n"
    )
    assert sorted(int(line.split(":")[0]) for line in direct_model_calls(offending)) == [1, 2, 3, 3, 4, 5]
    allowed = ("answers = self.backend.generate(prompts, 8)\n"
               "cut = replace(encoded, input_ids=encoded.input_ids[-9:])\n"
               "values = backend.loglikelihood(requests, share='context')\n")
    assert direct_model_calls(allowed) == []


def test_no_module_outside_tunewise_model_runs_a_model_itself():
    offenders = {}
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        if relative.startswith("model/"):
            continue
        calls = direct_model_calls(path.read_text(encoding="utf-8"))
        if calls:
            offenders[relative] = calls
    assert offenders == {}, "run models through tunewise.model's interface (Backend), not directly"


# -- the fake and the transformers backend agree in shape ---------------------------------------

PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a colour."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]]
RESPONSES = ["4", "Blue, or green.", "hi"]


@pytest.fixture(scope="module", params=["fake", pytest.param("tiny-random", marks=pytest.mark.integration)])
def backend(request):
    from tunewise.model import load_backend

    if request.param == "fake":
        return load_backend("fake")
    return load_backend("tiny-random", device="cpu", dtype="fp32", max_new_tokens=6)


def requests_of(backend):
    encoded = backend.encode(PROMPTS, RESPONSES)
    # Two choices after the first prompt, then each example's own response.
    first = encoded[0]
    return ([(first.prompt_ids, first.response_ids), (first.prompt_ids, encoded[1].response_ids)]
            + [(e.prompt_ids, e.response_ids) for e in encoded[1:]])


@pytest.mark.parametrize("share", ["none", "context", "prefix"])
def test_loglikelihood_gives_one_float32_log_probability_per_continuation_token(backend, share):
    requests = requests_of(backend)
    calls = []
    values = backend.loglikelihood(requests, share=share, progress=lambda done, total: calls.append((done, total)))
    assert len(values) == len(requests)
    for (_, continuation), logprobs in zip(requests, values):
        assert logprobs.dtype == np.float32 and logprobs.shape == (len(continuation),)
        assert np.all(logprobs <= 0) and np.all(np.isfinite(logprobs))
    assert calls and calls[-1][0] == calls[-1][1]
    with pytest.raises(ValueError, match="share"):
        backend.loglikelihood(requests, share="everything")


def test_the_three_layouts_agree(backend):
    requests = requests_of(backend)
    alone = backend.loglikelihood(requests)
    for share in ("context", "prefix"):
        for expected, got in zip(alone, backend.loglikelihood(requests, share=share, max_batch_tokens=30)):
            np.testing.assert_allclose(got, expected, atol=1e-4)


def test_generate_tokens_gives_per_row_limited_answers_with_probabilities(backend):
    prompts = [e.prompt_ids for e in backend.encode(PROMPTS, [None] * len(PROMPTS))]
    limits = [1, 4, 6]
    for share_prefix in (False, True):
        generations = backend.generate_tokens(prompts, limits, share_prefix=share_prefix)
        assert len(generations) == len(prompts)
        for generation, limit in zip(generations, limits):
            assert 1 <= len(generation.token_ids) <= limit
            assert generation.token_probabilities.dtype == np.float32
            assert generation.token_probabilities.shape == generation.token_ids.shape
            assert np.all((generation.token_probabilities > 0) & (generation.token_probabilities <= 1))
            assert generation.answer_ids == generation.token_ids.tolist()[:len(generation.token_ids) - generation.stopped]
            assert isinstance(generation.text, str) and 0 <= generation.confidence <= 1
        assert [g.token_ids.tolist() for g in generations] == \
            [g.token_ids.tolist() for g in backend.generate_tokens(prompts, limits)]
    chat = backend.generate(PROMPTS, 2)
    assert len(chat) == len(PROMPTS) and all(1 <= len(g.token_ids) <= 2 for g in chat)
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.generate_tokens(prompts, [1, 2])


def test_embed_gives_unit_float32_rows(backend):
    vectors = backend.embed(["one text", "another, longer text"])
    assert vectors.dtype == np.float32 and vectors.shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_lora_gradients_give_one_vector_per_example(backend):
    def numpy(vector):
        return vector.numpy() if hasattr(vector, "numpy") else np.asarray(vector)

    gradients = backend.lora_gradients(PROMPTS, RESPONSES, rank=4, seed=0, dimension=64)
    projected = [numpy(v) for v in gradients]
    assert [v.shape for v in projected] == [(64,)] * 3 and all(v.dtype == np.float32 for v in projected)
    assert len(gradients.norms) == 3 and all(n > 0 for n in gradients.norms)
    assert gradients.target_modules
    full = backend.lora_gradients(PROMPTS, RESPONSES, rank=4, seed=0)
    vectors = [numpy(v) for v in full]
    assert [v.shape for v in vectors] == [(full.gradient_dimension,)] * 3
    np.testing.assert_allclose([np.linalg.norm(v.astype(np.float64)) for v in vectors], full.norms, rtol=1e-5)
    blocks = backend.lora_gradients(PROMPTS, RESPONSES, rank=4, seed=0, blocks=True)
    first = next(iter(blocks))
    np.testing.assert_allclose(np.concatenate([numpy(b).reshape(-1) for b in first]), vectors[0], rtol=1e-6)
    blocks.close()
