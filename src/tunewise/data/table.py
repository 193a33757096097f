"""The scores table (one row per example, one column per indicator) and the :class:`ExampleTable`
that carries it together with its examples.

In memory it is a pandas DataFrame; on disk a Parquet file whose schema metadata carries the
provenance (model fingerprint, indicator versions, tunewise version). Columns:

- ``id`` (str), ``task`` (str): always present, one row per example, in pool order.
- ``loss``, ``ppl``, ``ifd``, ``confidence``, ``length``, ``prompt_length``, ``cot_length``:
  floats (NaN where an indicator was not computed, e.g. ``loss`` of an unlabelled example).
- ``embedding``: a fixed-size list of float32 per row, when computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunewise.errors import TunewiseError
from tunewise.indicators.registry import INDICATORS, SCALAR_COLUMNS

SCALAR_INDICATORS = SCALAR_COLUMNS
VECTOR_INDICATORS = tuple(column for indicator in INDICATORS.values() if indicator.is_vector
                          for column in indicator.columns)
_PROVENANCE_KEY = b"tunewise"


def embedding_matrix(scores: pd.DataFrame) -> np.ndarray:
    """The ``embedding`` column as a (rows, dim) float32 array."""
    if "embedding" not in scores.columns:
        raise TunewiseError(
            "the scores have no 'embedding' column",
            field="embedding",
            fix="score the pool with --indicators embedding",
        )
    return np.stack(scores["embedding"].to_numpy()).astype(np.float32, copy=False)


def write_scores(scores: pd.DataFrame, path: str | os.PathLike, provenance: dict) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    columns = {}
    for name in scores.columns:
        values = scores[name]
        if name in VECTOR_INDICATORS:
            matrix = embedding_matrix(scores)
            flat = pa.array(matrix.reshape(-1), type=pa.float32())
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
        else:
            columns[name] = pa.array(values.to_numpy())
    table = pa.table(columns)
    table = table.replace_schema_metadata(
        {_PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries that killed writers of ``path`` left behind (their process is gone)."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            os.kill(int(leftover.name.rsplit(".", 2)[-2]), 0)
        except (ValueError, ProcessLookupError):
            leftover.unlink(missing_ok=True)
        except PermissionError:
            pass  # the writer is alive under another user


def read_scores(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read a scores file written by :func:`write_scores`: the table and its provenance."""
    path = Path(path)
    if not path.exists():
        raise TunewiseError("no such scores file", file=path, fix="run `tunewise score POOL -o FILE` first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise TunewiseError(
            f"not a readable Parquet scores file ({error})",
            file=path,
            fix="pass the file written by `tunewise score -o`",
        ) from None
    for required in ("id", "task"):
        if required not in table.column_names:
            raise TunewiseError(
                f"the scores file has no '{required}' column",
                file=path,
                field=required,
                fix="pass the file written by `tunewise score -o`",
            )
    metadata = table.schema.metadata or {}
    provenance = json.loads(metadata.get(_PROVENANCE_KEY, b"{}"))
    frame = table.to_pandas()
    if "embedding" in frame.columns:
        frame["embedding"] = [np.asarray(v, dtype=np.float32) for v in frame["embedding"]]
    _check_scores(frame, path)
    return frame, provenance


def _check_scores(frame: pd.DataFrame, path: Path) -> None:
    """Refuse what no selector can use: repeated ids, unnamed tasks, infinite scores."""
    repeated = frame["id"][frame["id"].duplicated()]
    if len(repeated):
        raise TunewiseError(
            f"duplicate id '{repeated.iloc[0]}' ({len(repeated)} repeated rows)",
            file=path, field="id", fix="score each example once; ids are content hashes of prompt and response",
        )
    empty_tasks = int((frame["task"].isna() | (frame["task"].astype(str).str.strip() == "")).sum())
    if empty_tasks:
        raise TunewiseError(
            f"{empty_tasks} rows have an empty task name",
            file=path, field="task", fix="give every row a task, or re-score the pool without --task-field",
        )
    for column in SCALAR_INDICATORS:
        if column in frame.columns:
            infinite = int(np.isinf(frame[column].to_numpy(dtype=np.float64, na_value=np.nan)).sum())
            if infinite:
                raise TunewiseError(
                    f"column '{column}' is infinite in {infinite} of {len(frame)} rows",
                    file=path, field=column, fix="re-score those rows, or drop them from the scores",
                )


@dataclass(frozen=True)
class ExampleTable:
    """The examples and their score columns together, row for row (HF ``datasets``' habit).

    ``scores`` is the scores table described above; its row ``i`` belongs to ``examples[i]``
    (checked once, at construction). Transforms return a new table and never edit this one.
    """

    examples: tuple
    scores: pd.DataFrame
    source: str | None = None

    def __post_init__(self) -> None:
        ids = [example.id for example in self.examples]
        if ids != self.scores["id"].astype(str).tolist():
            raise TunewiseError("the scores do not belong to these examples (ids or order differ)",
                                file=self.source, fix="score this pool again, or pass the pool that was scored")

    @classmethod
    def join(cls, pool, scores: pd.DataFrame, *, file=None) -> ExampleTable:
        """The table of ``scores`` with each row's example looked up in ``pool`` by id."""
        examples = pool.examples_for(scores["id"], what="scored", file=file,
                                     fix="pass the same pool (and --task-field) that was scored")
        return cls(tuple(examples), scores.reset_index(drop=True), pool.source)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def columns(self) -> list[str]:
        return list(self.scores.columns)

    def take(self, positions) -> ExampleTable:
        """The rows at ``positions``, in that order (e.g. a :class:`~tunewise.select.Selection`'s)."""
        positions = [int(position) for position in positions]
        return ExampleTable(tuple(self.examples[p] for p in positions),
                            self.scores.iloc[positions].reset_index(drop=True), self.source)

    def with_scores(self, scores: pd.DataFrame) -> ExampleTable:
        """A new table over the same examples with another scores frame (same ids, same order)."""
        return ExampleTable(self.examples, scores.reset_index(drop=True), self.source)
