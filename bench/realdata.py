"""Pools built from the real datasets in ../shared/data, for benchmarks and evidence studies.

The data stay where they are; these functions read them and return tunewise ``Example`` lists
(or write a JSONL pool into a run folder outside the repository's tracked files).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
from pathlib import Path

from tunewise.data.pool import Example, parse_record

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise SystemExit(f"real data not found: {path} (the benchmarks read ../shared/data beside the checkout)")
    return path


def _examples(records: list[dict], task_field: str | None = "task") -> list[Example]:
    seen, examples = set(), []
    for record in records:
        example = parse_record(record, task_field)
        if example.id not in seen:
            seen.add(example.id)
            examples.append(example)
    return examples


def gsm8k(split: str = "train", limit: int | None = None, seed: int = 0) -> list[Example]:
    """GSM8K as question/answer examples (task ``gsm8k``), shuffled with ``seed`` when limited."""
    path = require_data("gsm8k", f"{split}.jsonl")
    records = [dict(json.loads(line), task="gsm8k") for line in path.read_text().splitlines() if line.strip()]
    if limit is not None:
        random.Random(seed).shuffle(records)
        records = records[:limit]
    return _examples(records)


def t0_tasks() -> dict[str, list[str]]:
    """T0 task name → its template files (only those with rows)."""
    tasks: dict[str, list[str]] = {}
    with require_data("t0_train_50k", "tasks.tsv").open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["rows"]) > 0:
                tasks.setdefault(row["task"], []).append(row["file"])
    return tasks


def t0(per_task: int | None = None, seed: int = 0, tasks: list[str] | None = None) -> list[Example]:
    """T0 prompt/completion examples labelled with their task (the trailing <|endoftext|> stripped)."""
    folder = require_data("t0_train_50k", "data_per_template")
    records = []
    for task, files in sorted(t0_tasks().items()):
        if tasks is not None and task not in tasks:
            continue
        rows = []
        for file in files:
            for line in (folder / file).read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    completion = record["completion"].replace("<|endoftext|>", "").strip()
                    if completion:
                        rows.append({"prompt": record["prompt"], "completion": completion, "task": task,
                                     "template": file.removesuffix(".jsonl")})
        random.Random(f"{seed}:{task}").shuffle(rows)
        records.extend(rows[:per_task] if per_task else rows)
    return _examples(records)


def bbh(task: str) -> list[Example]:
    """One BIG-Bench Hard task as input/target examples."""
    data = json.loads(require_data("bbh", "tasks", f"{task}.json").read_text())
    return _examples([{"question": e["input"], "answer": e["target"], "task": task} for e in data["examples"]])


def write_jsonl(examples: list[Example], path: Path) -> Path:
    """Write examples as tunewise-native JSONL (prompt messages, response, task)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for example in examples:
            record = {"prompt": list(example.prompt), "response": example.response, "task": example.task}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


_OPTION = re.compile(r"^\(([A-Z])\)", re.MULTILINE)
_LETTER_TARGET = re.compile(r"\(?[A-Z]\)?")


def letter_choices(prompt: str, target: str) -> list[str] | None:
    """The options an "(A) ... (B) ..." prompt lists, written the way ``target`` writes its letter
    ("(B)" or "B"); None when the target is no letter or the prompt lists fewer than two options
    or not the target's."""
    if not _LETTER_TARGET.fullmatch(target.strip()):
        return None
    letters = list(dict.fromkeys(_OPTION.findall(prompt)))
    bracketed = target.strip().startswith("(")
    choices = [f"({letter})" if bracketed else letter for letter in letters]
    return choices if len(choices) >= 2 and target.strip() in choices else None


def with_choices(examples: list[Example], max_labels: int = 10) -> list[Example]:
    """``examples`` with a ``choices`` field for the ``choice`` metric where one can be built:
    the listed letter options of a multiple-choice prompt, else the distinct gold answers of the
    example's T0 template (``template`` field) or task when there are at most ``max_labels``.
    Examples that get none are returned unchanged (``evaluate --metric choice`` then refuses their
    task, or uses its label set)."""
    groups: dict[str, list[str]] = {}
    for example in examples:
        key = example.metadata.get("template", example.task)
        groups.setdefault(key, [])
        if example.response not in groups[key]:
            groups[key].append(example.response)
    out = []
    for example in examples:
        choices = letter_choices(example.prompt[-1]["content"], example.response or "")
        if choices is None:
            labels = groups[example.metadata.get("template", example.task)]
            choices = labels if 2 <= len(labels) <= max_labels else None
        out.append(example if choices is None else
                   dataclasses.replace(example, metadata={**example.metadata, "choices": choices}))
    return out
