"""The Hugging Face ``transformers`` backend, CPU or GPU: the one implementation of
:class:`tunewise.model.base.Backend` that runs a real model. Every forward pass of scoring,
evaluation, the in-context proxy and CoS-Low runs here (fine-tuning excepted: TRL's trainer runs
its own).

Speed comes from doing less work rather than from a faster kernel:

- ``loss`` and ``loss_unconditional`` (IFD) run as plain sequences, sorted by length and
  right-padded with at most 5 % padding, with no attention mask (the causal kernel):
  :mod:`tunewise.model.packed`. A value therefore does not depend on its batch's other examples;
- the greedy answer (confidence) is decoded on top of the prompt's KV cache;
- the vocabulary projection (a large share of a small model's FLOPs) runs only at the positions
  whose log-probabilities are needed, never over the prompt;
- batches are packed by a token budget over length-sorted examples, so padding stays small;
- greedy decoding stops per row: a row that has produced a stop token or reached its own limit
  leaves the batch and its KV cache at once;
- contexts that share a long prefix (demonstrations) or several continuations of one context
  (choices) run the shared part once.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Sequence

import numpy as np

from tunewise.model.base import (CONFIDENCE_NEW_TOKENS, SHARE_MODES, EncodedExample, Generation, Messages,
                                 answer_confidence, plan_batches)
from tunewise.model.chat import (answer_mask_ids, encode_prompts, encode_responses, pad_batch, pad_token_id,
                                 stop_token_ids)
from tunewise.model.host_memory import release_freed_memory
from tunewise.model.lengths import context_length
from tunewise.model.load import LoadedModel
from tunewise.model.packed import target_logprobs


class HFBackend:
    """The model interface (:class:`tunewise.model.base.Backend`) over a loaded causal language model.

    Build it from :func:`tunewise.model.load.load_model`'s result, or with :meth:`from_model`
    around a model already in memory (a fine-tuned one, a PEFT model around one).
    """

    def __init__(self, loaded: LoadedModel, max_new_tokens: int = CONFIDENCE_NEW_TOKENS,
                 max_batch_tokens: int | None = None) -> None:
        import torch

        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length(self.model, self.tokenizer)
        # A CPU runs a 2,048-token batch as fast as a larger one (its matmuls are roof-sized at a few
        # hundred rows) and each 1,000 tokens of batch hold ~100 MB of a 1B model's activations and
        # cache; a GPU needs large batches to be busy.
        self.max_batch_tokens = max_batch_tokens or (32768 if self.device.type == "cuda" else 2048)
        template = (self.tokenizer.chat_template or "").encode()
        self.fingerprint = f"{loaded.fingerprint}:tpl-{hashlib.sha256(template).hexdigest()[:8]}"
        self._decoder = self.model.get_decoder()
        # transformers 5 renames the decoder's ``past_key_values`` argument and output to ``cache``
        # (the old names are deprecated); 4.x knows only the old ones.
        self._cache_argument = ("cache" if "cache" in inspect.signature(self._decoder.forward).parameters
                                else "past_key_values")
        self._head = self.model.get_output_embeddings()
        self._pad_id = pad_token_id(self.tokenizer)
        stops = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self._stop_set = frozenset(stops)
        self._stop_ids = torch.tensor(sorted(stops), device=self.device)
        # Confidence leaves out end, padding, end-of-turn and bare-newline tokens (paper A).
        self._not_answer_ids = np.array(sorted(answer_mask_ids(self.tokenizer) | set(self._stop_ids.tolist())))
        # IFD's unconditioned response is preceded only by the begin-of-text token.
        self._start_id = self.tokenizer.bos_token_id
        if self._start_id is None:
            self._start_id = self.tokenizer.eos_token_id

    def _cache(self, cache) -> dict:
        """The keyword argument that hands ``cache`` to the decoder."""
        return {self._cache_argument: cache}

    def _cache_of(self, output):
        """The KV cache a decoder pass returned."""
        return getattr(output, self._cache_argument)

    @classmethod
    def from_model(cls, model, tokenizer, **options) -> "HFBackend":
        """The interface around a transformers causal LM (or a PEFT model around one) already in
        memory, on the device of its input embeddings; ``options`` as for the constructor.

        Its ``fingerprint`` (``in-memory:<class>``) does not identify the weights, so scores it
        computes must not go into the shared scores cache.
        """
        weight = model.get_input_embeddings().weight
        loaded = LoadedModel(name=type(model).__name__, model=model, tokenizer=tokenizer,
                             fingerprint=f"in-memory:{type(model).__name__}", device=weight.device, dtype=weight.dtype)
        return cls(loaded, **options)

    # -- tokenisation (tunewise.model.chat) -----------------------------------------------------

    def encode(self, prompts: Sequence[Messages], responses: Sequence[str | None],
               sources: Sequence | None = None) -> list[EncodedExample]:
        """Token ids of each rendered prompt and response; ``sources`` (the examples) name the
        record in a chat-template error."""
        prompt_ids = encode_prompts(self.tokenizer, prompts, sources)
        present = [r for r in responses if r is not None]
        response_ids = iter(encode_responses(self.tokenizer, present))
        return [
            EncodedExample(tuple(p), None if r is None else tuple(next(response_ids)))
            for p, r in zip(prompt_ids, responses)
        ]

    # -- the fused scoring pass -----------------------------------------------------------------

    def score_batch(self, batch: Sequence[EncodedExample], wanted: set[str]) -> dict[str, list]:
        import torch

        outputs: dict[str, list] = {name: [None] * len(batch) for name in wanted}
        with torch.inference_mode():
            if wanted & {"loss", "loss_unconditional"}:
                self._loss_pass(batch, wanted, outputs)
            if wanted & {"confidence", "confidence_ppl", "embedding"}:
                self._prompt_pass(batch, wanted, outputs)
        release_freed_memory()
        return outputs

    def _loss_pass(self, batch, wanted, outputs) -> None:
        """``loss`` (the response after its prompt) and ``loss_unconditional`` (the response after
        the start token only) of every labelled example, all of them as one list of sequences run
        without padding waste (:func:`tunewise.model.packed.sequence_logprobs`): the padding share
        stays under 5 % and a value does not depend on which examples share its batch."""
        labelled = [row for row, e in enumerate(batch) if e.response_length > 0]
        requests, targets = [], []
        for row in labelled:
            example = batch[row]
            if "loss" in wanted:
                requests.append((example.prompt_ids, example.response_ids))
                targets.append(("loss", row))
            if "loss_unconditional" in wanted:
                requests.append(((self._start_id,), example.response_ids))
                targets.append(("loss_unconditional", row))
        if not requests:
            return
        for (name, row), values in zip(targets, self.loglikelihood(requests)):
            outputs[name][row] = -float(values.mean(dtype=np.float64))

    def _left_padded(self, sequences: Sequence[Sequence[int]]):
        return pad_batch(sequences, self._pad_id, "left", self.device)

    def _right_padded(self, sequences: Sequence[Sequence[int]]):
        return pad_batch(sequences, self._pad_id, "right", self.device)

    def _prompt_pass(self, batch, wanted, outputs) -> None:
        import torch

        prompt_ids, prompt_mask = self._left_padded([e.prompt_ids for e in batch])
        prompt_lengths = prompt_mask.sum(dim=1)
        prompt_positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
        prefill = self._decoder(
            input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions, use_cache=True
        )
        cache = self._cache_of(prefill)
        prompt_hidden = prefill.last_hidden_state
        last_prompt_hidden = prompt_hidden[:, -1, :]
        embedding_sum = (prompt_hidden.float() * prompt_mask.unsqueeze(-1)).sum(dim=1)
        embedding_count = prompt_mask.sum(dim=1, keepdim=True).float()

        labelled = [row for row, e in enumerate(batch) if e.response_length > 0]
        if labelled and "embedding" in wanted:
            responses = [batch[row].response_ids or () for row in range(len(batch))]
            response_ids, response_mask = self._right_padded(responses)
            positions = prompt_lengths.unsqueeze(1) + torch.arange(response_ids.shape[1], device=self.device)
            response_pass = self._decoder(
                input_ids=response_ids,
                attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
                position_ids=positions,
                **self._cache(cache),
                use_cache=True,
            )
            cache.crop(-response_ids.shape[1])
            response_hidden = response_pass.last_hidden_state
            embedding_sum += (response_hidden.float() * response_mask.unsqueeze(-1)).sum(dim=1)
            embedding_count += response_mask.sum(dim=1, keepdim=True).float()
        if "embedding" in wanted:
            vectors = embedding_sum / embedding_count.clamp(min=1)
            vectors = torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy().astype(np.float32)
            outputs["embedding"] = list(vectors)
        if wanted & {"confidence", "confidence_ppl"}:
            tokens, probabilities = self._decode_greedily(last_prompt_hidden, cache, prompt_mask, prompt_lengths,
                                                          [self.max_new_tokens] * len(batch))
            for row, (answer, chosen) in enumerate(zip(tokens, probabilities)):
                mean_probability, perplexity = answer_confidence(answer, chosen, self._not_answer_ids)
                if "confidence" in wanted:
                    outputs["confidence"][row] = mean_probability
                if "confidence_ppl" in wanted:
                    outputs["confidence_ppl"][row] = perplexity

    def _decode_greedily(self, hidden, cache, attention_mask, next_positions, limits):
        """Greedy decoding on top of a prefilled ``cache`` whose rows' last hidden states are
        ``hidden``; row r's next token sits at ``next_positions[r]``. Returns per row the chosen
        token ids and their probabilities (float32), up to and including its first stop token,
        at most ``limits[r]`` of them. A row that is done leaves the batch and the cache at once,
        so no step is spent on it and the answer does not depend on the rows beside it."""
        import torch

        tokens: list[list[int]] = [[] for _ in limits]
        probabilities: list[list[float]] = [[] for _ in limits]
        alive = list(range(len(limits)))  # rows still answering, in cache row order
        while True:
            logits = self._head(hidden).float()
            chosen = logits.argmax(dim=-1)
            chosen_probability = torch.softmax(logits, dim=-1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
            stopped = torch.isin(chosen, self._stop_ids).tolist()
            keep = []
            for row, (index, token, probability) in enumerate(zip(alive, chosen.tolist(), chosen_probability.tolist())):
                tokens[index].append(token)
                probabilities[index].append(probability)
                if not stopped[row] and len(tokens[index]) < limits[index]:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(alive):
                selected = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(selected)
                attention_mask, next_positions, chosen = (attention_mask[selected], next_positions[selected],
                                                          chosen[selected])
                alive = [alive[row] for row in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(alive), 1))], dim=1)
            out = self._decoder(input_ids=chosen.unsqueeze(1), attention_mask=attention_mask,
                                position_ids=next_positions.unsqueeze(1), **self._cache(cache), use_cache=True)
            next_positions = next_positions + 1
            hidden = out.last_hidden_state[:, -1, :]
        return ([np.asarray(t, dtype=np.int64) for t in tokens],
                [np.asarray(p, dtype=np.float32) for p in probabilities])

    # -- log-likelihoods of continuations ------------------------------------------------------

    def loglikelihood(self, requests, *, share: str = "none", max_batch_tokens: int | None = None,
                      progress=None) -> list[np.ndarray]:
        """Per ``(context, continuation)`` request, float32 log p of each continuation token; see
        :meth:`tunewise.model.base.Backend.loglikelihood` for ``share``."""
        from tunewise.model.packed import sequence_logprobs, shared_prefix_logprobs

        if share not in SHARE_MODES:
            raise ValueError(f"share must be one of {SHARE_MODES}, not {share!r}")
        requests = [(tuple(context), tuple(continuation)) for context, continuation in requests]
        budget = max_batch_tokens or self.max_batch_tokens
        if share == "none":
            return sequence_logprobs(self.model, [c + t for c, t in requests], [len(c) for c, _ in requests],
                                     self._pad_id, budget, progress=progress)
        if share == "prefix":
            return self._prefix_cached_logprobs(requests, budget, progress)
        groups: dict[tuple, list[int]] = {}
        for position, (context, _) in enumerate(requests):
            groups.setdefault(context, []).append(position)
        items = [(context, [requests[p][1] for p in members]) for context, members in groups.items()]
        results: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(requests)
        for members, values in zip(groups.values(),
                                   shared_prefix_logprobs(self.model, items, self._pad_id, budget, progress)):
            for position, logprobs in zip(members, values):
                results[position] = logprobs
        return results

    def _prefix_cached_logprobs(self, requests, budget, progress) -> list[np.ndarray]:
        """``share="prefix"``: the prefix all contexts share runs once; every batch of requests
        expands its KV cache, runs its own tokens right-padded behind it with a matching
        attention mask and position ids, and projects onto the vocabulary only where a
        continuation token is predicted. Batches hold rows × (prefix + longest own part) ≤ ``budget``."""
        import torch

        from tunewise.model.packed import shared_prefix_length

        contexts = [context for context, _ in requests]
        sequences = [context + continuation for context, continuation in requests]
        prefix_length = shared_prefix_length(contexts)
        results: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(requests)
        done = 0
        with torch.inference_mode():
            prefix_cache = self._prefill(sequences[0][:prefix_length]) if prefix_length else None
            for batch in plan_batches([len(s) for s in sequences], budget):
                ids, mask = self._right_padded([sequences[i][prefix_length:] for i in batch])
                hidden = self._after_prefix(ids, mask, prefix_cache, prefix_length)
                # Continuation token j of a row is predicted at the row position just before it.
                starts = [len(contexts[i]) - prefix_length - 1 for i in batch]
                lengths = [len(requests[i][1]) for i in batch]
                for index, values in zip(batch, self._span_logprobs(hidden, ids, starts, lengths)):
                    results[index] = values
                done += len(batch)
                if progress is not None:
                    progress(done, len(requests))
        return results

    def _prefill(self, prefix: Sequence[int]):
        """The KV cache of one row holding ``prefix``."""
        import torch

        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
        return self._cache_of(self._decoder(input_ids=ids, use_cache=True))

    def _expanded_cache(self, prefix_cache, rows: int):
        """A fresh cache holding the prefix once per row (the prefix itself stays untouched)."""
        from transformers import DynamicCache

        layers = [(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
                  for layer in prefix_cache.layers]
        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _after_prefix(self, ids, mask, prefix_cache, prefix_length: int):
        """Last hidden states of right-padded rows that continue the cached prefix (or start
        from scratch when there is none)."""
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
            **self._cache(self._expanded_cache(prefix_cache, rows)),
            use_cache=True,
        ).last_hidden_state

    def _span_logprobs(self, hidden, ids, starts: Sequence[int], lengths: Sequence[int]) -> list[np.ndarray]:
        """Per row, log p(next token) at its predictor positions [start, start + length)."""
        import torch

        offsets = torch.arange(ids.shape[1], device=self.device)
        start = torch.tensor(starts, device=self.device)
        length = torch.tensor(lengths, device=self.device)
        predicts = (offsets >= start.unsqueeze(1)) & (offsets < (start + length).unsqueeze(1))
        targets = torch.roll(ids, shifts=-1, dims=1)[predicts]
        predictors = hidden[predicts]
        logprobs = target_logprobs(self._head, predictors, targets) if len(predictors) else torch.zeros(
            0, device=self.device)
        # ``predicts`` is taken in row-major order, so each row's values are one consecutive run.
        return [values.cpu().numpy() for values in torch.split(logprobs, list(lengths))]

    # -- greedy generation ---------------------------------------------------------------------

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | None = None) -> list[Generation]:
        """Greedy answers to chat prompts, batched by token budget, in input order."""
        encoded = self.encode(prompts, [None] * len(prompts))
        return self.generate_tokens([e.prompt_ids for e in encoded], max_new_tokens or self.max_new_tokens)

    def generate_tokens(self, prompts, max_new_tokens, *, share_prefix: bool = False,
                        max_batch_tokens: int | None = None, progress=None) -> list[Generation]:
        """Greedy answers to tokenised prompts, each cut at its first stop token and its own
        limit; see :meth:`tunewise.model.base.Backend.generate_tokens`.

        Prompts are sorted longest first (prompt plus limit) and packed into left-padded batches
        of about ``max_batch_tokens`` (rows × longest prompt plus limit). With ``share_prefix``
        the prompts' common prefix is prefilled once; each batch expands its cache and its rows'
        own parts are left-padded between the prefix and their tokens, so that every row ends at
        the same column.
        """
        import torch

        from tunewise.model.packed import shared_prefix_length

        prompts = [tuple(prompt) for prompt in prompts]
        limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != len(prompts) or any(limit < 1 for limit in limits):
            raise ValueError("give one max_new_tokens of at least 1 per prompt")
        budget = max_batch_tokens or self.max_batch_tokens
        prefix_length = shared_prefix_length(prompts) if share_prefix else 0
        results: list[Generation | None] = [None] * len(prompts)
        done = 0
        with torch.inference_mode():
            prefix_cache = self._prefill(prompts[0][:prefix_length]) if prefix_length else None
            for batch in plan_batches([len(p) + limit for p, limit in zip(prompts, limits)], budget):
                ids, mask = self._left_padded([prompts[i][prefix_length:] for i in batch])
                positions = prefix_length + (mask.cumsum(dim=1) - 1).clamp(min=0)
                attention, cache = mask, None
                if prefix_cache is not None:
                    prefix_mask = torch.ones((len(batch), prefix_length), dtype=mask.dtype, device=self.device)
                    attention = torch.cat([prefix_mask, mask], dim=1)
                    cache = self._expanded_cache(prefix_cache, len(batch))
                prefill = self._decoder(input_ids=ids, attention_mask=attention, position_ids=positions,
                                        **self._cache(cache), use_cache=True)
                tokens, probabilities = self._decode_greedily(
                    prefill.last_hidden_state[:, -1, :], self._cache_of(prefill), attention, positions[:, -1] + 1,
                    [limits[i] for i in batch])
                for row, index in enumerate(batch):
                    results[index] = self._generation(tokens[row], probabilities[row])
                done += len(batch)
                if progress is not None:
                    progress(done, len(prompts))
        return results

    def _generation(self, tokens: np.ndarray, probabilities: np.ndarray) -> Generation:
        stopped = len(tokens) > 0 and int(tokens[-1]) in self._stop_set
        answer = tokens[:-1] if stopped else tokens
        return Generation(self.tokenizer.decode(answer.tolist(), skip_special_tokens=True), probabilities, tokens,
                          self._not_answer_ids, stopped)

    # -- per-example gradients -----------------------------------------------------------------

    def lora_gradients(self, prompts, responses, *, rank: int = 64, alpha: int = 32, seed: int = 0,
                       include_eos: bool = False, dimension: int | None = None, blocks: bool = False,
                       sources: Sequence[str] | None = None, max_batch_tokens: int | None = None):
        """Per-example ``lora_B`` gradients through a fresh seeded adapter, yielded one example at a
        time, computed in batches of about ``max_batch_tokens`` tokens:
        :class:`tunewise.model.gradients.LoraGradients`."""
        from tunewise.model.gradients import LoraGradients

        return LoraGradients(self.model, self.tokenizer, prompts, responses, rank, alpha, seed, include_eos,
                             dimension, blocks, sources, max_batch_tokens=max_batch_tokens)

    # -- embeddings ----------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised last hidden state of each text (no chat template)."""
        import torch

        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        vectors = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for positions in plan_batches([len(e) for e in encoded], self.max_batch_tokens):
                ids, mask = self._right_padded([encoded[p] for p in positions])
                hidden = self._decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                pooled = (hidden.float() * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
                vectors[positions] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return vectors
