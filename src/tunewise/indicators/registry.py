"""Per-example indicators: what each one means, its version, and what it needs from the model.

The numbers come from the backend's fused scoring pass (``loss``, ``loss_unconditional``,
``confidence``, ``embedding``) or from the text alone (``cot_length``) or the tokenizer
(``length``, ``prompt_length``). Bump an indicator's version whenever its definition changes:
the version is part of the cache key, so stale values are never reused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tunewise.errors import TunewiseError, did_you_mean


@dataclass(frozen=True)
class Indicator:
    name: str
    version: int
    columns: tuple[str, ...]
    model_outputs: tuple[str, ...]
    needs_label: bool
    description: str


INDICATORS: dict[str, Indicator] = {
    indicator.name: indicator
    for indicator in (
        Indicator("loss", 1, ("loss", "ppl"), ("loss",), True,
                  "mean negative log-likelihood of the response tokens given the prompt; ppl = exp(loss)"),
        Indicator("ifd", 1, ("ifd",), ("loss", "loss_unconditional"), True,
                  "PPL(response | prompt) / PPL(response alone after the begin-of-text token)"),
        Indicator("confidence", 2, ("confidence",), ("confidence",), False,
                  "mean probability of the tokens the model chose when answering the prompt greedily (at most "
                  "30 tokens), over the answer only: end, padding, end-of-turn and bare-newline tokens left "
                  "out (paper A's avg_confidence)"),
        Indicator("confidence_ppl", 1, ("confidence_ppl",), ("confidence_ppl",), False,
                  "perplexity of the model's own greedy answer over the same tokens as confidence; higher is "
                  "less confident (paper A's --confidence_metric ppl)"),
        Indicator("length", 1, ("length", "prompt_length"), (), False,
                  "response tokens, and rendered prompt tokens"),
        Indicator("cot_length", 1, ("cot_length",), (), True,
                  "reasoning steps of the reference answer: non-empty lines, the final '####' line excluded"),
        Indicator("embedding", 1, ("embedding",), ("embedding",), False,
                  "mean-pooled, L2-normalised last hidden state over the rendered example"),
    )
}
DEFAULT_INDICATORS = ("loss", "ifd", "confidence", "length", "cot_length")
# `ppl` is accepted as a name and served by `loss`; `difficulty` is chosen at selection time.
ALIASES = {"ppl": "loss"}


def resolve_indicators(names) -> list[Indicator]:
    """Validate indicator names (with a did-you-mean) and return them without repeats, in order."""
    resolved: dict[str, Indicator] = {}
    for raw in names:
        name = ALIASES.get(raw.strip(), raw.strip())
        if name not in INDICATORS:
            raise TunewiseError(f"unknown indicator '{raw}'", field="indicators",
                                fix=did_you_mean(raw, [*INDICATORS, *ALIASES]))
        resolved[name] = INDICATORS[name]
    if not resolved:
        raise TunewiseError("no indicators asked for", field="indicators",
                            fix=f"name at least one of {', '.join(INDICATORS)}")
    return list(resolved.values())


_STEP_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def cot_length(response: str | None) -> float:
    """Reasoning length of a reference answer (paper C's model-free difficulty).

    Counts non-empty lines, leaving out a final-answer line that starts with ``####`` (GSM8K).
    A one-line answer counts its sentences instead, so short prose rationales are not all 1.
    """
    if response is None:
        return math.nan
    lines = [line for line in response.splitlines() if line.strip() and not line.strip().startswith("####")]
    if len(lines) == 1:
        return float(len(_STEP_SPLIT.split(lines[0].strip())))
    return float(len(lines))


def ifd_from_losses(loss: float | None, loss_unconditional: float | None) -> float:
    """PPL ratio exp(loss - loss_unconditional); above 1 means the prompt does not help."""
    if loss is None or loss_unconditional is None:
        return math.nan
    return math.exp(loss - loss_unconditional)
