"""The one place where examples become tokens: chat rendering, tokenisation, padding, stop tokens.

Scoring (:mod:`tunewise.model.hf`), fine-tuning (:mod:`tunewise.training.finetune`), evaluation
(:mod:`tunewise.training.evaluate`), CoS-Low (:mod:`tunewise.efficiency.coslow`) and the
in-context proxy (:mod:`tunewise.weights.proxy`) all encode here, so the tokens a loss, a
confidence or a gradient is computed over are the same wherever it is computed.

The rules, and where they come from:

- The prompt is the chat template rendered with the generation prompt, tokenised *without*
  adding special tokens (the template already holds them), as paper A's code tokenises its
  rendered ``input_text`` (r-three/dataefficiency ``utils/calculate_coslow.py:24, 226``).
- The response is tokenised on its own and appended to the prompt's ids. Paper A tokenises
  prompt + answer as one string and masks the first ``len(prompt)`` ids (``:228-230``); the two
  agree whenever the template ends in a newline or a special token, which every chat template
  we know does, and appending keeps the prompt's ids fixed by construction.
- :func:`answer_mask_ids` are the ids paper A's ``mask_non_answer_tokens`` (``:52-69``) removes
  from the answer before a confidence or a gradient is taken: end, padding and end-of-turn
  tokens and the template's bare newline token, derived from the tokenizer rather than listed
  per model family.

Importing this module does not import torch; the padding helpers import it when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from tunewise.errors import TunewiseError

IGNORE_INDEX = -100
Messages = Sequence[dict]

# Sentinels used to find what the chat template writes around a turn (never shown to a model).
_SENTINEL_QUESTION = "tunewise sentinel question"
_SENTINEL_ANSWER = "tunewise sentinel answer"


# -- rendering and tokenisation -------------------------------------------------------------------


def render_chat(tokenizer, messages: Messages, add_generation_prompt: bool = True, *, source=None) -> str:
    """The conversation rendered with the tokenizer's chat template, as text.

    ``source`` is where the record came from, named in the error: an
    :class:`~tunewise.data.pool.Example` (its file and line when the pool reader recorded them,
    else its id), a ``(file, line)`` pair, or a description.

    Raises :class:`TunewiseError` when the tokenizer has no chat template or the template
    refuses the conversation (``raise_exception`` for two user turns in a row, a system turn it
    forbids, a missing key): the message names ``source``, quotes the template's own message and
    suggests the fix.
    """
    from jinja2 import TemplateError

    if getattr(tokenizer, "chat_template", None) is None:
        file, line, where = _where(source)
        raise TunewiseError(f"{where}the tokenizer has no chat template", file=file, line=line, field="model",
                            fix="use an instruct model whose tokenizer defines a chat template")
    turns = [dict(turn) for turn in messages]
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
    # Templates refuse conversations through raise_exception (a TemplateError) or by failing on a
    # missing key or an unexpected role.
    except (TemplateError, ValueError, TypeError, KeyError, IndexError) as error:
        file, line, where = _where(source)
        raise TunewiseError(
            f"{where}the model's chat template cannot render this conversation ({_roles(turns)}): "
            f"{type(error).__name__}: {error}",
            file=file, line=line, field="prompt", fix=_fix_for(turns, str(error)),
        ) from None


def _where(source) -> tuple[str | None, int | None, str]:
    """(file, line, text prefix) for an error, from whatever ``source`` was given."""
    if source is None:
        return None, None, ""
    if isinstance(source, str):
        return None, None, f"{source}: "
    if isinstance(source, tuple) and len(source) == 2:
        return str(source[0]), source[1], ""
    location = getattr(source, "location", None)
    if location:
        return str(location[0]), location[1], ""
    example_id = getattr(source, "id", None)
    return None, None, f"example {example_id}: " if example_id else f"{source}: "


def _roles(turns: Sequence[dict]) -> str:
    return "roles " + " → ".join(str(turn.get("role")) for turn in turns)


def _fix_for(turns: Sequence[dict], message: str) -> str:
    """The likely fix, read from the conversation's shape, then from the template's message."""
    roles = [turn.get("role") for turn in turns]
    repeated = next((role for first, role in zip(roles, roles[1:]) if first == role), None)
    lowered = message.lower()
    if repeated is not None or "alternate" in lowered:
        return (f"merge consecutive '{repeated or 'same-role'}' turns into one (this template requires "
                "user and assistant turns to alternate), or use a model whose template allows it")
    if "system" in roles and "system" in lowered:
        return "fold the system message into the first user turn, or use a model whose template accepts system turns"
    if roles and roles[0] != "user" and ("user" in lowered or "start" in lowered or "first" in lowered):
        return "start the conversation with a user turn"
    return ("check the example's roles (user/assistant/system) and their order, or use a model whose "
            "template accepts them")


def encode_prompts(tokenizer, prompts: Sequence[Messages], sources: Sequence | None = None) -> list[list[int]]:
    """Token ids of each prompt as the model sees it before answering (template + generation prompt);
    ``sources`` (one per prompt, see :func:`render_chat`) name the record in a template error."""
    sources = sources if sources is not None else [None] * len(prompts)
    texts = [render_chat(tokenizer, prompt, source=source) for prompt, source in zip(prompts, sources)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def encode_prompt(tokenizer, messages: Messages, source=None) -> list[int]:
    """Token ids of one prompt (see :func:`encode_prompts`)."""
    return encode_prompts(tokenizer, [messages], [source])[0]


def encode_responses(tokenizer, responses: Sequence[str]) -> list[list[int]]:
    """Token ids of each response as a plain continuation (no special tokens)."""
    if not responses:
        return []
    return [list(ids) for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class EncodedExample:
    """One labelled example as tokens: ``labels`` equal ``input_ids`` on the response and its end
    token and are ``IGNORE_INDEX`` (-100) on the prompt; ``truncated`` says the cap cut it."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    # The length before the cut (prompt + response + end token).
    full_length: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_example(tokenizer, messages: Messages, response: str, max_length: int | None = None,
                   prompt_ids: Sequence[int] | None = None, source=None) -> EncodedExample:
    """Prompt (masked) + response + the end-of-turn token, cut at ``max_length`` tokens.

    Fine-tuning learns every labelled token, the end token included (the model must learn to
    stop). The loss indicator scores the response tokens, i.e. these labels without the final
    end token; CoS-Low takes :func:`answer_labels` of these labels. ``prompt_ids`` may pass the
    prompt already encoded by :func:`encode_prompts` (a batch is tokenised at once).
    """
    prompt = list(prompt_ids) if prompt_ids is not None else encode_prompt(tokenizer, messages, source)
    answer = encode_responses(tokenizer, [response])[0] + [end_of_turn_id(tokenizer)]
    input_ids = prompt + answer
    labels = [IGNORE_INDEX] * len(prompt) + answer
    if max_length is None or len(input_ids) <= max_length:
        return EncodedExample(input_ids, labels, False, len(input_ids))
    return EncodedExample(input_ids[:max_length], labels[:max_length], True, len(input_ids))


def answer_labels(labels: Sequence[int], mask_ids, keep: Sequence[int] = ()) -> list[int]:
    """``labels`` with every id of ``mask_ids`` (except those in ``keep``) set to ``IGNORE_INDEX``.

    Paper A's ``mask_non_answer_tokens`` (``calculate_coslow.py:66-67``): every position whose
    label is one of the ids is masked, wherever it occurs in the answer.
    """
    dropped = set(mask_ids) - set(keep)
    return [IGNORE_INDEX if label in dropped else label for label in labels]



def gradient_example(tokenizer, prompt: Messages, response: str, include_eos: bool = False,
                     source=None) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example's CoS-Low loss (:mod:`tunewise.model.gradients`).

    The tokens are the fine-tune's (:func:`encode_example`: prompt, response, end-of-turn token);
    the labels keep the answer tokens only, masking every id of :func:`answer_mask_ids` (end,
    padding, end-of-turn, bare newline), as paper A's ``mask_non_answer_tokens`` does before the
    backward pass (r-three/dataefficiency ``utils/calculate_coslow.py:229-232``). ``include_eos``
    keeps the end-of-turn token. Paper A feeds no end token at all; one that is fed but masked
    changes nothing, as no earlier position attends to it.
    """
    encoded = encode_example(tokenizer, prompt, response, source=source)
    keep = (end_of_turn_id(tokenizer),) if include_eos else ()
    return encoded.input_ids, answer_labels(encoded.labels, answer_mask_ids(tokenizer), keep=keep)

# -- special tokens -------------------------------------------------------------------------------


def pad_token_id(tokenizer) -> int:
    """The id used to fill padded positions: the tokenizer's pad, else its eos, else 0.

    Padded positions are always masked out of attention and loss, so the value only has to be a
    valid id; Llama-3 tokenizers define no pad token.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>`` …), found by rendering a turn; the eos token when the template shows none."""
    ids = _template_token_ids(tokenizer)
    if ids.end_of_turn is not None:
        return ids.end_of_turn
    if tokenizer.eos_token_id is None:
        raise TunewiseError("the tokenizer has no end-of-sequence token and its chat template closes no turn "
                            "with a special token", field="model", fix="use a tokenizer that defines eos_token")
    return int(tokenizer.eos_token_id)


def stop_token_ids(tokenizer, generation_config=None) -> frozenset[int]:
    """Token ids that end a greedy answer.

    The end tokens of :func:`answer_mask_ids` (eos, pad, unknown/end-of-text, end-of-turn), plus
    every eos id the model's ``generation_config`` names (Llama-3.1 lists three). Paper A stops
    at the tokenizer's eos alone (``calculate_coslow.py:41``); for chat models that is the
    end-of-turn token, so the two stop at the same place on any answer that ends its turn.
    """
    stops = set(_template_token_ids(tokenizer).end_tokens)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        stops.add(configured)
    elif configured:
        stops.update(int(token) for token in configured if token is not None)
    return frozenset(stops)


def answer_mask_ids(tokenizer) -> frozenset[int]:
    """The token ids that are not part of an answer, derived from the tokenizer.

    Paper A's ``mask_non_answer_tokens`` (r-three/dataefficiency ``utils/calculate_coslow.py:52-69``)
    lists them per model family: SmolLM ``[0, 2, 198]`` (``<|endoftext|>``, ``<|im_end|>``,
    ``\\n``), Llama-3 ``[271, 128009]`` (``\\n\\n``, ``<|eot_id|>``), Qwen ``[151643, 151645, 198]``
    (``<|endoftext|>``, ``<|im_end|>``, ``\\n``). The rule that reproduces all three:

    - the tokenizer's eos and pad ids;
    - its unknown-token id: paper A sets the pad token to ``<|finetune_right_pad_id|>``
      (``:209, :310``), a name SmolLM's vocabulary lacks, which transformers maps to the unknown
      token, ``<|endoftext|>`` (id 0) there;
    - the end-of-turn token: the first special token the chat template writes after an
      assistant's content;
    - the template's bare newline token(s): whitespace-only tokens the template writes around a
      turn (ChatML's ``\\n`` after ``<|im_start|>assistant`` and after ``<|im_end|>``; Llama-3's
      ``\\n\\n`` after ``<|end_header_id|>``). This is why the newline id differs by family.

    Not reproduced: Mistral's ``[2, 29473]``, whose 29473 is a lone ``▁`` the model emits before
    its answer rather than anything the template writes; Mistral's eos (2) is found.
    """
    ids = _template_token_ids(tokenizer)
    return frozenset(ids.end_tokens | ids.newline_tokens)


@dataclass(frozen=True)
class _TemplateTokens:
    end_of_turn: int | None
    end_tokens: frozenset[int]
    newline_tokens: frozenset[int]


def _template_token_ids(tokenizer) -> _TemplateTokens:
    # Tokenizers are not hashable in general; the cache is keyed by identity and template text.
    return _template_token_ids_cached(_TokenizerKey(tokenizer))


class _TokenizerKey:
    __slots__ = ("tokenizer", "key")

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.key = (id(tokenizer), getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id,
                    tokenizer.pad_token_id, getattr(tokenizer, "unk_token_id", None), len(tokenizer))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _TokenizerKey) and self.key == other.key and self.tokenizer is other.tokenizer


@lru_cache(maxsize=32)
def _template_token_ids_cached(key: _TokenizerKey) -> _TemplateTokens:
    tokenizer = key.tokenizer
    special = _special_ids(tokenizer)
    question = [{"role": "user", "content": _SENTINEL_QUESTION}]
    try:
        prompt = render_chat(tokenizer, question, add_generation_prompt=True)
        turn = render_chat(tokenizer, question + [{"role": "assistant", "content": _SENTINEL_ANSWER}],
                           add_generation_prompt=False)
    except TunewiseError:
        prompt = turn = None
    if prompt is None or _SENTINEL_QUESTION not in prompt or _SENTINEL_ANSWER not in turn:
        # No usable template: the end tokens alone, and "\n" when it is a single token.
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        newlines = frozenset(newline) if len(newline) == 1 else frozenset()
        end_of_turn, tails = None, []
    else:
        prompt_tail = prompt[prompt.rindex(_SENTINEL_QUESTION) + len(_SENTINEL_QUESTION):]
        answer_tail = turn[turn.rindex(_SENTINEL_ANSWER) + len(_SENTINEL_ANSWER):]
        tails = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (prompt_tail, answer_tail)]
        end_of_turn = next((token for token in tails[1] if token in special), None)
        newlines = frozenset(token for tail in tails for token in tail
                             if token not in special and _is_whitespace_token(tokenizer, token))
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id, getattr(tokenizer, "unk_token_id", None), end_of_turn}
    return _TemplateTokens(end_of_turn, frozenset(int(t) for t in ends if t is not None), newlines)


def _special_ids(tokenizer) -> set[int]:
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            special.add(int(token_id))
    return special


def _is_whitespace_token(tokenizer, token_id: int) -> bool:
    text = tokenizer.decode([token_id])
    return bool(text) and not text.strip()


# -- padding --------------------------------------------------------------------------------------


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right", device=None):
    """Pad token sequences to the longest one: ``(ids, attention_mask)`` long tensors, rows × width.

    ``side="left"`` aligns every row's last token in the last column (generation and the prompt
    pass); ``"right"`` aligns first tokens (teacher-forced losses). An empty sequence is a row of
    padding with a zero mask; the width is at least 1.
    """
    import torch

    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    width = max(1, max((len(s) for s in sequences), default=0))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if not len(sequence):
            continue
        columns = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        ids[row, columns] = torch.as_tensor(list(sequence), dtype=torch.long)
        mask[row, columns] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def pad_examples(encoded: Sequence[EncodedExample], pad_id: int, device=None):
    """Right-pad encoded examples: ``(input_ids, attention_mask, labels)`` tensors, labels -100 on padding."""
    ids, mask = pad_batch([e.input_ids for e in encoded], pad_id, "right", device)
    labels, _ = pad_batch([e.labels for e in encoded], IGNORE_INDEX, "right", device)
    return ids, mask, labels


__all__ = [
    "IGNORE_INDEX", "EncodedExample", "answer_labels", "answer_mask_ids", "encode_example", "encode_prompt",
    "encode_prompts", "encode_responses", "end_of_turn_id", "gradient_example", "pad_batch", "pad_examples",
    "pad_token_id",
    "render_chat", "stop_token_ids",
]
