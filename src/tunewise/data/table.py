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
from tunewise.io import write_bytes

SCALAR_INDICATORS = SCALAR_COLUMNS
VECTOR_INDICATORS = tuple(column for indicator in INDICATORS.values() if indicator.is_vector
                          for column in indicator.columns)
PROVENANCE_KEY = b"tunewise"


def embedding_matrix(scores: pd.DataFrame) -> np.ndarray:
    """The ``embedding`` column as a (rows, dim) float32 array."""
    if "embedding" not in scores.columns:
        raise TunewiseError(
            "the scores have no 'embedding' column",
            field="embedding",
            fix="score the pool with --indicators embedding",
        )
    return np.stack(scores["embedding"].to_numpy()).astype(np.float32, copy=False)


def encode_scores(scores: pd.DataFrame, provenance: dict) -> bytes:
    """The scores table as the bytes of a Parquet file, its provenance in the schema metadata."""
    table = scores_arrow_table(scores).replace_schema_metadata(
        {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def scores_arrow_table(scores: pd.DataFrame) -> pa.Table:
    """The scores table as Arrow, without metadata: scalars column by column, an embedding as a
    fixed-size list of float32 (what :func:`encode_scores` writes and the streaming writer appends)."""
    columns = {}
    for name in scores.columns:
        values = scores[name]
        if name in VECTOR_INDICATORS:
            matrix = embedding_matrix(scores)
            flat = pa.array(matrix.reshape(-1), type=pa.float32())
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
        else:
            columns[name] = pa.array(values.to_numpy())
    return pa.table(columns)


def check_scores_path(path: str | os.PathLike) -> None:
    """Refuse a scores file name that does not end in ``.parquet``: the file is Parquet whatever its
    name, and ``scores.txt`` or ``scores.csv`` would mislead whoever opens it."""
    if Path(path).suffix.lower() != ".parquet":
        raise TunewiseError(f"a scores file is written as Parquet, and '{Path(path).name}' does not end in .parquet",
                            file=str(path), field="output", fix=f"pass -o {Path(path).with_suffix('.parquet')}")


def write_scores(scores: pd.DataFrame, path: str | os.PathLike, provenance: dict) -> None:
    """Write :func:`encode_scores` atomically: a temporary file in the same folder, then a rename.
    A ``path`` not ending in ``.parquet`` is refused (:func:`check_scores_path`)."""
    check_scores_path(path)
    write_bytes(path, encode_scores(scores, provenance))


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
    provenance = _read_provenance(table.schema.metadata or {}, path)
    frame = table.to_pandas()
    _check_columns(frame, path)
    if "embedding" in frame.columns:
        frame["embedding"] = [np.asarray(v, dtype=np.float32) for v in frame["embedding"]]
    _check_scores(frame, path)
    return frame, provenance


def _read_provenance(metadata: dict, path: Path) -> dict:
    """The provenance JSON object in the schema metadata; ``{}`` when there is none."""
    raw = metadata.get(PROVENANCE_KEY)
    if raw is None:
        return {}
    try:
        provenance = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TunewiseError(f"the provenance in the file's metadata is not readable JSON ({error})", file=path,
                            field="tunewise (schema metadata)",
                            fix="score the pool again with `tunewise score`, which writes it") from None
    if not isinstance(provenance, dict):
        raise TunewiseError(f"the provenance in the file's metadata is a {type(provenance).__name__}, not an object",
                            file=path, field="tunewise (schema metadata)",
                            fix="score the pool again with `tunewise score`, which writes it")
    return provenance


def _check_columns(frame: pd.DataFrame, path: Path) -> None:
    """Refuse columns of the wrong kind: ids and tasks that are not text, scores that are not numbers,
    embeddings that are not equal-length lists of finite numbers."""
    fix = "pass the file written by `tunewise score -o` (edited columns must keep their types)"
    ids = frame["id"]
    bad = [i for i, value in enumerate(ids) if not isinstance(value, str) or not value.strip()]
    if bad:
        raise TunewiseError(f"{len(bad)} rows have an empty id or one that is not text (row {bad[0] + 1}: "
                            f"{ids.iloc[bad[0]]!r})", file=path, field="id", fix=fix)
    # Empty and missing task names are reported by _check_scores; here only their type.
    tasks = frame["task"]
    bad = [i for i, value in enumerate(tasks) if value is not None and not isinstance(value, str)]
    if bad:
        raise TunewiseError(f"{len(bad)} rows have a task that is not text (row {bad[0] + 1}: "
                            f"{tasks.iloc[bad[0]]!r})", file=path, field="task", fix=fix)
    for column in SCALAR_INDICATORS:
        if column in frame.columns and not (pd.api.types.is_numeric_dtype(frame[column])
                                            and not pd.api.types.is_bool_dtype(frame[column])):
            raise TunewiseError(f"column '{column}' holds {frame[column].dtype} values, not numbers", file=path,
                                field=column, fix=fix)
    if "embedding" in frame.columns:
        lengths = set()
        for row, value in enumerate(frame["embedding"]):
            try:
                vector = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                vector = None
            if vector is None or vector.ndim != 1 or not np.isfinite(vector).all():
                raise TunewiseError(f"row {row + 1}: the embedding is not a list of finite numbers", file=path,
                                    field="embedding", fix=fix)
            lengths.add(len(vector))
        if len(lengths) > 1:
            raise TunewiseError(f"the embeddings have different lengths ({', '.join(map(str, sorted(lengths)))})",
                                file=path, field="embedding", fix=fix)


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
    def join(cls, pool, scores: pd.DataFrame, *, file=None, what: str = "scored") -> ExampleTable:
        """The table of ``scores`` with each row's example looked up in ``pool`` by id: the one join,
        for a scores file read apart from its pool. ``what`` names the rows in the error (e.g.
        "selected" for the picked rows of a selection)."""
        examples = pool.examples_for(scores["id"], what=what, file=file,
                                     fix="pass the same pool (and --task-field) that was scored")
        return cls(tuple(examples), scores.reset_index(drop=True), pool.source)

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        # The dataclass repr would print every example (tens of KB for a small pool).
        tasks = dict.fromkeys(example.task for example in self.examples)
        columns = [name for name in self.scores.columns if name not in ("id", "task")]
        shown = ", ".join(columns[:8]) + (f", … (+{len(columns) - 8})" if len(columns) > 8 else "")
        return (f"ExampleTable({len(self)} rows, {len(tasks)} tasks, columns: {shown or 'none'}"
                + (f", source={self.source!r})" if self.source else ")"))

    @property
    def columns(self) -> list[str]:
        return list(self.scores.columns)

    @property
    def user_ids(self) -> list[str | None]:
        """Each row's own id from the pool (``--id-field``), None where it had none."""
        return [example.user_id for example in self.examples]

    def take(self, positions) -> ExampleTable:
        """The rows at ``positions``, in that order (e.g. a :class:`~tunewise.select.Selection`'s)."""
        positions = [int(position) for position in positions]
        return ExampleTable(tuple(self.examples[p] for p in positions),
                            self.scores.iloc[positions].reset_index(drop=True), self.source)


def scores_of(table: ExampleTable | pd.DataFrame) -> pd.DataFrame:
    """The score columns of ``table``: an :class:`ExampleTable`'s, or a scores frame read on its own
    (``tunewise select`` reads a scores file without its pool)."""
    return table.scores if isinstance(table, ExampleTable) else table
