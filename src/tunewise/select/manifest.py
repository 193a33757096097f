"""The selection manifest on disk, and the chosen examples exported for training.

``selection.jsonl`` has one row per pick, in order::

    {"position": 0, "id": "…", "task": "…", "scores": {"loss": 1.93, "ifd": null, …}, "reason": "…"}

and ``selection.meta.json`` beside it holds the provenance: strategy and parameters, seed,
budget, per-task pool sizes and picks, the scores' own provenance and the tunewise version.
Every file is written atomically, all or none, and the same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tunewise import __version__
from tunewise.errors import TunewiseError
from tunewise.data.table import SCALAR_INDICATORS
from tunewise.select import Selection, Strategy

EXPORT_FORMATS = ("messages", "alpaca")


def meta_path(selection_path: str | os.PathLike) -> Path:
    """Where the provenance of ``selection_path`` lives: ``X.jsonl`` → ``X.meta.json``."""
    path = Path(selection_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.meta.json")


def default_export_path(selection_path: str | os.PathLike, export_format: str) -> Path:
    """``X.jsonl`` → ``X.messages.jsonl`` or ``X.alpaca.json``."""
    path = Path(selection_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    suffix = ".messages.jsonl" if export_format == "messages" else ".alpaca.json"
    return path.with_name(stem + suffix)


def selection_records(scores: pd.DataFrame, selection: Selection) -> list[dict]:
    """The manifest rows: position, id, task, scalar scores (NaN and ±inf as null) and reason."""
    positions = selection.positions
    indicators = [name for name in SCALAR_INDICATORS if name in scores.columns]
    values = {name: scores[name].to_numpy(dtype=np.float64)[positions].tolist() for name in indicators}
    ids = scores["id"].to_numpy()[positions].tolist()
    tasks = scores["task"].to_numpy()[positions].tolist()
    return [
        {
            "position": k,
            "id": str(ids[k]),
            "task": str(tasks[k]),
            "scores": {name: _json_float(values[name][k]) for name in indicators},
            "reason": selection.reasons[k],
        }
        for k in range(len(positions))
    ]


def selection_meta(
    scores: pd.DataFrame,
    selection: Selection,
    strategy: Strategy,
    *,
    seed: int,
    budget: int,
    scores_provenance: Mapping | None = None,
    scores_path: str | None = None,
) -> dict:
    """The provenance written to ``selection.meta.json``."""
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
    scores: pd.DataFrame,
    selection: Selection,
    meta: Mapping,
    extra_files: Mapping[Path, bytes] | None = None,
) -> list[Path]:
    """Write the manifest, its meta file and any ``extra_files``, all or none; return the paths."""
    path = Path(path)
    files = {
        path: encode_jsonl(selection_records(scores, selection)),
        meta_path(path): encode_json(meta),
        **(extra_files or {}),
    }
    write_files_atomically(files)
    return list(files)


def read_selection(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read a manifest and its meta file.

    Returns a DataFrame with columns ``position``, ``id``, ``task``, ``reason`` and one column per
    score (NaN where null), in pick order, and the meta dict.
    """
    path = Path(path)
    rows = []
    try:
        with path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise TunewiseError(f"not a JSON line ({error})", file=path, line=line_number) from None
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TunewiseError(
            "no such selection file", file=error.filename, fix="run `tunewise select SCORES -o FILE` first"
        ) from None
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


def export_examples(examples: Iterable, export_format: str) -> bytes:
    """The chosen examples as training data, in selection order.

    ``messages``: JSONL, one ``{"messages": [...]}`` per example (what TRL, axolotl and
    LLaMA-Factory read). ``alpaca``: a JSON list of ``{"instruction", "input", "output"}``, with
    ``system`` and ``history`` when the conversation has them. Every example needs a response.
    """
    if export_format not in EXPORT_FORMATS:
        raise TunewiseError(
            f"unknown export format '{export_format}'", field="export", fix="choose messages or alpaca"
        )
    examples = list(examples)
    unlabelled = [example.id for example in examples if example.response is None]
    if unlabelled:
        raise TunewiseError(
            f"{len(unlabelled)} of the {len(examples)} selected examples have no response "
            f"(e.g. id {unlabelled[0]}), so they cannot be exported as training data",
            field="export",
            fix="label them first, or select from a labelled pool",
        )
    if export_format == "messages":
        return encode_jsonl({"messages": _messages(example)} for example in examples)
    return encode_json([_alpaca(example) for example in examples])


def _messages(example) -> list[dict]:
    turns = [{"role": turn["role"], "content": turn["content"]} for turn in example.prompt]
    return [*turns, {"role": "assistant", "content": example.response}]


def _alpaca(example) -> dict:
    system = [turn["content"] for turn in example.prompt if turn["role"] == "system"]
    dialogue = [turn for turn in example.prompt if turn["role"] != "system"]
    roles = [turn["role"] for turn in dialogue]
    expected = ["user", "assistant"] * (len(dialogue) // 2) + ["user"]
    if roles != expected:
        raise TunewiseError(
            f"example {example.id}: its turns ({', '.join(roles) or 'none'}) do not alternate user and "
            "assistant ending with a user turn, which the Alpaca format needs",
            field="export",
            fix="export with --export messages",
        )
    record = {"instruction": dialogue[-1]["content"], "input": "", "output": example.response}
    if system:
        record["system"] = "\n\n".join(system)
    if len(dialogue) > 1:
        record["history"] = [
            [dialogue[i]["content"], dialogue[i + 1]["content"]] for i in range(0, len(dialogue) - 1, 2)
        ]
    return record


def encode_jsonl(records: Iterable[Mapping]) -> bytes:
    """One compact JSON object per line, UTF-8."""
    lines = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records)
    return "".join(lines).encode("utf-8")


def encode_json(value) -> bytes:
    """Indented JSON, UTF-8, ending in a newline."""
    return (json.dumps(value, ensure_ascii=False, allow_nan=False, indent=2) + "\n").encode("utf-8")


def write_files_atomically(files: Mapping[Path, bytes]) -> None:
    """Write every file to a temporary name beside it, then rename them all into place.

    If anything fails before the renames, no target file is touched and the temporaries are gone.
    """
    temporaries = {}
    try:
        for path, content in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporaries[temporary] = path
            temporary.write_bytes(content)
        for temporary, path in temporaries.items():
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:
            if temporary.exists():
                temporary.unlink()


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nan_if_none(value) -> float:
    return math.nan if value is None else value
