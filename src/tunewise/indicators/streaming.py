"""Pools too large to hold in memory: read them in chunks and write their scores as they come.

:func:`iter_pool_batches` reads a pool chunk by chunk with the checks of
:func:`tunewise.data.pool.read_pool`; :func:`score_pool_streaming` scores each chunk with the local
engine (same cache, same batches, same values) and writes it as a part file, then joins the parts
into the scores Parquet file, which appears under its name only once complete. Memory is one chunk
(its examples, encodings and scores) plus 16 bytes per example for the duplicate check, however
large the pool. :func:`score_file` is the two together, for the Python API.

Every indicator streams, the model-based ones included: :func:`tunewise.indicators.score.score_pool`
plans its batches within windows of :data:`~tunewise.indicators.score.SCORING_WINDOW` examples, so a
chunk of that size runs exactly the batches the in-memory engine runs for it (a left-padded batch's
floats depend on its other rows; ``loss`` and IFD do not, see :mod:`tunewise.model.packed`).

A killed run resumes: each finished chunk stays as a part file in ``.NAME.parts`` beside the output
(with the provenance it was scored under), and the next run with the same pool and settings reads it
back instead of scoring the chunk again; the chunk in flight resumes from the score cache.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tunewise.model.base import Backend
from tunewise.errors import TunewiseError
from tunewise.io import parent_folders, atomic_path
from tunewise.data.pool import (Columns, Example, PoolReading, SkippedRecord, describe_source, expand_sources,
                                iter_examples, iter_records)
from tunewise.data.table import PROVENANCE_KEY, scores_arrow_table
from tunewise.indicators.registry import DEFAULT_INDICATORS
from tunewise.indicators.score import SCORING_WINDOW, score_pool, scores_provenance

DEFAULT_BATCH_SIZE = SCORING_WINDOW


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
    unused: dict | None = None,
    split: str | None = None,
    dataset_config: str | None = None,
) -> Iterator[list[Example]]:
    """The examples of a pool file in lists of up to ``batch_size``, read as they are asked for.

    Records are accepted, skipped and refused exactly as by :func:`tunewise.data.pool.read_pool`, with
    the same errors; with ``skip_bad`` each skipped record goes to ``on_skipped`` when it is met,
    and each exact repeat, merged into its first occurrence, to ``on_duplicate(line, first_line)``;
    text fields no reader used are counted in ``unused`` (field → records) as they are read.
    A file that cannot be read at all (missing, empty, unsupported) is reported by this call,
    before the first batch is asked for. JSONL and Parquet are read incrementally; JSON and CSV
    files are parsed whole by their readers first. ``path`` may be any source ``read_pool`` takes
    (a Hub id or saved DatasetDict with ``split`` and ``dataset_config``, a ``datasets`` object).
    """
    if batch_size < 1:
        raise TunewiseError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")
    parts = expand_sources(path)
    records = iter_records(parts[0], split=split, dataset_config=dataset_config)
    first = next(records, None)
    remaining = records if first is None else itertools.chain([first], records)
    return _batches(parts, remaining, task_field, batch_size, limit, split, dict(
        skip_bad=skip_bad, on_skipped=on_skipped, on_duplicate=on_duplicate, columns=columns,
        keep_duplicates=keep_duplicates, unused=unused, first_ids={}))


def _batches(parts, first_records, task_field, batch_size, limit, split, options: dict) -> Iterator[list[Example]]:
    first_lines = _FirstLines()
    batch: list[Example] = []
    kept = 0
    for index, part in enumerate(parts):
        records = first_records if index == 0 else iter_records(part)
        left = None if limit is None else limit - kept
        if left == 0:
            break
        for example in iter_examples(describe_source(part, split), records, task_field, first_lines=first_lines,
                                     limit=left, **options):
            batch.append(example)
            kept += 1
            if len(batch) == batch_size:
                yield batch
                batch = []
                first_lines.seal_batch()
    if batch:
        yield batch


def parts_folder(output: str | os.PathLike) -> Path:
    """Where :func:`score_pool_streaming` keeps the finished chunks of ``output`` until it is complete."""
    output = Path(output)
    return output.parent / f".{output.name}.parts"


def score_pool_streaming(
    batches: Iterable[Sequence[Example]],
    backend: Backend,
    indicators: Sequence[str],
    output: str | os.PathLike,
    provenance: dict,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    max_batch_tokens: int | None = None,
    window: int = SCORING_WINDOW,
) -> int:
    """Score chunks of examples one at a time and write the scores file; returns the row count.

    The file holds what :func:`tunewise.indicators.score.score_pool` followed by
    :func:`tunewise.data.table.write_scores` would write for the whole pool at once (the same table,
    schema, provenance and, when every chunk but the last holds a multiple of ``window`` examples,
    the same values), in one row group per chunk. Each scored chunk is written to
    :func:`parts_folder` at once; a chunk whose part file is there already, with the same example ids
    and provenance, is read back instead of scored, so a killed run resumes after its last finished
    chunk (a refused record or a full disk removes them instead, as nothing half-written may stay;
    the values scored so far stay in the cache). Only when the last chunk is in is the scores file
    written (under a temporary name, then renamed) and the parts removed. At most one chunk's
    examples, encodings and scores are held at a time. ``progress(done, None)`` follows the model's
    work (the pool's size is not known in advance).

    Raises TunewiseError for a pool without examples, and whatever the reader or the scoring raise.
    """
    output = Path(output)
    folder = parts_folder(output)
    with parent_folders(output):
        try:
            chunks, rows = _score_chunks(batches, backend, indicators, folder, provenance, cache_dir, progress,
                                         max_batch_tokens, window)
            _join_parts(folder, chunks, output, json.dumps(provenance, sort_keys=True).encode())
        except TunewiseError:
            # A refused record or a full disk: nothing half-written stays behind (the values scored so
            # far are in the cache, so the next run does not compute them again). A crash or a kill
            # keeps the finished chunks.
            shutil.rmtree(folder, ignore_errors=True)
            raise
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def _score_chunks(batches, backend, indicators, folder: Path, provenance: dict, cache_dir, progress,
                  max_batch_tokens, window) -> tuple[int, int]:
    """Score every chunk not already kept in ``folder``; returns the chunk and row counts."""
    stamp = json.dumps(provenance, sort_keys=True).encode()
    rows = chunks = 0
    reported = [0]

    def report(done: int) -> None:
        if progress is not None and done != reported[0]:
            reported[0] = done
            progress(done, None)

    chunk_iterator = iter(batches)
    # A `for` loop would keep the previous chunk alive while the reader builds the next one.
    while (chunk := next(chunk_iterator, None)) is not None:
        part = folder / f"{chunks:06d}.parquet"
        ids = [example.id for example in chunk]
        if not _part_is_for(part, ids, stamp):
            done_before = rows
            scores = score_pool(chunk, backend, indicators, cache_dir=cache_dir, max_batch_tokens=max_batch_tokens,
                                window=window, progress=lambda done, total: report(done_before + done))
            table = scores_arrow_table(scores).replace_schema_metadata({PROVENANCE_KEY: stamp})
            del scores
            with atomic_path(part) as temporary:
                pq.write_table(table, temporary)
            del table
        rows += len(ids)
        chunks += 1
        del chunk, ids
        report(rows)
    if chunks == 0:
        raise TunewiseError("the pool has no examples to score", fix="check the pool file")
    return chunks, rows


def _part_is_for(part: Path, ids: list[str], stamp: bytes) -> bool:
    """Whether ``part`` holds the scores of exactly these ids, scored under this provenance."""
    if not part.exists():
        return False
    try:
        schema = pq.read_schema(part)
        stored = pq.read_table(part, columns=["id"]).column("id").to_pylist()
    except (pa.ArrowException, OSError):
        return False
    return (schema.metadata or {}).get(PROVENANCE_KEY) == stamp and stored == ids


def _join_parts(folder: Path, chunks: int, output: str | os.PathLike, stamp: bytes) -> None:
    writer = None
    with atomic_path(output) as temporary:
        try:
            for index in range(chunks):
                table = pq.read_table(folder / f"{index:06d}.parquet")
                if writer is None:
                    writer = pq.ParquetWriter(temporary, table.schema.with_metadata({PROVENANCE_KEY: stamp}))
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()


def score_file(
    pool,
    backend: Backend,
    output: str | os.PathLike,
    indicators: Sequence[str] = DEFAULT_INDICATORS,
    *,
    task_field: str | None = None,
    columns: Columns | None = None,
    skip_bad: bool = False,
    keep_duplicates: bool = False,
    limit: int | None = None,
    split: str | None = None,
    dataset_config: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    max_batch_tokens: int | None = None,
    chunk_size: int = SCORING_WINDOW,
) -> int:
    """Score a pool of any size into the Parquet scores file ``output``, in bounded memory; returns
    the row count.

    ``pool`` is anything :func:`tunewise.data.pool.read_pool` reads (a file, glob, saved folder, Hub
    id with ``split``, or a ``datasets`` object), read ``chunk_size`` examples at a time
    (:func:`iter_pool_batches`) and scored chunk by chunk (:func:`score_pool_streaming`: resumable,
    batches planned within each chunk). With the default ``chunk_size`` the values are those of
    :func:`tunewise.indicators.score.score` on the pool read whole; with another, confidence and
    embedding may differ from them in the last float bits (other batches, other padding). Read the
    result with :func:`tunewise.data.table.read_scores`, or a column at a time with pyarrow. Raises
    TunewiseError as :func:`~tunewise.data.pool.read_pool` does.
    """
    reading = PoolReading(columns or Columns(), split, dataset_config, keep_duplicates)
    batches = iter_pool_batches(pool, task_field, chunk_size, skip_bad=skip_bad, limit=limit, columns=reading.columns,
                                keep_duplicates=keep_duplicates, split=split, dataset_config=dataset_config)
    # Recorded as `tunewise score` records it: the pool as given, the reading options beside it.
    provenance = scores_provenance(backend, indicators, describe_source(pool)) | reading.provenance()
    return score_pool_streaming(batches, backend, indicators, output, provenance, cache_dir=cache_dir,
                                progress=progress, max_batch_tokens=max_batch_tokens,
                                window=chunk_size)
