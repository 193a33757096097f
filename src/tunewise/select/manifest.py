"""The selection manifest on disk (the chosen examples exported for training: :mod:`tunewise.data.export`).

``selection.jsonl`` has one row per pick, in order::

    {"position": 0, "id": "…", "user_id": "…", "task": "…", "scores": {"loss": 1.93, "ifd": null, …},
     "reason": "…", "fields": {…}}

``user_id`` (the pool's ``--id-field``) and ``fields`` (the record's other fields) are there when
the manifest was written with the pool's examples (``tunewise plan``, ``tunewise select --pool``),
so it joins back to the user's data.

and ``selection.meta.json`` beside it holds the provenance: strategy and parameters, seed,
budget, per-task pool sizes and picks, the scores' own provenance and the tunewise version.
Every file is written atomically, all or none, and the same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tunewise import __version__
from tunewise.errors import TunewiseError
from tunewise.io import encode_json, encode_jsonl, write_files
from tunewise.data.export import user_fields
from tunewise.data.table import SCALAR_INDICATORS, ExampleTable, scores_of
from tunewise.select import Selection, Strategy


def meta_path(selection_path: str | os.PathLike) -> Path:
    """Where the provenance of ``selection_path`` lives: ``X.jsonl`` → ``X.meta.json``."""
    path = Path(selection_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.meta.json")


def selection_records(table: ExampleTable | pd.DataFrame, selection: Selection,
                      picks: Sequence | None = None) -> list[dict]:
    """The manifest rows: position, id, the user's own id, task, scalar scores (NaN and ±inf as
    null), reason and the user's other fields.

    The user's id (``--id-field``) and fields come from the picked examples: ``picks`` (the
    :class:`~tunewise.data.pool.Example` of each pick, in pick order, for a scores frame read apart
    from its pool), else ``table``'s own when it is an :class:`~tunewise.data.table.ExampleTable`;
    a scores frame alone gives rows without them.
    """
    positions = selection.positions
    scores = scores_of(table)
    if picks is None and isinstance(table, ExampleTable):
        picks = table.take(positions).examples
    if picks is not None and len(picks) != len(positions):
        raise ValueError(f"{len(picks)} picked examples for {len(positions)} picks")
    indicators = [name for name in SCALAR_INDICATORS if name in scores.columns]
    values = {name: scores[name].to_numpy(dtype=np.float64)[positions].tolist() for name in indicators}
    ids = scores["id"].to_numpy()[positions].tolist()
    tasks = scores["task"].to_numpy()[positions].tolist()
    return [
        {
            "position": k,
            "id": str(ids[k]),
            **({"user_id": picks[k].user_id} if picks is not None and picks[k].user_id is not None else {}),
            "task": str(tasks[k]),
            "scores": {name: _json_float(values[name][k]) for name in indicators},
            "reason": selection.reasons[k],
            **({"fields": user_fields(picks[k])} if picks is not None and picks[k].metadata else {}),
        }
        for k in range(len(positions))
    ]


def selection_meta(
    table: ExampleTable | pd.DataFrame,
    selection: Selection,
    strategy: Strategy,
    *,
    seed: int,
    budget: int,
    scores_provenance: Mapping | None = None,
    scores_path: str | None = None,
) -> dict:
    """The provenance written to ``selection.meta.json``."""
    scores = scores_of(table)
    tasks = scores["task"].astype(str).to_numpy()
    pool_sizes = Counter(tasks.tolist())
    picked = Counter(tasks[selection.positions].tolist())
    per_task = {task: {"pool": pool_sizes[task], "selected": picked[task]} for task in sorted(pool_sizes)}
    return {
        "strategy": strategy.name,
        "params": strategy.json_params(),
        "seed": seed,
        "budget": budget,
        "selected": len(selection),
        "pool": len(scores),
        "tasks": per_task,
        "details": selection.details,
        "notes": selection.notes,
        "scores": {"path": scores_path, "provenance": dict(scores_provenance or {})},
        "tunewise_version": __version__,
    }


def write_selection(
    path: str | os.PathLike,
    table: ExampleTable | pd.DataFrame,
    selection: Selection,
    meta: Mapping,
    extra_files: Mapping[Path, bytes] | None = None,
    picks: Sequence | None = None,
) -> list[Path]:
    """Write the manifest of ``selection`` (rows of ``table``; ``picks`` as in
    :func:`selection_records`), its meta file and any ``extra_files``, all or none; return the paths."""
    path = Path(path)
    files = {
        path: encode_jsonl(selection_records(table, selection, picks)),
        meta_path(path): encode_json(meta),
        **(extra_files or {}),
    }
    return write_files(files)


def read_selection(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read a manifest and its meta file.

    Returns a DataFrame with columns ``position``, ``id``, ``task``, ``reason`` and one column per
    score (NaN where null), in pick order, and the meta dict.
    """
    path = Path(path)
    fix = "pass the selection.jsonl written by `tunewise select` (with its .meta.json beside it)"
    rows = []
    try:
        with path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise TunewiseError(f"not a JSON line ({error})", file=path, line=line_number,
                                            fix=fix) from None
                    _check_pick(row, path, line_number, fix)
                    rows.append(row)
        meta_file = meta_path(path)
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TunewiseError(f"malformed JSON ({error.msg})", file=meta_file, line=error.lineno, fix=fix) from None
        if not isinstance(meta, dict):
            raise TunewiseError(f"expected a JSON object, got {type(meta).__name__}", file=meta_file, fix=fix)
    except FileNotFoundError as error:
        raise TunewiseError(
            "no such selection file", file=error.filename, fix="run `tunewise select SCORES -o FILE` first"
        ) from None
    except UnicodeDecodeError as error:
        raise TunewiseError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=path, fix=fix) from None
    frame = pd.DataFrame(
        {
            "position": [row["position"] for row in rows],
            "id": [row["id"] for row in rows],
            "task": [row["task"] for row in rows],
            "reason": [row["reason"] for row in rows],
        }
    )
    score_names = list(dict.fromkeys(name for row in rows for name in row["scores"]))
    for name in score_names:
        frame[name] = [_nan_if_none(row["scores"].get(name)) for row in rows]
    return frame, meta


def _check_pick(row, path: Path, line: int, fix: str) -> None:
    """One manifest row: an object with a whole-number position, text id and task, and scores."""
    if not isinstance(row, dict):
        raise TunewiseError(f"expected a JSON object, got {type(row).__name__}", file=path, line=line, fix=fix)
    expected = {"position": (int,), "id": (str,), "task": (str,), "reason": (str, type(None)), "scores": (dict,)}
    for name, kinds in expected.items():
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TunewiseError(f"expected {kinds[0].__name__}, got {type(value).__name__}", file=path, line=line,
                                field=name, fix=fix)


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nan_if_none(value) -> float:
    return math.nan if value is None else value
