"""Pools too large to hold in memory: read them in batches and write their scores as they come.

:func:`iter_pool_batches` reads a pool file batch by batch with the checks of
:func:`tunewise.data.pool.read_pool`; :func:`score_pool_streaming` scores each batch with the local
engine (same cache, same values) and appends it to the scores Parquet file, which appears under
its name only once complete. Memory is one batch plus 16 bytes per example for the duplicate
check, however large the pool.

Only indicators whose value for an example does not depend on the other examples scored with it
stream (:func:`streamable`): the model-free ones. A model's float outputs change slightly with
their batch's padding, and the in-memory engine plans batches over the whole pool.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunewise.model.base import Backend
from tunewise.errors import TunewiseError
from tunewise.io import atomic_path
from tunewise.indicators.registry import resolve_indicators
from tunewise.data.pool import (Columns, Example, SkippedRecord, describe_source, expand_sources, iter_examples,
                                iter_records)
from tunewise.data.table import _PROVENANCE_KEY
from tunewise.indicators.score import score_pool

DEFAULT_BATCH_SIZE = 8192


def streamable(indicators: Sequence[str]) -> bool:
    """Whether every indicator is computed without the model (from the text or the tokenizer)."""
    return all(not indicator.model_outputs for indicator in resolve_indicators(indicators))


class _FirstLines:
    """The line of the first example with each id, at 16 bytes per example: sorted arrays for the
    batches already read, a dict for the batch being read."""

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.uint64)
        self._lines = np.empty(0, dtype=np.int64)
        self._recent: dict[int, int] = {}

    def get(self, example_id: str) -> int | None:
        key = int(example_id, 16)
        if key in self._recent:
            return self._recent[key]
        position = int(np.searchsorted(self._keys, np.uint64(key)))
        if position < len(self._keys) and int(self._keys[position]) == key:
            return int(self._lines[position])
        return None

    def add(self, example_id: str, line: int) -> None:
        self._recent[int(example_id, 16)] = line

    def seal_batch(self) -> None:
        keys = np.concatenate([self._keys, np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))])
        lines = np.concatenate([self._lines, np.fromiter(self._recent.values(), dtype=np.int64,
                                                         count=len(self._recent))])
        order = np.argsort(keys, kind="mergesort")
        self._keys, self._lines, self._recent = keys[order], lines[order], {}


def iter_pool_batches(
    path: str | os.PathLike,
    task_field: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    skip_bad: bool = False,
    limit: int | None = None,
    on_skipped: Callable[[SkippedRecord], None] | None = None,
    on_duplicate: Callable[[int, int], None] | None = None,
    columns: Columns | None = None,
    keep_duplicates: bool = False,
) -> Iterator[list[Example]]:
    """The examples of a pool file in lists of up to ``batch_size``, read as they are asked for.

    Records are accepted, skipped and refused exactly as by :func:`tunewise.data.pool.read_pool`, with
    the same errors; with ``skip_bad`` each skipped record goes to ``on_skipped`` when it is met,
    and each exact repeat, merged into its first occurrence, to ``on_duplicate(line, first_line)``.
    A file that cannot be read at all (missing, empty, unsupported) is reported by this call,
    before the first batch is asked for. JSONL and Parquet are read incrementally; JSON and CSV
    files are parsed whole by their readers first.
    """
    if batch_size < 1:
        raise TunewiseError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")
    parts = expand_sources(path)
    records = iter_records(parts[0])
    first = next(records, None)
    remaining = records if first is None else itertools.chain([first], records)
    return _batches(parts, remaining, task_field, batch_size, limit, dict(
        skip_bad=skip_bad, on_skipped=on_skipped, on_duplicate=on_duplicate, columns=columns,
        keep_duplicates=keep_duplicates, first_ids={}))


def _batches(parts, first_records, task_field, batch_size, limit, options: dict) -> Iterator[list[Example]]:
    first_lines = _FirstLines()
    batch: list[Example] = []
    kept = 0
    for index, part in enumerate(parts):
        records = first_records if index == 0 else iter_records(part)
        left = None if limit is None else limit - kept
        if left == 0:
            break
        for example in iter_examples(describe_source(part), records, task_field, first_lines=first_lines,
                                     limit=left, **options):
            batch.append(example)
            kept += 1
            if len(batch) == batch_size:
                yield batch
                batch = []
                first_lines.seal_batch()
    if batch:
        yield batch


def score_pool_streaming(
    batches: Iterable[Sequence[Example]],
    backend: Backend,
    indicators: Sequence[str],
    output: str | os.PathLike,
    provenance: dict,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Score batches of examples and write the scores file batch by batch; returns the row count.

    The file holds what :func:`tunewise.indicators.score.score_pool` followed by
    :func:`tunewise.data.table.write_scores` would write for the whole pool at once (the same table,
    schema and provenance), split into one row group per batch. It is written under a temporary
    name and renamed when the last batch is in, so an interrupted or failed run leaves no scores
    file behind; values already computed stay in the cache for the next run.
    ``progress(done, None)`` follows each batch (the pool's size is not known in advance).
    """
    if not streamable(indicators):
        model_indicators = [i.name for i in resolve_indicators(indicators) if i.model_outputs]
        raise TunewiseError(f"{', '.join(model_indicators)} need(s) the model and cannot be scored in streaming "
                            "batches", field="indicators", fix="score with tunewise.indicators.score.score_pool")
    writer = None
    rows = 0
    with atomic_path(output) as temporary:
        try:
            for batch in batches:
                table = _arrow_table(score_pool(batch, backend, indicators, cache_dir=cache_dir))
                if writer is None:
                    metadata = {_PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()}
                    writer = pq.ParquetWriter(temporary, table.schema.with_metadata(metadata))
                writer.write_table(table.cast(writer.schema))
                rows += table.num_rows
                if progress is not None:
                    progress(rows, None)
            if writer is None:
                raise TunewiseError("the pool has no examples to score", fix="check the pool file")
        finally:
            if writer is not None:
                writer.close()
    return rows


def _arrow_table(scores: pd.DataFrame) -> pa.Table:
    # Column by column as tunewise.data.table.write_scores converts them, so both files read the same.
    return pa.table({name: pa.array(scores[name].to_numpy()) for name in scores.columns})
