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
every anchor: the cache is expanded across a batch of anchors, each anchor's remaining tokens are
padded behind it with a matching attention mask and position ids, and the vocabulary projection
runs only where an answer token is predicted. The naive implementation runs every anchor's full
conversation on its own; it exists to check the cached one and to measure the saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunewise.weights.anchors import Anchors, anchor_estimate
from tunewise.model.base import plan_batches
from tunewise.model.chat import encode_prompts, encode_responses, pad_batch, pad_token_id, stop_token_ids
from tunewise.errors import TunewiseError, did_you_mean
from tunewise.data.pool import Example

METRICS = ("log_likelihood", "exact_match")
# Rows of hidden states projected onto the vocabulary at once: bounds the logits block to
# ~100 MiB for a 50k-token vocabulary.
_PROJECTION_ROWS = 512
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


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every sequence at least one own token.

    The last context token of each sequence must run in its own row, since its hidden state
    predicts the first answer token.
    """
    if not sequences:
        return 0
    limit = min(len(sequence) for sequence in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(sequence[length] == first[length] for sequence in sequences):
        length += 1
    return max(length, 0)


class ProxyModel:
    """Scores anchors' gold answers after demonstrations, with a shared prefix cache or naively.

    Parameters
    ----------
    backend:
        The :class:`~tunewise.model.hf.HFBackend` of the model (its tokenizer must have a chat
        template); its fingerprint identifies the model in the results.
    max_batch_tokens:
        Budget of one batch: rows × (shared prefix + longest own part) tokens, which bounds the
        expanded KV cache as well as the activations.
    """

    def __init__(self, backend, max_batch_tokens: int | None = None) -> None:
        loaded = backend.loaded
        self.fingerprint = backend.fingerprint
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.max_batch_tokens = max_batch_tokens or (65536 if self.device.type == "cuda" else 8192)
        self._decoder = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._pad_id = pad_token_id(self.tokenizer)
        self._stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self._max_positions = getattr(self.model.config, "max_position_embeddings", None)

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
        """Per-token mean log-likelihood of each anchor's gold answer after the demonstrations.

        ``naive=True`` runs every anchor's full conversation without any shared cache; the two
        agree to float rounding.
        """
        import torch

        contexts = self.context_ids(demonstrations, [anchor.prompt for anchor in anchors])
        answers = self.answer_ids([anchor.response for anchor in anchors])
        sequences = [context + answer for context, answer in zip(contexts, answers)]
        self._check_lengths([len(sequence) for sequence in sequences])
        prefix_length = 0 if naive else shared_prefix_length(contexts)
        logliks = np.zeros(len(anchors))
        with torch.inference_mode():
            prefix_cache = self._prefill(sequences[0][:prefix_length]) if prefix_length else None
            for batch in plan_batches([len(s) for s in sequences], self.max_batch_tokens):
                own = [sequences[i][prefix_length:] for i in batch]
                ids, mask = self._right_padded(own)
                hidden = self._forward(ids, mask, prefix_cache, prefix_length)
                # Answer token j of a row is predicted at the row position just before it.
                starts = torch.tensor([len(contexts[i]) - prefix_length - 1 for i in batch], device=self.device)
                lengths = torch.tensor([len(answers[i]) for i in batch], device=self.device)
                sums = self._span_logprob_sums(hidden, ids, starts, lengths)
                logliks[batch] = (sums / lengths.clamp(min=1)).cpu().numpy()
        return logliks

    def _prefill(self, prefix: Sequence[int]):
        import torch

        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
        return self._decoder(input_ids=ids, use_cache=True).past_key_values

    def _expanded_cache(self, prefix_cache, rows: int):
        """A fresh cache holding the prefix once per row (the prefix itself stays untouched)."""
        from transformers import DynamicCache

        layers = [(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
                  for layer in prefix_cache.layers]
        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _forward(self, ids, mask, prefix_cache, prefix_length: int):
        """Last hidden states of rows that continue the cached prefix (or start from scratch)."""
        import torch

        rows, width = ids.shape
        positions = prefix_length + torch.arange(width, device=self.device).expand(rows, -1)
        if prefix_cache is None:
            return self._decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 use_cache=False).last_hidden_state
        prefix_mask = torch.ones((rows, prefix_length), dtype=mask.dtype, device=self.device)
        return self._decoder(
            input_ids=ids,
            attention_mask=torch.cat([prefix_mask, mask], dim=1),
            position_ids=positions,
            past_key_values=self._expanded_cache(prefix_cache, rows),
            use_cache=True,
        ).last_hidden_state

    def _span_logprob_sums(self, hidden, ids, starts, lengths):
        """Σ log p(next token) over each row's predictor positions [start, start + length)."""
        import torch

        offsets = torch.arange(ids.shape[1], device=self.device)
        predicts = (offsets >= starts.unsqueeze(1)) & (offsets < (starts + lengths).unsqueeze(1))
        targets = torch.roll(ids, shifts=-1, dims=1)[predicts]
        predictors = hidden[predicts]
        logprobs = torch.cat([
            torch.log_softmax(self._head(predictors[i:i + _PROJECTION_ROWS]).float(), dim=-1)
            .gather(-1, targets[i:i + _PROJECTION_ROWS].unsqueeze(-1)).squeeze(-1)
            for i in range(0, len(predictors), _PROJECTION_ROWS)
        ]) if len(predictors) else torch.zeros(0, device=self.device)
        rows_of = predicts.nonzero()[:, 0]
        return torch.zeros(ids.shape[0], device=self.device).index_add_(0, rows_of, logprobs)

    def _right_padded(self, sequences: Sequence[Sequence[int]]):
        return pad_batch(sequences, self._pad_id, "right", self.device)

    # -- greedy answers ------------------------------------------------------------------------

    def greedy_answers(
        self,
        demonstrations: Sequence[Example],
        anchors: Sequence[Example],
        max_new_tokens: Sequence[int],
        naive: bool = False,
    ) -> list[str]:
        """Each anchor's greedy answer after the demonstrations (cut at a stop token and its own limit).

        ``naive=True`` generates from every full conversation with ``tunewise.training.evaluate``'s
        batched ``generate``; the cached path decodes on top of the shared prefix cache.
        """
        import torch

        from tunewise.training.evaluate import generate_greedy

        contexts = self.context_ids(demonstrations, [anchor.prompt for anchor in anchors])
        self._check_lengths([len(c) + limit for c, limit in zip(contexts, max_new_tokens)])
        if naive:
            tokens = generate_greedy(self.model, self.tokenizer, contexts, list(max_new_tokens), self.max_batch_tokens)
        else:
            prefix_length = shared_prefix_length(contexts)
            tokens = [[] for _ in anchors]
            with torch.inference_mode():
                prefix_cache = self._prefill(contexts[0][:prefix_length]) if prefix_length else None
                lengths = [len(c) + limit for c, limit in zip(contexts, max_new_tokens)]
                for batch in plan_batches(lengths, self.max_batch_tokens):
                    generated = self._greedy_after_prefix(
                        [contexts[i][prefix_length:] for i in batch], [max_new_tokens[i] for i in batch],
                        prefix_cache, prefix_length,
                    )
                    for row, index in enumerate(batch):
                        tokens[index] = generated[row]
        return [self.tokenizer.decode(answer, skip_special_tokens=True) for answer in tokens]

    def _greedy_after_prefix(self, own_parts, limits, prefix_cache, prefix_length: int) -> list[list[int]]:
        """Greedy decoding of rows that continue the prefix; each row's own part is padded on its
        left (between the prefix and the row's tokens) so that every row ends at the same column."""
        import torch

        rows = len(own_parts)
        ids, mask = pad_batch(own_parts, self._pad_id, "left", self.device)
        positions = prefix_length + (mask.cumsum(dim=1) - 1).clamp(min=0)
        attention = torch.cat([torch.ones((rows, prefix_length), dtype=mask.dtype, device=self.device), mask], dim=1)
        cache = self._expanded_cache(prefix_cache, rows) if prefix_cache is not None else None
        out = self._decoder(input_ids=ids, attention_mask=attention, position_ids=positions,
                            past_key_values=cache, use_cache=True)
        next_position = prefix_length + mask.sum(dim=1)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        stops = torch.tensor(sorted(self._stop_ids), device=self.device)
        chosen = []
        for step in range(max(limits)):
            token = self._head(out.last_hidden_state[:, -1, :]).argmax(dim=-1)
            chosen.append(token)
            finished |= torch.isin(token, stops)
            if step == max(limits) - 1 or bool(finished.all()):
                break
            attention = torch.cat([attention, torch.ones((rows, 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self._decoder(input_ids=token.unsqueeze(1), attention_mask=attention,
                                position_ids=(next_position + step).unsqueeze(1),
                                past_key_values=out.past_key_values, use_cache=True)
        generated = torch.stack(chosen, dim=1).tolist()
        answers = []
        for row, limit in enumerate(limits):
            answer = generated[row][:limit]
            end = next((position for position, token in enumerate(answer) if token in self._stop_ids), len(answer))
            answers.append(answer[:end])
        return answers


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


__all__ = ["METRICS", "InContextProxy", "ProxyModel", "ProxyValue", "in_context_conversation",
           "shared_prefix_length"]
