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
    """A greedy answer: its text (stop tokens removed, decoded without special tokens), and for
    every token the model chose (up to and including the stop token) its id and probability;
    ``stopped`` says the last token is a stop token (else the answer reached its length limit);
    ``not_answer_ids`` are the ids the confidence leaves out (see :func:`answer_confidence`)."""

    text: str
    token_probabilities: np.ndarray
    token_ids: np.ndarray
    not_answer_ids: Sequence[int] = ()
    stopped: bool = False

    @property
    def answer_ids(self) -> list[int]:
        """The chosen token ids without the stop token: the answer the text decodes."""
        ids = [int(t) for t in self.token_ids]
        return ids[:-1] if self.stopped else ids

    @property
    def confidence(self) -> float:
        """Mean probability of the answer tokens (0 when there are none)."""
        return answer_confidence(self.token_ids, self.token_probabilities, self.not_answer_ids)[0]


#: How :meth:`Backend.loglikelihood` runs the contexts of its requests.
SHARE_MODES = ("none", "context", "prefix")

Tokens = Sequence[int]


class Backend(Protocol):
    """The model interface: batches of requests in, arrays out (lm-evaluation-harness's ``LM``).

    Every forward and backward pass tunewise makes on a model goes through one of these methods:
    scoring (indicators), evaluation (:mod:`tunewise.training.evaluate`), the in-context proxy
    (:mod:`tunewise.weights.proxy`) and CoS-Low (:mod:`tunewise.efficiency.coslow`). The one
    exception is fine-tuning, whose forward and backward passes are TRL's ``SFTTrainer``'s own
    (:mod:`tunewise.training.finetune`); it encodes its examples with the same
    :mod:`tunewise.model.chat` as every method here. Chat rendering, tokenisation, padding,
    truncation and stop tokens live in :mod:`tunewise.model.chat`; the padding-free layouts in
    :mod:`tunewise.model.packed`. Implementations: :class:`tunewise.model.hf.HFBackend`
    (transformers, CPU or GPU) and :class:`tunewise.model.fake.FakeBackend` (tests, no torch).

    Units: token ids are ints of the model's tokenizer; log-probabilities are natural logs in
    float32, one per scored token; probabilities are in (0, 1]. Results always come back in
    input order and, unless a method says otherwise, do not depend on how the batch is split
    (``max_batch_tokens`` bounds rows × padded width of one forward pass; None: the backend's
    own budget). ``progress(done, total)`` is called after every forward batch.

    ``fingerprint`` identifies weights, dtype and chat template (the scores cache keys on it);
    ``max_new_tokens`` is the confidence's answer length.
    """

    fingerprint: str
    max_new_tokens: int

    def encode(self, prompts: Sequence[Messages], responses: Sequence[str | None],
               sources: Sequence | None = None) -> list[EncodedExample]:
        """Tokenise prompts with the chat template (and generation prompt) and responses as plain
        continuations, one :class:`EncodedExample` per prompt; ``sources`` (one example per
        prompt) are named in a chat-template error."""

    def score_batch(self, batch: Sequence[EncodedExample], wanted: set[str]) -> dict[str, list]:
        """One batch of encoded examples through the model: a list of ``len(batch)`` values per
        wanted output of ``MODEL_OUTPUTS`` (``loss``, ``loss_unconditional``: mean negative log
        likelihood per response token, None without a response; ``confidence``: mean probability
        of the greedy answer's tokens, ``confidence_ppl`` their perplexity, over at most
        ``max_new_tokens``; ``embedding``: float32 unit vector of the hidden size)."""

    def loglikelihood(self, requests: Sequence[tuple[Tokens, Tokens]], *, share: str = "none",
                      max_batch_tokens: int | None = None, progress=None) -> list[np.ndarray]:
        """Per request ``(context, continuation)``, the log-probability of each continuation
        token given the context and the continuation's earlier tokens: a float32 array of
        ``len(continuation)``. The context needs at least one token (with ``share="context"``,
        the continuation too).

        ``share`` says what runs once: ``"none"``, every request is its own sequence (a value
        then never depends on its batch, :func:`tunewise.model.packed.sequence_logprobs`);
        ``"context"``, requests with equal contexts run it once with their continuations side by
        side (the choices of one item, :func:`tunewise.model.packed.shared_prefix_logprobs`);
        ``"prefix"``, the longest token prefix all contexts share
        (:func:`tunewise.model.packed.shared_prefix_length`) runs once and its KV cache is reused
        by every request (demonstrations before anchors). All three agree to float rounding.
        """

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | None = None) -> list[Generation]:
        """Greedy answers to chat prompts (rendered as :meth:`encode` renders them), at most
        ``max_new_tokens`` tokens each (None: the backend's ``max_new_tokens``)."""

    def generate_tokens(self, prompts: Sequence[Tokens], max_new_tokens: int | Sequence[int], *,
                        share_prefix: bool = False, max_batch_tokens: int | None = None,
                        progress=None) -> list[Generation]:
        """Greedy answers to already tokenised prompts: row r stops after its first stop token
        (:func:`tunewise.model.chat.stop_token_ids`) or its ``max_new_tokens[r]``-th token (one
        limit for all when an int), whatever else shares its batch. ``share_prefix`` runs the
        prompts' common token prefix once and decodes every row on top of its KV cache."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised last hidden states of plain texts (no chat template):
        float32, ``(len(texts), hidden size)``."""

    def lora_gradients(self, prompts: Sequence[Messages], responses: Sequence[str], *, rank: int = 64,
                       alpha: int = 32, seed: int = 0, include_eos: bool = False, dimension: int | None = None,
                       blocks: bool = False, sources: Sequence[str] | None = None,
                       max_batch_tokens: int | None = None):
        """Per example, the gradient of its answer loss (mean cross-entropy over the answer
        tokens, :func:`tunewise.model.chat.gradient_example`) with respect to the ``lora_B``
        matrices of a fresh, seeded LoRA adapter (rank, alpha; B = 0): an iterator, one example at
        a time, of float32 CPU vectors (the full concatenated gradient, or with ``dimension`` its
        seeded projection to that many numbers), closed with ``close()``. It also carries
        ``norms`` (exact L2 norm of each full gradient), ``gradient_dimension`` and
        ``target_modules``; see :class:`tunewise.model.gradients.LoraGradients`. Examples may
        share forward and backward passes of about ``max_batch_tokens`` tokens (None: the
        backend's default); the values do not depend on it beyond float rounding. The model is
        left as it was found."""


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
