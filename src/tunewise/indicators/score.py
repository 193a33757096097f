"""Score a pool: every requested indicator for every example, served from the cache when possible.

Model work happens only for examples whose values are not cached yet, in token-budgeted batches,
and each finished batch is committed to the cache at once, so a killed run resumes where it
stopped. Batches are planned within consecutive windows of :data:`SCORING_WINDOW` examples in
pool order, so a pool scored whole and the same pool scored window by window
(:mod:`tunewise.indicators.streaming`) run the same batches and get the same values.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import pandas as pd

from tunewise import __version__
from tunewise.errors import TunewiseError
from tunewise.model.base import Backend, EncodedExample, plan_batches
from tunewise.indicators.cache import ScoreCache
from tunewise.indicators.registry import DEFAULT_INDICATORS, OUTPUT_VERSIONS, TOKEN_COUNTS, resolve_indicators
from tunewise.model.load import cache_root
from tunewise.data.pool import Example

# Outputs read off the model's greedy answer: they need room to generate and depend on its length.
GENERATED_OUTPUTS = ("confidence", "confidence_ppl")

#: Examples per batch-planning window (and per streamed chunk): large enough that sorting by length
#: within it keeps padding as small as over the whole pool, small enough that one window's encodings
#: fit in memory whatever the pool's size.
SCORING_WINDOW = 4096

ProgressCallback = Callable[[int, int], None]
log = logging.getLogger(__name__)


def cache_output_name(output: str, max_new_tokens: int) -> str:
    """An output's name in the cache key: a greedy answer's confidence depends on how many tokens
    it may run to."""
    return f"{output}@{max_new_tokens}" if output in GENERATED_OUTPUTS else output


def required_outputs(indicators: Sequence[str]) -> list[str]:
    """The cached outputs (of the model, or token counts) that ``indicators`` are built from."""
    chosen = resolve_indicators(indicators)
    wanted = {output for indicator in chosen for output in indicator.outputs}
    return sorted(wanted - set(TOKEN_COUNTS)) + [output for output in TOKEN_COUNTS if output in wanted]


def score_pool(
    examples: Sequence[Example] | object,
    backend: Backend,
    indicators: Sequence[str] = DEFAULT_INDICATORS,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    max_batch_tokens: int | None = None,
    window: int = SCORING_WINDOW,
) -> pd.DataFrame:
    """The scores table (see :mod:`tunewise.data.table`) for ``examples`` (a list or a ``Pool``).

    ``progress(done, total)`` is called after every batch of model work with the number of
    examples finished out of those in batches that needed the model. Batches are planned within
    each ``window`` consecutive examples: a value of a model whose output depends on its batch's
    padding (the left-padded prompt pass of confidence and embedding) is then the same whether the
    pool is scored whole or in chunks of ``window`` examples.
    """
    examples = list(getattr(examples, "examples", examples))
    chosen = resolve_indicators(indicators)
    ids = [example.id for example in examples]
    model_outputs = required_outputs(indicators)
    values: dict[str, dict[str, object]] = {}
    cache = ScoreCache(cache_dir or cache_root() / "scores")
    try:
        for output in model_outputs:
            values[output] = cache.get(backend.fingerprint, cache_output_name(output, backend.max_new_tokens),
                                       OUTPUT_VERSIONS[output], ids)
        missing = {i for i, example_id in enumerate(ids) if any(example_id not in values[o] for o in model_outputs)}
        log.info("scoring %d examples (%s): %d from the cache, %d need the model", len(ids),
                 ", ".join(model_outputs) or "no model outputs", len(ids) - len(missing), len(missing))
        if missing:
            _compute_missing(examples, missing, model_outputs, backend, cache, values, progress, max_batch_tokens,
                             window)
    finally:
        cache.close()
    return _assemble(examples, chosen, values)


def _compute_missing(examples, missing, outputs, backend, cache, values, progress, max_batch_tokens,
                     window) -> None:
    # Batches are planned window by window, and a batch with any missing example is run whole:
    # a float depends slightly on its batch's padding and shape, so a resumed (or streamed) run
    # must see the same batches as an uninterrupted in-memory one to give identical scores.
    if window < 1:
        raise TunewiseError(f"the scoring window must be at least 1 example, got {window}", field="window")
    encoded = backend.encode([e.prompt for e in examples], [e.response for e in examples], sources=examples)
    check_context(backend, encoded, outputs, examples)
    planned = [[start + p for p in batch]
               for start in range(0, len(encoded), window)
               for batch in plan_scoring_batches(backend, encoded[start:start + window], outputs, max_batch_tokens)]
    batches = [batch for batch in planned if not missing.isdisjoint(batch)]
    total = sum(len(batch) for batch in batches)
    done = 0
    for batch in batches:
        batch_ids = [examples[p].id for p in batch]
        produced = score_encoded_batch(backend, [encoded[p] for p in batch], outputs)
        for output in outputs:
            pairs = list(zip(batch_ids, produced[output]))
            cache.put(backend.fingerprint, cache_output_name(output, backend.max_new_tokens),
                      OUTPUT_VERSIONS[output], pairs)
            values[output].update(pairs)
        done += len(batch)
        if progress is not None:
            progress(done, total)


def check_context(backend: Backend, encoded: Sequence[EncodedExample], outputs: Sequence[str],
                  examples: Sequence) -> None:
    """Refuse examples whose prompt plus response (or plus the greedy answer's room, for
    ``confidence``) exceed the model's context: scored anyway they give numbers from positions the
    model never saw, or crash a learned-position model."""
    from tunewise.model.lengths import check_fits

    context = getattr(backend, "context_length", None)
    generation_room = backend.max_new_tokens if "confidence" in outputs else 0
    check_fits([e.prompt_length + max(e.response_length, generation_room) for e in encoded], context, examples,
               what="prompt + response, or + answer room for confidence",
               limit_name=f"the model's {context}-token context")


def plan_scoring_batches(backend: Backend, encoded: Sequence[EncodedExample], outputs: Sequence[str],
                         max_batch_tokens: int | None = None) -> list[list[int]]:
    """Positions of ``encoded`` grouped into token-budgeted batches, each row leaving room for the
    greedy answer when ``confidence`` is among ``outputs``."""
    generation_room = backend.max_new_tokens if set(GENERATED_OUTPUTS) & set(outputs) else 0
    lengths = [e.prompt_length + max(e.response_length, generation_room) for e in encoded]
    return plan_batches(lengths, max_batch_tokens or getattr(backend, "max_batch_tokens", 4096))


def score_encoded_batch(backend: Backend, batch: Sequence[EncodedExample], outputs: Sequence[str]) -> dict[str, list]:
    """Every output in ``outputs`` for one batch: the model's in one pass, token counts from the
    encoding; one list per output, in batch order."""
    model_wanted = {o for o in outputs if o not in TOKEN_COUNTS}
    produced = backend.score_batch(batch, model_wanted) if model_wanted else {}
    produced["length"] = [e.response_length if e.response_ids is not None else None for e in batch]
    produced["prompt_length"] = [e.prompt_length for e in batch]
    return produced


def _assemble(examples, chosen, values) -> pd.DataFrame:
    columns: dict[str, object] = {"id": [example.id for example in examples],
                                  "task": [example.task for example in examples]}
    for indicator in chosen:
        columns.update(indicator.compute(values, examples))
    return pd.DataFrame(columns)


def score(pool, backend: Backend, indicators: Sequence[str] = DEFAULT_INDICATORS, *,
          cache_dir: str | None = None, progress: ProgressCallback | None = None,
          max_batch_tokens: int | None = None):
    """Score ``pool`` and return a new :class:`~tunewise.data.table.ExampleTable`: its examples
    with one column per indicator column (see :func:`score_pool`, which this wraps). The pool is
    held in memory; :func:`tunewise.indicators.streaming.score_file` scores a pool file of any size
    into a scores file chunk by chunk, with the same values."""
    from tunewise.data.table import ExampleTable

    examples = tuple(getattr(pool, "examples", pool))
    scores = score_pool(examples, backend, indicators, cache_dir=cache_dir, progress=progress,
                        max_batch_tokens=max_batch_tokens)
    return ExampleTable(examples, scores, getattr(pool, "source", None))


def complete(table, backend: Backend, columns: Sequence[str], cache_dir: str | None = None,
             progress: ProgressCallback | None = None, max_batch_tokens: int | None = None):
    """A new :class:`~tunewise.data.table.ExampleTable` with every column of ``columns`` present,
    the missing ones computed.

    A command that needs an indicator an earlier ``score`` did not ask for computes it here,
    through the cache, instead of failing. The input table is not modified.
    """
    import dataclasses

    from tunewise.indicators.registry import INDICATORS

    missing = [name for name, indicator in INDICATORS.items()
               if any(column in columns and column not in table.columns for column in indicator.columns)]
    if not missing:
        return table
    added = score_pool(table.examples, backend, missing, cache_dir=cache_dir, progress=progress,
                       max_batch_tokens=max_batch_tokens)
    extra = added.drop(columns=["id", "task"])
    scores = pd.concat([table.scores, extra[[c for c in extra.columns if c not in table.columns]]], axis=1)
    return dataclasses.replace(table, scores=scores)


def scores_provenance(backend: Backend, indicators: Sequence[str], source: str | None = None,
                      columns: dict | None = None) -> dict:
    """What the scores depend on, stored with them; ``columns`` is the pool's field mapping
    (:meth:`tunewise.data.pool.Columns.used`), recorded when one was given."""
    chosen = resolve_indicators(indicators)
    provenance = {
        "tunewise_version": __version__,
        "model_fingerprint": backend.fingerprint,
        "indicators": {indicator.name: indicator.version for indicator in chosen},
        "max_new_tokens": backend.max_new_tokens,
        "pool": source,
    }
    if columns:
        provenance["columns"] = dict(columns)
    return provenance
