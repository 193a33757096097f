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
    """A greedy answer and the probability of each token the model chose."""

    text: str
    token_probabilities: np.ndarray

    @property
    def confidence(self) -> float:
        return float(self.token_probabilities.mean()) if self.token_probabilities.size else float("nan")


class Backend(Protocol):
    """What scoring needs from a model. ``fingerprint`` identifies weights, dtype and template."""

    fingerprint: str
    max_new_tokens: int

    def encode(self, prompts: Sequence[Messages], responses: Sequence[str | None]) -> list[EncodedExample]:
        """Tokenise prompts with the chat template and responses as plain continuations."""

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
