"""A deterministic stand-in model for fast unit tests: no torch, values derived from the text."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from tunewise.model.base import SHARE_MODES, EncodedExample, Generation, Messages


def _unit_interval(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeBackend:
    """Characters are tokens; losses, log-likelihoods, confidences, generations, embeddings and
    gradients are stable functions of the text, in the shapes :class:`~tunewise.model.hf.HFBackend`
    gives (tests/test_model_interface.py holds the two to that)."""

    def __init__(self, fingerprint: str = "fake-v1", embedding_dim: int = 8, max_new_tokens: int = 8) -> None:
        self.fingerprint = fingerprint
        self.embedding_dim = embedding_dim
        self.max_new_tokens = max_new_tokens
        self.batches_run = 0

    def encode(self, prompts: Sequence[Messages], responses: Sequence[str | None],
               sources: Sequence | None = None) -> list[EncodedExample]:
        encoded = []
        for prompt, response in zip(prompts, responses):
            text = "".join(f"<{turn['role']}>{turn['content']}" for turn in prompt) + "<assistant>"
            response_ids = None if response is None else tuple(ord(c) for c in response)
            encoded.append(EncodedExample(tuple(ord(c) for c in text), response_ids))
        return encoded

    def score_batch(self, batch: Sequence[EncodedExample], wanted: set[str]) -> dict[str, list]:
        self.batches_run += 1
        outputs: dict[str, list] = {name: [] for name in wanted}
        for example in batch:
            key = (example.prompt_ids, example.response_ids)
            if "loss" in wanted:
                outputs["loss"].append(None if example.response_ids is None else 0.5 + 3 * _unit_interval("loss", key))
            if "loss_unconditional" in wanted:
                outputs["loss_unconditional"].append(
                    None if example.response_ids is None else 1.0 + 3 * _unit_interval("uncond", key)
                )
            if "confidence" in wanted:
                outputs["confidence"].append(0.05 + 0.9 * _unit_interval("confidence", example.prompt_ids))
            if "confidence_ppl" in wanted:
                # One answer token at the confidence's probability: perplexity = 1 / probability.
                outputs["confidence_ppl"].append(1 / (0.05 + 0.9 * _unit_interval("confidence", example.prompt_ids)))
            if "embedding" in wanted:
                outputs["embedding"].append(self._vector(key))
        return outputs

    def loglikelihood(self, requests, *, share: str = "none", max_batch_tokens: int | None = None,
                      progress=None) -> list[np.ndarray]:
        """Per request, a log-probability in [-4, -0.01) per continuation token, a stable function
        of the context and the continuation so far (so ``share`` changes nothing)."""
        if share not in SHARE_MODES:
            raise ValueError(f"share must be one of {SHARE_MODES}, not {share!r}")
        results = []
        for context, continuation in requests:
            context, continuation = tuple(context), tuple(continuation)
            if not context:
                raise ValueError("every context needs at least one token")
            results.append(np.array([-0.01 - 3.99 * _unit_interval("loglik", context, continuation[:j + 1])
                                     for j in range(len(continuation))], dtype=np.float32))
        if progress is not None:
            progress(len(results), len(results))
        return results

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | None = None) -> list[Generation]:
        return [self._generation(str(prompt), max_new_tokens or self.max_new_tokens) for prompt in prompts]

    def generate_tokens(self, prompts, max_new_tokens, *, share_prefix: bool = False,
                        max_batch_tokens: int | None = None, progress=None) -> list[Generation]:
        limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != len(prompts) or any(limit < 1 for limit in limits):
            raise ValueError("give one max_new_tokens of at least 1 per prompt")
        generations = [self._generation(tuple(prompt), limit) for prompt, limit in zip(prompts, limits)]
        if progress is not None:
            progress(len(generations), len(generations))
        return generations

    def _generation(self, key: object, limit: int) -> Generation:
        """Up to three tokens at the prompt's confidence, never a stop token."""
        probability = 0.05 + 0.9 * _unit_interval("confidence", key)
        steps = min(3, limit)
        ids = np.arange(ord("a"), ord("a") + steps, dtype=np.int64)
        return Generation("".join(map(chr, ids)), np.full(steps, probability, dtype=np.float32), ids)

    def lora_gradients(self, prompts, responses, *, rank: int = 64, alpha: int = 32, seed: int = 0,
                       include_eos: bool = False, dimension: int | None = None, blocks: bool = False,
                       sources=None, max_batch_tokens: int | None = None) -> "FakeGradients":
        return FakeGradients([(str(p), r, rank, alpha, seed, include_eos) for p, r in zip(prompts, responses)],
                             rank, dimension, blocks)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._vector(text) for text in texts]) if texts else np.zeros((0, self.embedding_dim))

    def _vector(self, key: object) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")
        vector = np.random.default_rng(seed).standard_normal(self.embedding_dim).astype(np.float32)
        return vector / np.linalg.norm(vector)


class FakeGradients:
    """:class:`tunewise.model.gradients.LoraGradients`'s shape without torch: seeded float32
    vectors, one per example (``rank`` × 16 numbers in four blocks, or ``dimension`` numbers)."""

    target_modules = ["fake_proj"]

    def __init__(self, keys: list, rank: int, dimension: int | None, blocks: bool) -> None:
        self.gradient_dimension = 16 * rank
        self.norms: list[float] = []
        self._iterator = self._vectors(keys, dimension, blocks)

    def __iter__(self):
        return self._iterator

    def __next__(self):
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    def _vectors(self, keys, dimension, blocks):
        for key in keys:
            seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")
            full = np.random.default_rng(seed).standard_normal(self.gradient_dimension).astype(np.float32)
            self.norms.append(float(np.linalg.norm(full.astype(np.float64))))
            if blocks:
                yield np.split(full, 4)
            elif dimension is None:
                yield full
            else:
                yield np.resize(full, dimension)
