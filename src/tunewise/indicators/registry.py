"""Per-example indicators: what each one means, its version, and what it needs from the model.

The one registry: each indicator declares its name, version, columns, the cached outputs it
needs, whether it reads the label, which direction selectors prefer, and how its columns are
computed. Every list of indicator names elsewhere is derived from it. The numbers come from the
backend's fused scoring pass (``loss``, ``loss_unconditional``, ``confidence``, ``embedding``), the
tokenizer (``length``, ``prompt_length``) or the text alone (``cot_length``). The cache key holds
each output's version (:data:`OUTPUT_VERSIONS`) and the provenance each indicator's version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tunewise.errors import TunewiseError, did_you_mean


#: Cached per-example outputs the indicators are built from, with their versions (part of each
#: cache key: bump one whenever what produces it changes, so a stale value is never reused).
#: ``length`` and ``prompt_length`` are token counts of the encoding, the others come from the model.
#: confidence 2: answer tokens only (no stop, end-of-turn, padding or bare-newline token), 30 new tokens.
OUTPUT_VERSIONS = {"loss": 1, "loss_unconditional": 1, "confidence": 2, "confidence_ppl": 1, "embedding": 1,
                   "length": 1, "prompt_length": 1}
TOKEN_COUNTS = ("length", "prompt_length")
MODEL_OUTPUTS = tuple(output for output in OUTPUT_VERSIONS if output not in TOKEN_COUNTS)


def _floats(values: dict, output: str, ids: Sequence[str]) -> np.ndarray:
    return np.array([math.nan if values[output][i] is None else float(values[output][i]) for i in ids])


@dataclass(frozen=True)
class Indicator:
    """One indicator: its columns in the scores table and how they are computed.

    ``outputs`` are the cached outputs it is built from (:data:`OUTPUT_VERSIONS`); ``compute(values,
    examples)`` turns them (``values[output][example_id]``) and the examples into its columns.
    ``prefer`` is the direction a selector favours by default (``"higher"`` or ``"lower"``, None for
    a vector); ``needs_label`` says whether the indicator reads the response.
    """

    name: str
    version: int
    columns: tuple[str, ...]
    outputs: tuple[str, ...]
    needs_label: bool
    prefer: str | None
    description: str
    compute: Callable[[dict, Sequence], dict[str, object]]

    @property
    def model_outputs(self) -> tuple[str, ...]:
        """The outputs that need a forward pass of the model."""
        return tuple(output for output in self.outputs if output in MODEL_OUTPUTS)

    @property
    def is_vector(self) -> bool:
        return self.prefer is None


def _loss(values, examples):
    loss = _floats(values, "loss", [e.id for e in examples])
    return {"loss": loss, "ppl": np.exp(loss)}


def _ifd(values, examples):
    return {"ifd": np.array([ifd_from_losses(values["loss"][e.id], values["loss_unconditional"][e.id])
                             for e in examples])}


def _length(values, examples):
    ids = [e.id for e in examples]
    return {"length": _floats(values, "length", ids), "prompt_length": _floats(values, "prompt_length", ids)}


INDICATORS: dict[str, Indicator] = {
    indicator.name: indicator
    for indicator in (
        Indicator("loss", 1, ("loss", "ppl"), ("loss",), True, "higher",
                  "mean negative log-likelihood of the response tokens given the prompt; ppl = exp(loss)", _loss),
        Indicator("ifd", 1, ("ifd",), ("loss", "loss_unconditional"), True, "higher",
                  "PPL(response | prompt) / PPL(response alone after the begin-of-text token)", _ifd),
        Indicator("confidence", 2, ("confidence",), ("confidence",), False, "lower",
                  "mean probability of the tokens the model chose when answering the prompt greedily (at most "
                  "30 tokens), over the answer only: end, padding, end-of-turn and bare-newline tokens left "
                  "out (paper A's avg_confidence); 0 when no answer token is left",
                  lambda values, examples: {"confidence": _floats(values, "confidence", [e.id for e in examples])}),
        Indicator("confidence_ppl", 1, ("confidence_ppl",), ("confidence_ppl",), False, "higher",
                  "perplexity of the model's own greedy answer over the same tokens as confidence; higher is "
                  "less confident (paper A's --confidence_metric ppl)",
                  lambda values, examples: {"confidence_ppl": _floats(values, "confidence_ppl",
                                                                      [e.id for e in examples])}),
        Indicator("length", 1, ("length", "prompt_length"), TOKEN_COUNTS, False, "higher",
                  "response tokens, and rendered prompt tokens", _length),
        Indicator("cot_length", 1, ("cot_length",), (), True, "higher",
                  "reasoning steps of the reference answer: non-empty lines, the final '####' line excluded",
                  lambda values, examples: {"cot_length": np.array([cot_length(e.response) for e in examples])}),
        Indicator("embedding", 1, ("embedding",), ("embedding",), False, None,
                  "mean-pooled, L2-normalised last hidden state over the rendered example",
                  lambda values, examples: {"embedding": [np.asarray(values["embedding"][e.id], dtype=np.float32)
                                                          for e in examples]}),
    )
}
#: Every scalar column of the scores table, in registry order.
SCALAR_COLUMNS = tuple(column for indicator in INDICATORS.values() if not indicator.is_vector
                       for column in indicator.columns)


def preferred_direction(column: str) -> str:
    """The direction a selector favours for a scores column by default (its indicator's ``prefer``)."""
    for indicator in INDICATORS.values():
        if column in indicator.columns and indicator.prefer is not None:
            return indicator.prefer
    return "higher"


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
