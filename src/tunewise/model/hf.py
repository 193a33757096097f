"""The Hugging Face ``transformers`` backend, CPU or GPU.

Speed comes from doing less work rather than from a faster kernel:

- ``loss`` and ``loss_unconditional`` (IFD) run as plain sequences, sorted by length and
  right-padded with at most 5 % padding, with no attention mask (the causal kernel):
  :mod:`tunewise.model.packed`. A value therefore does not depend on its batch's other examples;
- the greedy answer (confidence) is decoded on top of the prompt's KV cache;
- the vocabulary projection (a large share of a small model's FLOPs) runs only at the positions
  whose log-probabilities are needed, never over the prompt;
- batches are packed by a token budget over length-sorted examples, so padding stays small.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from tunewise.model.base import CONFIDENCE_NEW_TOKENS, EncodedExample, Generation, Messages, answer_confidence
from tunewise.model.chat import (answer_mask_ids, encode_prompts, encode_responses, pad_batch, pad_token_id,
                                 stop_token_ids)
from tunewise.model.lengths import context_length
from tunewise.model.load import LoadedModel


def token_logprobs(head, hidden, targets):
    """log p(target) from hidden states, projecting only these rows onto the vocabulary with ``head``."""
    import torch

    logits = head(hidden).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def row_means(values, mask):
    """Per row of the boolean ``mask``, the mean of ``values`` (one per True, in row-major order)."""
    import torch

    sums = torch.zeros(mask.shape[0], device=values.device).index_add_(0, mask.nonzero()[:, 0], values)
    return sums / mask.sum(dim=1).clamp(min=1)


class HFBackend:
    """Scores batches of examples with a loaded causal language model."""

    def __init__(self, loaded: LoadedModel, max_new_tokens: int = CONFIDENCE_NEW_TOKENS,
                 max_batch_tokens: int | None = None) -> None:
        import torch

        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length(self.model, self.tokenizer)
        self.max_batch_tokens = max_batch_tokens or (32768 if self.device.type == "cuda" else 4096)
        template = (self.tokenizer.chat_template or "").encode()
        self.fingerprint = f"{loaded.fingerprint}:tpl-{hashlib.sha256(template).hexdigest()[:8]}"
        self._decoder = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._pad_id = pad_token_id(self.tokenizer)
        self._stop_ids = torch.tensor(sorted(stop_token_ids(self.tokenizer, self.model.generation_config)),
                                      device=self.device)
        # Confidence leaves out end, padding, end-of-turn and bare-newline tokens (paper A).
        self._not_answer_ids = np.array(sorted(answer_mask_ids(self.tokenizer) | set(self._stop_ids.tolist())))
        # IFD's unconditioned response is preceded only by the begin-of-text token.
        self._start_id = self.tokenizer.bos_token_id
        if self._start_id is None:
            self._start_id = self.tokenizer.eos_token_id

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
        return outputs

    def _loss_pass(self, batch, wanted, outputs) -> None:
        """``loss`` (the response after its prompt) and ``loss_unconditional`` (the response after
        the start token only) of every labelled example, all of them as one list of sequences run
        without padding waste (:func:`tunewise.model.packed.sequence_logprobs`): the padding share
        stays under 5 % and a value does not depend on which examples share its batch."""
        from tunewise.model.packed import sequence_logprobs

        labelled = [row for row, e in enumerate(batch) if e.response_length > 0]
        sequences, starts, targets = [], [], []
        for row in labelled:
            example = batch[row]
            if "loss" in wanted:
                sequences.append(example.prompt_ids + example.response_ids)
                starts.append(example.prompt_length)
                targets.append(("loss", row))
            if "loss_unconditional" in wanted:
                sequences.append((self._start_id, *example.response_ids))
                starts.append(1)
                targets.append(("loss_unconditional", row))
        if not sequences:
            return
        logprobs = sequence_logprobs(self.model, sequences, starts, self._pad_id, self.max_batch_tokens)
        for (name, row), values in zip(targets, logprobs):
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
        cache = prefill.past_key_values
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
                past_key_values=cache,
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
            tokens, probabilities = self._greedy_from_cache(last_prompt_hidden, cache, prompt_mask, prompt_lengths)
            for row, (answer, chosen) in enumerate(zip(tokens, probabilities)):
                mean_probability, perplexity = answer_confidence(answer, chosen, self._not_answer_ids)
                if "confidence" in wanted:
                    outputs["confidence"][row] = mean_probability
                if "confidence_ppl" in wanted:
                    outputs["confidence_ppl"][row] = perplexity

    def _greedy_from_cache(self, last_hidden, cache, prompt_mask, prompt_lengths, max_new_tokens=None):
        """Greedy decoding on top of a prefilled cache; returns token ids and their probabilities."""
        import torch

        steps = max_new_tokens or self.max_new_tokens
        rows = last_hidden.shape[0]
        mask = prompt_mask
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        chosen_tokens, chosen_probs, alive = [], [], []
        hidden = last_hidden
        for step in range(steps):
            probabilities = torch.softmax(self._head(hidden).float(), dim=-1)
            best_probability, token = probabilities.max(dim=-1)
            alive.append(~finished)
            chosen_tokens.append(token)
            chosen_probs.append(best_probability)
            finished = finished | torch.isin(token, self._stop_ids)
            if bool(finished.all()) or step == steps - 1:
                break
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self._decoder(
                input_ids=token.unsqueeze(1),
                attention_mask=mask,
                position_ids=(prompt_lengths + step).unsqueeze(1),
                past_key_values=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[:, -1, :]
        tokens = torch.stack(chosen_tokens, dim=1).cpu().numpy()
        probs = torch.stack(chosen_probs, dim=1).cpu().numpy()
        keep = torch.stack(alive, dim=1).cpu().numpy()
        # Each answer runs up to and including its first stop token.
        return [tokens[r][keep[r]] for r in range(rows)], [probs[r][keep[r]] for r in range(rows)]

    # -- generation and embeddings for other stages --------------------------------------------

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | None = None) -> list[Generation]:
        """Greedy answers, batched by token budget, in input order."""
        import torch

        from tunewise.model.base import plan_batches

        steps = max_new_tokens or self.max_new_tokens
        encoded = self.encode(prompts, [None] * len(prompts))
        results: list[Generation | None] = [None] * len(prompts)
        lengths = [e.prompt_length + steps for e in encoded]
        with torch.inference_mode():
            for positions in plan_batches(lengths, self.max_batch_tokens):
                ids, mask = self._left_padded([encoded[p].prompt_ids for p in positions])
                prefill = self._decoder(
                    input_ids=ids, attention_mask=mask,
                    position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0), use_cache=True,
                )
                tokens, probs = self._greedy_from_cache(
                    prefill.last_hidden_state[:, -1, :], prefill.past_key_values, mask, mask.sum(dim=1), steps
                )
                stops = set(self._stop_ids.tolist())
                for row, position in enumerate(positions):
                    answer = [t for t in tokens[row].tolist() if t not in stops]
                    text = self.tokenizer.decode(answer, skip_special_tokens=True)
                    results[position] = Generation(text, probs[row], tokens[row], self._not_answer_ids)
        return results

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised last hidden state of each text (no chat template)."""
        import torch

        from tunewise.model.base import plan_batches

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
