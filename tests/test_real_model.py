"""The bundled SmolLM2 on real GSM8K examples: indicators against an independent computation.

The reference renders each prompt with the chat template, runs the full sequence through
``model(ids).logits`` one example at a time (loss; the response alone after the begin-of-text
token for IFD), and answers greedily with ``model.generate`` for confidence.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_shared_data, require_smollm2
from tunewise.data.pool import parse_record
from tunewise.indicators.score import score_pool

pytestmark = pytest.mark.real

MAX_NEW_TOKENS = 16
EXAMPLES = 4
SMOLLM_MASK_IDS = (0, 2, 198)  # <|endoftext|>, <|im_end|>, "\n"


@pytest.fixture(scope="module")
def gsm8k_examples():
    path = require_shared_data("gsm8k", "train.jsonl")
    with path.open(encoding="utf-8") as handle:
        records = [json.loads(next(handle)) for _ in range(EXAMPLES)]
    return [parse_record(record) for record in records]


@pytest.fixture(scope="module")
def smollm2():
    require_smollm2()
    from tunewise.model import load_backend

    return load_backend("smollm2", device="cpu", dtype="fp32", max_new_tokens=MAX_NEW_TOKENS)


def reference_scores(backend, example) -> dict:
    import torch

    model, tokenizer = backend.model, backend.tokenizer
    rendered = tokenizer.apply_chat_template(list(example.prompt), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def mean_nll(context, targets):
        logprobs = torch.log_softmax(model(torch.tensor([context + targets])).logits[0].double(), dim=-1)
        positions = torch.arange(len(context) - 1, len(context) + len(targets) - 1)
        return float(-logprobs[positions, torch.tensor(targets)].mean())

    stops = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    stops.update([configured] if isinstance(configured, int) else (configured or []))
    stops.update(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
                 if t in tokenizer.get_vocab())
    generated = model.generate(
        torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=sorted(s for s in stops if s is not None),
        pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True,
    )
    tokens = generated.sequences[0, len(prompt_ids):].tolist()
    probabilities = [float(torch.softmax(step[0].double(), dim=-1)[token])
                     for step, token in zip(generated.logits, tokens)]
    loss = mean_nll(prompt_ids, response_ids)
    # Paper A's mask for SmolLM (r-three/dataefficiency utils/calculate_coslow.py:61-62): the
    # confidence is the mean over the other tokens.
    answer = [p for token, p in zip(tokens, probabilities) if token not in SMOLLM_MASK_IDS]
    return {"loss": loss, "ifd": float(np.exp(loss - mean_nll([start], response_ids))),
            "confidence": float(np.mean(answer)) if answer else 0.0, "length": len(response_ids),
            "prompt_length": len(prompt_ids)}


def test_smollm2_indicators_on_gsm8k_equal_an_independent_computation(smollm2, gsm8k_examples, tmp_path):
    import torch

    scores = score_pool(gsm8k_examples, smollm2, ["loss", "ifd", "confidence", "length"], cache_dir=tmp_path)
    with torch.no_grad():
        reference = [reference_scores(smollm2, example) for example in gsm8k_examples]
    for column in ("loss", "ifd", "confidence", "length", "prompt_length"):
        np.testing.assert_allclose(scores[column].to_numpy(), [row[column] for row in reference], atol=1e-4, rtol=0,
                                   err_msg=column)
    # Sanity of the real model, not of the arithmetic: a trained model finds GSM8K answers plausible.
    assert (scores["loss"] < 3).all() and (scores["confidence"] > 0.2).all()
