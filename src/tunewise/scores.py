"""The scores table: one row per example, one column per indicator.

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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunewise.errors import TunewiseError

SCALAR_INDICATORS = ("loss", "ppl", "ifd", "confidence", "length", "prompt_length", "cot_length")
VECTOR_INDICATORS = ("embedding",)
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
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


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
    return frame, provenance
