"""model/chat.py: the one tokenisation, and the ids paper A masks out of an answer.

Paper A's ``mask_non_answer_tokens`` (r-three/dataefficiency utils/calculate_coslow.py:52-69)
lists the ids per model family; tunewise derives them from the tokenizer. The Llama-3-style and
Qwen-style tokenizers here are built in code with those families' special-token ids, byte-level
alphabet and chat templates, so the derivation is checked against the paper's exact lists.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import require_smollm2
from tunewise.errors import TunewiseError
from tunewise.model.base import Generation, answer_confidence
from tunewise.model.chat import (
    IGNORE_INDEX,
    answer_labels,
    answer_mask_ids,
    encode_example,
    encode_prompt,
    encode_prompts,
    end_of_turn_id,
    pad_batch,
    pad_token_id,
    render_chat,
    stop_token_ids,
)

# Paper A's lists, calculate_coslow.py:59-64.
PAPER_MASK_IDS = {"smollm": {0, 2, 198}, "llama": {271, 128009}, "qwen": {151643, 151645, 198}}

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' + 'Cutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n' + '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba "
    "Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def byte_level_tokenizer(vocab_size: int, specials: dict[int, str], template: str, **roles):
    """A GPT-2-style byte-level BPE whose first 256 ids are the byte alphabet in GPT-2's order
    (so "\\n" is 198, as in SmolLM2, Llama-3 and Qwen2.5), one merge "\\n\\n" at id 271 (as in
    Llama-3), placeholders up to ``vocab_size``, and ``specials`` at their families' ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    vocabulary = {symbol: i for i, symbol in enumerate(alphabet)}
    vocabulary["ĊĊ"] = 271
    for token_id in range(len(alphabet), vocab_size):
        if token_id != 271:
            vocabulary[specials.get(token_id, f"<placeholder_{token_id}>")] = token_id
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[("Ċ", "Ċ")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True) for token in specials.values()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def llama3_tokenizer():
    specials = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128004: "<|finetune_right_pad_id|>",
                128006: "<|start_header_id|>", 128007: "<|end_header_id|>", 128008: "<|eom_id|>",
                128009: "<|eot_id|>"}
    # Llama-3.1-Instruct: eos is <|eot_id|>; no pad and no unknown token.
    return byte_level_tokenizer(128256, specials, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>",
                                eos_token="<|eot_id|>")


@pytest.fixture(scope="module")
def qwen_tokenizer():
    specials = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}
    # Qwen2.5-Instruct: eos <|im_end|>, pad <|endoftext|>, no bos and no unknown token.
    return byte_level_tokenizer(151646, specials, QWEN25_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


# -- the ids paper A masks ---------------------------------------------------------------------------


def test_the_built_tokenizers_have_their_families_ids(llama3_tokenizer, qwen_tokenizer):
    for tokenizer in (llama3_tokenizer, qwen_tokenizer):
        assert tokenizer("\n", add_special_tokens=False)["input_ids"] == [198]
    assert llama3_tokenizer("\n\n", add_special_tokens=False)["input_ids"] == [271]
    assert llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>") == 128009
    assert qwen_tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645


def test_llama3_masks_paper_a_ids(llama3_tokenizer):
    assert answer_mask_ids(llama3_tokenizer) == PAPER_MASK_IDS["llama"]
    assert end_of_turn_id(llama3_tokenizer) == 128009
    # No pad token: padding falls back to eos, which every padded position masks anyway.
    assert pad_token_id(llama3_tokenizer) == 128009


def test_qwen_masks_paper_a_ids(qwen_tokenizer):
    assert answer_mask_ids(qwen_tokenizer) == PAPER_MASK_IDS["qwen"]
    assert end_of_turn_id(qwen_tokenizer) == 151645


@pytest.mark.real
def test_smollm2_masks_paper_a_ids():
    require_smollm2()
    from transformers import AutoTokenizer

    from tunewise.model.load import SMOLLM2_GGUF, smollm2_package_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_package_dir(), gguf_file=SMOLLM2_GGUF)
    assert answer_mask_ids(tokenizer) == PAPER_MASK_IDS["smollm"]
    assert end_of_turn_id(tokenizer) == 2


def test_stop_tokens_add_the_generation_configs_eos_ids(llama3_tokenizer):
    class GenerationConfig:
        eos_token_id = [128001, 128008, 128009]

    assert stop_token_ids(llama3_tokenizer) == {128009}
    assert stop_token_ids(llama3_tokenizer, GenerationConfig()) == {128001, 128008, 128009}
    # Newlines end no answer; they are only left out of its confidence.
    assert 271 not in stop_token_ids(llama3_tokenizer, GenerationConfig())


def test_answer_labels_mask_every_occurrence_and_keep_what_is_asked():
    labels = [IGNORE_INDEX, IGNORE_INDEX, 5, 198, 6, 2]
    assert answer_labels(labels, {0, 2, 198}) == [IGNORE_INDEX] * 2 + [5, IGNORE_INDEX, 6, IGNORE_INDEX]
    assert answer_labels(labels, {0, 2, 198}, keep=(2,)) == [IGNORE_INDEX] * 2 + [5, IGNORE_INDEX, 6, 2]


# -- encoding --------------------------------------------------------------------------------------


def test_encode_example_appends_the_end_of_turn_token_and_masks_the_prompt(llama3_tokenizer):
    prompt = [{"role": "user", "content": "Is 2 + 2 = 4?"}]
    encoded = encode_example(llama3_tokenizer, prompt, "True")
    prompt_ids = encode_prompt(llama3_tokenizer, prompt)
    answer = llama3_tokenizer("True", add_special_tokens=False)["input_ids"]
    assert prompt_ids[-2:] == [128007, 271]  # <|end_header_id|> "\n\n": the answer starts after them
    assert encoded.input_ids == prompt_ids + answer + [128009]
    assert encoded.labels == [IGNORE_INDEX] * len(prompt_ids) + answer + [128009]
    assert encoded.completion_tokens == len(answer) + 1 and not encoded.truncated
    cut = encode_example(llama3_tokenizer, prompt, "True", max_length=len(prompt_ids) + 1)
    assert cut.truncated and cut.input_ids == prompt_ids + answer[:1]
    # The rendered prompt is what the template writes, tokenised without extra special tokens.
    assert llama3_tokenizer.decode(prompt_ids).startswith("<|begin_of_text|><|start_header_id|>system")
    assert prompt_ids.count(128000) == 1


def test_batched_prompts_equal_one_at_a_time(qwen_tokenizer):
    prompts = [[{"role": "user", "content": text}] for text in ("a", "bb\n\ncc", "ünï ✓")]
    assert encode_prompts(qwen_tokenizer, prompts) == [encode_prompt(qwen_tokenizer, p) for p in prompts]
    assert encode_prompts(qwen_tokenizer, []) == []


def test_a_template_error_is_a_tunewise_error(qwen_tokenizer):
    from tunewise.model.load import build_tiny_tokenizer

    strict = build_tiny_tokenizer()
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(TunewiseError, match="System role not supported") as raised:
        render_chat(strict, [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    assert raised.value.field == "prompt"
    strict.chat_template = None
    with pytest.raises(TunewiseError, match="no chat template"):
        encode_prompt(strict, [{"role": "user", "content": "y"}])


def test_pad_batch_left_and_right():
    torch = pytest.importorskip("torch")
    ids, mask = pad_batch([[1, 2, 3], [4], []], 0, "left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = pad_batch([[1, 2, 3], [4]], 9, "right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch([[]], 0)[0].shape == torch.Size([1, 1])


# -- confidence over the answer tokens (hand-computed) -----------------------------------------------


def test_confidence_leaves_out_stop_and_newline_tokens():
    answer, newline, end = 5, 198, 2
    tokens = [answer, newline, answer + 1, end]
    probabilities = [0.40, 0.90, 0.60, 0.95]
    mean, perplexity = answer_confidence(tokens, probabilities, {0, end, newline})
    assert mean == pytest.approx((0.40 + 0.60) / 2)
    assert perplexity == pytest.approx(math.exp(-(math.log(0.40) + math.log(0.60)) / 2))
    # Before the fix every token counted, the stop token included: 0.7125 instead of 0.5.
    assert answer_confidence(tokens, probabilities, set())[0] == pytest.approx((0.40 + 0.90 + 0.60 + 0.95) / 4)
    # The review's example: p(answer) = 0.40, p(<|im_end|>) = 0.95 read as 0.675, now 0.40.
    assert answer_confidence([answer, end], [0.40, 0.95], {end})[0] == pytest.approx(0.40)
    assert answer_confidence([answer, end], [0.40, 0.95], set())[0] == pytest.approx(0.675)


def test_an_answer_without_answer_tokens_has_no_confidence():
    mean, perplexity = answer_confidence([198, 2], [0.5, 0.9], {2, 198})
    assert mean == 0.0 and math.isnan(perplexity)
    generation = Generation("", np.array([0.5, 0.9]), np.array([198, 2]), (2, 198))
    assert generation.confidence == 0.0
    assert Generation("x", np.array([0.3, 0.9]), np.array([7, 2]), (2,)).confidence == pytest.approx(0.3)


# -- the same tokens everywhere (house.md 3.4 item 6) ------------------------------------------------


@pytest.mark.integration
def test_loss_indicator_finetune_and_coslow_see_the_same_tokens():
    """The loss indicator scores the response tokens, the fine-tune learns them and the end token,
    CoS-Low's gradient takes them without the ids paper A masks: one encoding underneath."""
    pytest.importorskip("torch")
    from tunewise.model.chat import gradient_example
    from tunewise.model import load_backend

    backend = load_backend("tiny-random", device="cpu", dtype="fp32")
    tokenizer = backend.tokenizer
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two colours?"}]
    response = "Blue.\nGreen."
    (scored,) = backend.encode([prompt], [response])
    trained = encode_example(tokenizer, prompt, response)
    gradient_ids, gradient_labels = gradient_example(tokenizer, prompt, response)

    end = end_of_turn_id(tokenizer)
    assert trained.input_ids == [*scored.prompt_ids, *scored.response_ids, end]
    assert gradient_ids == trained.input_ids
    # The loss indicator's targets are the fine-tune's labels without the end token.
    assert [t for t in trained.labels if t != IGNORE_INDEX] == [*scored.response_ids, end]
    # CoS-Low's targets are the same positions with the newline and the end token masked.
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    assert newline in scored.response_ids
    assert gradient_labels == [IGNORE_INDEX if t in (newline, end) else t for t in trained.labels]
    keep_end = gradient_example(tokenizer, prompt, response, include_eos=True)[1]
    assert keep_end == [IGNORE_INDEX if t == newline else t for t in trained.labels]
