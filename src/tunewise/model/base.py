"""The model backend interface: batches in, arrays out (the lm-evaluation-harness ``LM`` shape)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from tunewise.indicators.registry import MODEL_OUTPUTS as _REGISTRY_MODEL_OUTPUTS

Messages = Sequence[dict]

# What one scoring pass can produce (``score_batch`` computes only what is asked for): re-exported
# from the indicator registry, which owns the list.
MODEL_OUTPUTS = _REGISTRY_MODEL_OUTPUTS
# Longest greedy answer a confidence is taken over: paper A's ``max_new_tokens=30``
# (r-three/dataefficiency utils/calculate_coslow.py:39).
CONFIDENCE_NEW_TOKENS = 30


def answer_confidence(token_ids, probabilities, not_answer_ids) -> tuple[float, float]:
    """Confidence of one greedy answer: ``(mean probability, perplexity)`` over its answer tokens.

    Parameters
    ----------
    token_ids, probabilities:
        The tokens the model chose, in order, up to and including the token that stopped it,
        and the probability it gave each (same length).
    not_answer_ids:
        Ids that are not part of the answer: :func:`tunewise.model.chat.answer_mask_ids` and the
        stop tokens. Every position holding one is left out, wherever it occurs.

    Paper A (r-three/dataefficiency ``utils/calculate_coslow.py``) masks these ids from the
    generated answer (``:183``, ``mask_non_answer_tokens`` ``:52-69``), then takes the mean of the
    top probability at the remaining positions, which is the chosen token's under greedy decoding
    (``avg_confidence``, ``:149-153``), and ``exp`` of the mean negative log-likelihood of the same
    tokens (``ppl``, ``:159``).

    An answer with no answer token (only stop or newline tokens) gets confidence 0 (the model gave
    no answer to be sure of; any real answer's mean probability is above 0, so 0 marks exactly
    these) and perplexity NaN. Paper A's mean is NaN there, which leaves the example out of every
    decile; :func:`tunewise.efficiency.coslow.lowest_confidence_prompts` leaves 0 out likewise,
    while the selectors and the task means read it as "not confident".
    """
    tokens = np.asarray(token_ids)
    chosen = np.asarray(probabilities, dtype=np.float64)
    keep = ~np.isin(tokens, np.asarray(list(not_answer_ids), dtype=tokens.dtype if tokens.size else np.int64))
    if not keep.any():
        return 0.0, float("nan")
    kept = chosen[keep]
    return float(kept.mean()), float(np.exp(-np.log(kept).mean()))


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of a rendered prompt (chat template + generation prompt) and of its response."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...] | None

    @property
    def prompt_length(self) -> int:
        return len(self.prompt_ids)

    @property
    def response_length(self) -> int:
        return 0 if self.response_ids is None else len(self.response_ids)


@dataclass
class Generation:
    """A greedy answer: its text (stop tokens removed), and for every token the model chose (up
    to and including the stop token) its id and probability; ``not_answer_ids`` are the ids the
    confidence leaves out (see :func:`answer_confidence`)."""

    text: str
    token_probabilities: np.ndarray
    token_ids: np.ndarray
    not_answer_ids: Sequence[int] = ()

    @property
    def confidence(self) -> float:
        """Mean probability of the answer tokens (0 when there are none)."""
        return answer_confidence(self.token_ids, self.token_probabilities, self.not_answer_ids)[0]


class Backend(Protocol):
    """What scoring needs from a model. ``fingerprint`` identifies weights, dtype and template."""

    fingerprint: str
    max_new_tokens: int

    def encode(self, prompts: Sequence[Messages], responses: Sequence[str | None],
               sources: Sequence | None = None) -> list[EncodedExample]:
        """Tokenise prompts with the chat template and responses as plain continuations;
        ``sources`` (one example per prompt) are named in a chat-template error."""

    def score_batch(self, batch: Sequence[EncodedExample], wanted: set[str]) -> dict[str, list]:
        """One batch through the model; returns a list per wanted output of ``MODEL_OUTPUTS``."""

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int) -> list[Generation]:
        """Greedy answers with per-token probabilities."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised last hidden states, one row per text."""


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int = 256) -> list[list[int]]:
    """Group example positions so that rows × longest row ≤ ``max_batch_tokens``.

    Positions are sorted by length (longest first, stable) so rows in a batch have similar
    lengths and padding stays small; an example longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for position in order:
        length = max(1, lengths[position])
        candidate_longest = max(longest, length)
        if current and (candidate_longest * (len(current) + 1) > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, candidate_longest = [], length
        current.append(position)
        longest = candidate_longest
    if current:
        batches.append(current)
    return batches
