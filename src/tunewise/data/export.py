"""The chosen examples as training data, in the shapes trainers read.

- ``messages``: JSONL, one ``{"messages": [...]}`` per example: TRL's conversational shape,
  axolotl's ``chat_template`` type and LLaMA-Factory's ShareGPT-style ``openai`` format.
- ``prompt_completion``: JSONL, TRL's conversational prompt–completion shape,
  ``{"prompt": [...], "completion": [{"role": "assistant", ...}]}`` (completion-only loss).
- ``alpaca``: a JSON list of ``{"instruction", "input", "output"}`` (LLaMA-Factory's Alpaca, with
  ``system`` and ``history`` when the conversation has them).

Every record keeps the example's id (``id``: the user's own id when the pool had one, by
``--id-field`` or an ``id`` field, else the content hash; ``tunewise_id``: the content hash), its
task and the record's other fields, so an export can be joined back to the user's data. :func:`llamafactory_dataset_info` gives the entry
LLaMA-Factory's ``dataset_info.json`` needs to read a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tunewise.errors import TunewiseError

EXPORT_FORMATS = ("messages", "prompt_completion", "alpaca")


def default_export_path(selection_path: str | os.PathLike, export_format: str) -> Path:
    """``X.jsonl`` → ``X.messages.jsonl``, ``X.prompt_completion.jsonl`` or ``X.alpaca.json``."""
    path = Path(selection_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    suffix = ".alpaca.json" if export_format == "alpaca" else f".{export_format}.jsonl"
    return path.with_name(stem + suffix)


def export_records(examples: Iterable, export_format: str) -> list[dict]:
    """The records of :func:`export_examples`, before encoding."""
    if export_format not in EXPORT_FORMATS:
        raise TunewiseError(f"unknown export format '{export_format}'", field="export",
                            fix="choose one of " + ", ".join(EXPORT_FORMATS))
    examples = list(examples)
    unlabelled = [example.id for example in examples if example.response is None]
    if unlabelled:
        raise TunewiseError(
            f"{len(unlabelled)} of the {len(examples)} selected examples have no response "
            f"(e.g. id {unlabelled[0]}), so they cannot be exported as training data",
            field="export",
            fix="label them first, or select from a labelled pool",
        )
    shape = {"messages": lambda e: {"messages": _messages(e)},
             "prompt_completion": lambda e: {"prompt": _messages(e)[:-1], "completion": _messages(e)[-1:]},
             "alpaca": _alpaca}[export_format]
    return [{**shape(example), **example_identity(example)} for example in examples]


def export_examples(examples: Iterable, export_format: str) -> bytes:
    """The chosen examples as training data, in selection order (see the module docstring).

    Raises TunewiseError for an unknown format or an example without a response.
    """
    from tunewise.io import encode_json, encode_jsonl

    records = export_records(examples, export_format)
    return encode_json(records) if export_format == "alpaca" else encode_jsonl(records)


def llamafactory_dataset_info(name: str, file_name: str, export_format: str) -> dict:
    """The ``dataset_info.json`` entry that lets LLaMA-Factory read an export as dataset ``name``."""
    if export_format == "alpaca":
        return {name: {"file_name": file_name, "columns": {"prompt": "instruction", "query": "input",
                                                            "response": "output", "system": "system",
                                                            "history": "history"}}}
    if export_format == "messages":
        return {name: {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                       "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                "assistant_tag": "assistant", "system_tag": "system"}}}
    raise TunewiseError(f"LLaMA-Factory reads the messages and alpaca exports, not {export_format}",
                        field="export", fix="export with --export messages or alpaca for LLaMA-Factory")


def example_identity(example) -> dict:
    """The example's ids, task and the user's other fields, as every per-example file tunewise
    writes for people and other tools carries them: ``id`` (the user's own id: the ``--id-field``,
    else the record's own ``id`` field, else the content hash), ``tunewise_id`` (the content hash),
    ``task``, then the record's other fields (never one named like a training-shape key)."""
    reserved = {"messages", "prompt", "completion", "instruction", "input", "output", "system", "history",
                "id", "tunewise_id", "task"}
    own = example.user_id
    if own is None:  # a record's own "id" field is the user's id without --id-field too
        own = _json_value(example.metadata.get("id"))
        own = None if isinstance(own, str) and not own.strip() else own
    return {"id": example.id if own is None else own, "tunewise_id": example.id, "task": example.task,
            **user_fields(example, reserved)}


def user_fields(example, reserved: Iterable[str] = ()) -> dict:
    """The record's other fields (its ``metadata``, less ``reserved`` names) as JSON can carry
    them, for every output that keeps them: dates and times as ISO 8601 text, decimals as text
    (exact), NumPy values as plain numbers and lists, bytes as UTF-8 text (base64 when they are
    not), NaN and infinity as null (missing, as pandas writes them); any other object as its text."""
    reserved = set(reserved)
    return {key: _json_value(value) for key, value in example.metadata.items() if key not in reserved}


def _json_value(value):
    import base64
    import datetime
    import math

    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, (datetime.date, datetime.time)):  # a datetime is a date
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return _json_value(value.tolist())
    return str(value)  # Decimal (exact as text) and anything else


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
