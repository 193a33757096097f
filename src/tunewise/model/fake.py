"""A deterministic stand-in model for fast unit tests: no torch, values derived from the text."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from tunewise.model.base import EncodedExample, Generation, Messages


def _unit_interval(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeBackend:
    """Characters are tokens; loss, confidence and embeddings are stable functions of the text."""

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

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int) -> list[Generation]:
        generations = []
        for prompt in prompts:
            probability = 0.05 + 0.9 * _unit_interval("confidence", str(prompt))
            steps = min(3, max_new_tokens)
            generations.append(Generation("fake answer", np.full(steps, probability), np.arange(steps)))
        return generations

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._vector(text) for text in texts]) if texts else np.zeros((0, self.embedding_dim))

    def _vector(self, key: object) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")
        vector = np.random.default_rng(seed).standard_normal(self.embedding_dim).astype(np.float32)
        return vector / np.linalg.norm(vector)
