"""The in-context proxy J(w) of a selection (DESIGN.md §4 step 4).

Instead of fine-tuning on a selection S(w), show the model a few of its examples as prior chat
turns and measure how well it then answers the anchor items of the tiny validation set:

    J(w) = mean over R seeded repeats of  Σ_a weight_a · score_a(demonstrations_r)

where score_a is the per-token mean log-likelihood of anchor a's gold answer (or, with
``metric="exact_match"``, whether its greedy answer is right). The demonstrations of a repeat are
drawn stratified over S(w) (one from each of d consecutive rank strata), so that they represent
the whole selection and two different selections almost always show different demonstrations;
J's spread over the repeats is reported with it (:class:`ProxyValue`). Paper D (Song et al.,
arXiv 2605.09665) describes its proxy only as "ICL signals on compact tiny-validation sets"; the
draw, the score and R, d are tunewise's.

Every anchor of a repeat sees the same demonstrations, so their rendered conversations share a
long token prefix (the chat template's system prompt, then the demonstrations). The cached
implementation runs that prefix through the model once per repeat and reuses its KV cache for
every anchor (the model interface's :meth:`~tunewise.model.base.Backend.loglikelihood` with
``share="prefix"`` and :meth:`~tunewise.model.base.Backend.generate_tokens` with ``share_prefix``).
The naive implementation runs every anchor's full conversation on its own; it exists to check the
cached one and to measure the saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunewise.weights.anchors import Anchors, anchor_estimate
from tunewise.model.chat import encode_prompts, encode_responses
from tunewise.errors import TunewiseError, did_you_mean
from tunewise.data.pool import Example

METRICS = ("log_likelihood", "exact_match")
# Room the greedy answer gets beyond the anchor's gold answer length (as tunewise.training.evaluate).
_ANSWER_MARGIN_TOKENS = 16


def in_context_conversation(demonstrations: Sequence[Example], prompt: Sequence[dict]) -> list[dict]:
    """The chat an anchor is answered in: the demonstrations as prior turns, then its prompt.

    Each demonstration contributes its prompt's user/assistant turns and its response as an
    assistant turn. System turns of the demonstrations are left out (a system message in the
    middle of a chat breaks many templates); the anchor's own system turns come first.
    """
    system = [dict(turn) for turn in prompt if turn["role"] == "system"]
    turns: list[dict] = []
    for demonstration in demonstrations:
        turns.extend(dict(turn) for turn in demonstration.prompt if turn["role"] != "system")
        turns.append({"role": "assistant", "content": demonstration.response})
    return system + turns + [dict(turn) for turn in prompt if turn["role"] != "system"]


class ProxyModel:
    """Scores anchors' gold answers after demonstrations, with a shared prefix cache or naively.

    Parameters
    ----------
    backend:
        The model interface (:class:`~tunewise.model.hf.HFBackend`; its tokenizer must have a chat
        template); its fingerprint identifies the model in the results.
    max_batch_tokens:
        Budget of one batch: rows × (shared prefix + longest own part) tokens, which bounds the
        expanded KV cache as well as the activations.
    """

    def __init__(self, backend, max_batch_tokens: int | None = None) -> None:
        self.backend = backend
        self.fingerprint = backend.fingerprint
        self.tokenizer = backend.tokenizer
        self.max_batch_tokens = max_batch_tokens or (65536 if backend.device.type == "cuda" else 8192)
        self._max_positions = getattr(backend.model.config, "max_position_embeddings", None)

    # -- tokenisation -------------------------------------------------------------------------

    def context_ids(self, demonstrations: Sequence[Example], prompts: Sequence[Sequence[dict]]) -> list[list[int]]:
        """Each prompt's whole conversation, rendered with the chat template and tokenised."""
        return encode_prompts(self.tokenizer, [in_context_conversation(demonstrations, prompt) for prompt in prompts],
                              ["an anchor after its demonstrations"] * len(prompts))

    def answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        return encode_responses(self.tokenizer, answers)

    def _check_lengths(self, lengths: Sequence[int]) -> None:
        longest = max(lengths, default=0)
        if self._max_positions is not None and longest > self._max_positions:
            raise TunewiseError(
                f"a demonstrations + anchor conversation is {longest} tokens, longer than the model's "
                f"{self._max_positions}-token context",
                field="demos", fix="use fewer demonstrations (--demos) or shorter examples",
            )

    # -- log-likelihood of the gold answers ----------------------------------------------------

    def answer_logliks(
        self, demonstrations: Sequence[Example], anchors: Sequence[Example], naive: bool = False
    ) -> np.ndarray:
        """Per-token mean log-likelihood of each anchor's gold answer after the demonstrations
        (0 for an empty answer).

        ``naive=True`` runs every anchor's full conversation on its own, without any shared
        cache; the two agree to float rounding.
        """
        contexts = self.context_ids(demonstrations, [anchor.prompt for anchor in anchors])
        answers = self.answer_ids([anchor.response for anchor in anchors])
        self._check_lengths([len(context) + len(answer) for context, answer in zip(contexts, answers)])
        logprobs = self.backend.loglikelihood(list(zip(contexts, answers)), share="none" if naive else "prefix",
                                              max_batch_tokens=self.max_batch_tokens)
        return np.array([float(values.mean(dtype=np.float64)) if len(values) else 0.0 for values in logprobs])

    # -- greedy answers ------------------------------------------------------------------------

    def greedy_answers(
        self,
        demonstrations: Sequence[Example],
        anchors: Sequence[Example],
        max_new_tokens: Sequence[int],
        naive: bool = False,
    ) -> list[str]:
        """Each anchor's greedy answer after the demonstrations (cut at a stop token and its own limit).

        The cached path decodes on top of the shared prefix cache; ``naive=True`` generates from
        every full conversation.
        """
        contexts = self.context_ids(demonstrations, [anchor.prompt for anchor in anchors])
        self._check_lengths([len(c) + limit for c, limit in zip(contexts, max_new_tokens)])
        generations = self.backend.generate_tokens(contexts, list(max_new_tokens), share_prefix=not naive,
                                                   max_batch_tokens=self.max_batch_tokens)
        return [generation.text for generation in generations]


@dataclass(frozen=True)
class ProxyValue:
    """J of one selection: the mean over the repeats (``value``), each repeat's anchor-weighted
    score, and the pool positions of each repeat's demonstrations."""

    value: float
    repeats: tuple[float, ...]
    draws: tuple[tuple[int, ...], ...]

    @property
    def spread(self) -> float:
        """Standard deviation of J over the repeats (0 with one repeat): how much of a difference
        in J between two selections the demonstration draw alone can make."""
        return float(np.std(self.repeats, ddof=1)) if len(self.repeats) > 1 else 0.0


class InContextProxy:
    """J(w) for selections of a pool, scored on weighted anchors (DESIGN.md §4 step 4).

    Demonstrations are drawn stratified over the selection: its showable members, in rank order
    (best weighted score first), are cut into ``demos`` consecutive strata of (nearly) equal size,
    and repeat r takes from each stratum the member with the smallest seeded priority (common
    random numbers: repeat r gives every pool example one fixed priority), shown in priority order.
    Every part of the selection's ranking is thus represented, from its best-scored to its
    marginal members, and a change anywhere in the selection moves stratum boundaries and so,
    almost always, some demonstration; yet two similar selections mostly share demonstrations,
    which keeps J a smooth function of w for the search. Pool examples identical to an anchor
    are never shown (that would leak the answer).

    Anchor scores are memoised by the demonstrations drawn, so weight settings whose selections
    lead to the same demonstrations cost one evaluation.

    Parameters
    ----------
    model:
        The :class:`ProxyModel` to score with.
    pool:
        The labelled pool examples, in the order the selections index.
    anchor_examples, anchors:
        The labelled anchor items and their weights (:class:`~tunewise.weights.anchors.Anchors`).
    repeats, demos:
        R seeded draws of d demonstrations each (d strata).
    metric:
        ``log_likelihood`` (per-token mean log-likelihood of the gold answer; the deprecated name
        ``loglik`` is accepted) or ``exact_match``
        (greedy answer judged as :mod:`tunewise.training.metrics` judges it: the final number for
        numeric or GSM8K-style answers, a choice label for multiple choice, else normalised exact match).
    naive:
        Score without the shared prefix cache (for checks and benchmarks).
    """

    def __init__(
        self,
        model: ProxyModel,
        pool: Sequence[Example],
        anchor_examples: Sequence[Example],
        anchors: Anchors,
        repeats: int = 3,
        demos: int = 8,
        metric: str = "log_likelihood",
        seed: int = 0,
        naive: bool = False,
    ) -> None:
        from tunewise.training.metrics import canonical_metric

        metric = canonical_metric(metric)
        if metric not in METRICS:
            raise TunewiseError(f"unknown proxy metric '{metric}'", field="metric", fix=did_you_mean(metric, METRICS))
        if len(anchor_examples) != len(anchors):
            raise ValueError("one anchor example per anchor is needed")
        self.model = model
        self.pool = list(pool)
        self.anchor_examples = list(anchor_examples)
        self.anchors = anchors
        self.repeats = repeats
        self.demos = demos
        self.metric = metric
        self.seed = seed
        self.naive = naive
        anchor_ids = {example.id for example in self.anchor_examples}
        self._shown_allowed = np.array([example.id not in anchor_ids for example in self.pool])
        self._priorities = [np.random.default_rng([seed, repeat]).random(len(self.pool)) for repeat in range(repeats)]
        self._memo: dict[tuple[int, ...], np.ndarray] = {}
        if metric == "exact_match":
            from tunewise.training.metrics import detect_metric

            tasks = {example.task for example in self.anchor_examples}
            self._answer_metric = {
                task: detect_metric([e.response for e in self.anchor_examples if e.task == task]) for task in tasks
            }
            self._answer_limits = [len(ids) + _ANSWER_MARGIN_TOKENS
                                   for ids in model.answer_ids([e.response for e in self.anchor_examples])]

    def demonstrations(self, selection: Sequence[int]) -> list[list[int]]:
        """Pool positions of the demonstrations of each repeat, drawn stratified over ``selection``
        (pool positions, best first)."""
        candidates = np.asarray(selection, dtype=np.int64)
        candidates = candidates[self._shown_allowed[candidates]]
        if len(candidates) == 0:
            return [[] for _ in self._priorities]
        strata = np.array_split(candidates, min(self.demos, len(candidates)))
        draws = []
        for priorities in self._priorities:
            drawn = np.array([stratum[np.argmin(priorities[stratum])] for stratum in strata])
            draws.append(drawn[np.argsort(priorities[drawn], kind="mergesort")].tolist())
        return draws

    def anchor_scores(self, demonstration_positions: Sequence[int]) -> np.ndarray:
        """Each anchor's score (log-likelihood or 0/1 correctness) after these demonstrations."""
        key = tuple(int(p) for p in demonstration_positions)
        if key not in self._memo:
            shown = [self.pool[p] for p in key]
            if self.metric == "log_likelihood":
                values = self.model.answer_logliks(shown, self.anchor_examples, naive=self.naive)
            else:
                from tunewise.training.metrics import is_correct

                answers = self.model.greedy_answers(shown, self.anchor_examples, self._answer_limits, naive=self.naive)
                values = np.array([
                    float(is_correct(self._answer_metric[e.task], answer, e.response))
                    for e, answer in zip(self.anchor_examples, answers)
                ])
            self._memo[key] = values
        return self._memo[key]

    def evaluate(self, selection: Sequence[int]) -> ProxyValue:
        """J of a selection with its per-repeat values and demonstrations."""
        draws = self.demonstrations(selection)
        if not any(draws):
            raise TunewiseError("the selection holds no example that can be shown as a demonstration",
                                fix="select a larger fraction of the pool, or use a dev set that does not "
                                    "repeat the pool's examples")
        values = tuple(anchor_estimate(self.anchor_scores(draw), self.anchors) for draw in draws)
        return ProxyValue(float(np.mean(values)), values, tuple(tuple(draw) for draw in draws))

    def __call__(self, selection: Sequence[int]) -> float:
        """J of a selection: the anchor-weighted score, averaged over the repeats."""
        return self.evaluate(selection).value


__all__ = ["METRICS", "InContextProxy", "ProxyModel", "ProxyValue", "in_context_conversation"]
