"""The picks to label, in the shape of the labelling tool, and the filled-in files read back.

``tunewise`` (default): JSONL records in the pool reader's prompt/response shape with
``response: null``; fill in ``response`` and the file is a labelled pool.

``label-studio``: a JSON list of Label Studio tasks, ``{"data": {"prompt": …, "task": …,
"pool_id": …}}``, for a text-area labelling config whose ``<TextArea name="response"
toName="prompt">`` holds the answer. Label Studio's JSON export of the labelled project
(``{"data": …, "annotations": [{"result": [{"from_name": "response", "value": {"text": [...]}}]}]}``)
reads back as a pool: the last annotation that was not cancelled gives the response.

``argilla``: JSONL of Argilla records, ``{"fields": {"prompt": …}, "metadata": {"task": …,
"pool_id": …}}``, for a dataset with a ``prompt`` text field and a ``response`` text question;
exported records with ``"responses": {"response": [{"value": …}]}`` read back as a pool (the
first submitted value).

Every shape keeps the example's task, its content-hash id (``pool_id``), the user's own id and
the record's other fields, and the pick's position in annotation order.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunewise.errors import TunewiseError

LABEL_FORMATS = ("tunewise", "label-studio", "argilla")
#: Fields tunewise writes into files it asks people to fill in; read back, they are no user text.
BOOKKEEPING = ("position", "pool_id")


def to_label_file_name(label_format: str) -> str:
    """The file a run folder holds the picks to label in, per format."""
    return {"tunewise": "to_label.jsonl", "label-studio": "to_label.label-studio.json",
            "argilla": "to_label.argilla.jsonl"}[label_format]


def to_label_records(examples: Iterable, label_format: str = "tunewise") -> list[dict]:
    """One record per example to label, in annotation order, in ``label_format``'s shape."""
    from tunewise.data.export import user_fields

    records = []
    for position, example in enumerate(examples):
        single_user_turn = len(example.prompt) == 1 and example.prompt[0]["role"] == "user"
        prompt = example.prompt[0]["content"] if single_user_turn else [dict(t) for t in example.prompt]
        user = user_fields(example, ("prompt", "response", "task", *BOOKKEEPING))
        if example.user_id is not None:
            user["id"] = example.user_id
        base = {"position": position, "task": example.task, "pool_id": example.id, **user}
        if label_format == "tunewise":
            records.append({**base, "prompt": prompt, "response": None})
        elif label_format == "label-studio":
            records.append({"data": {**base, "prompt": prompt}})
        else:
            # Argilla fields are text: a multi-turn prompt is shown as text and kept whole in metadata.
            turns = {} if isinstance(prompt, str) else {"prompt_turns": prompt}
            records.append({"fields": {"prompt": prompt if isinstance(prompt, str) else _as_text(prompt)},
                            "metadata": {**base, **turns}})
    return records


def encode_to_label(examples: Iterable, label_format: str = "tunewise") -> bytes:
    """The to-label file's bytes (JSONL, or a JSON list for Label Studio)."""
    from tunewise.io import encode_json, encode_jsonl

    if label_format not in LABEL_FORMATS:
        raise TunewiseError(f"unknown label format '{label_format}'", field="label-format",
                            fix="choose one of " + ", ".join(LABEL_FORMATS))
    records = to_label_records(examples, label_format)
    return encode_json(records) if label_format == "label-studio" else encode_jsonl(records)


def labelled_record(record: dict) -> dict | None:
    """A Label Studio or Argilla record as a prompt/response record; None for any other record."""
    if isinstance(record.get("data"), dict) and ("annotations" in record or "prompt" in record["data"]):
        base = dict(record["data"])
        base["response"] = _label_studio_answer(record.get("annotations") or [])
        return base
    if isinstance(record.get("fields"), dict) and "prompt" in record["fields"]:
        metadata = dict(record.get("metadata") or {})
        base = {**metadata, "prompt": metadata.pop("prompt_turns", record["fields"]["prompt"])}
        base.pop("prompt_turns", None)
        base["response"] = _argilla_answer(record.get("responses") or {})
        return base
    return None


def _label_studio_answer(annotations: list) -> str | None:
    for annotation in reversed(annotations):
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            text = (result.get("value") or {}).get("text") if isinstance(result, dict) else None
            if isinstance(text, list) and text and isinstance(text[0], str):
                return "\n".join(text)
            if isinstance(text, str):
                return text
    return None


def _argilla_answer(responses: dict) -> str | None:
    for response in responses.get("response") or []:
        if isinstance(response, dict) and response.get("status", "submitted") == "submitted":
            value = response.get("value")
            if isinstance(value, str):
                return value
    return None


def _as_text(turns: list[dict]) -> str:
    return "\n\n".join(f"{turn['role']}: {turn['content']}" for turn in turns)


__all__ = ["LABEL_FORMATS", "encode_to_label", "labelled_record", "to_label_file_name", "to_label_records"]
