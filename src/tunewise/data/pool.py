"""Read example pools from JSONL, JSON, CSV, Parquet or a saved Hugging Face dataset.

Every record becomes an :class:`Example` with a chat-format prompt, an optional response and a
content-hash id, whatever shape it arrived in (OpenAI ``messages``, Alpaca, ShareGPT,
``prompt/completion``, ``question/answer``, or tunewise's own ``prompt/response``). Bad records
are reported with file, line and reason; by default the first one stops the read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from tunewise.data.label import BOOKKEEPING, labelled_record
from tunewise.errors import TunewiseError, did_you_mean


DEFAULT_TASK = "default"
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "model": "assistant", "bot": "assistant", "chatgpt": "assistant", "system": "system",
    # LLaMA-Factory's ShareGPT tool turns.
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}
RECORD_SHAPES = (
    "messages (OpenAI chat)",
    "conversations (ShareGPT)",
    "instruction/input/output (Alpaca; with system/history as LLaMA-Factory writes it)",
    "instruction/context/response (Dolly)",
    "prompt/completion (text, or TRL's conversational lists)",
    "prompt/response",
    "question/answer",
    "query/response",
    "problem/solution",
    "input/output",
)
# Simple single-turn shapes after the chat and Alpaca ones: (prompt field, response field), first match wins.
_PAIR_SHAPES = (("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("query", "response"),
                ("problem", "solution"), ("input", "output"))


@dataclass(frozen=True)
class Columns:
    """Which record fields hold what (LLaMA-Factory's ``columns`` idea); None means "find it by shape".

    Every field named here must exist in the records; the mapping is recorded in the provenance of
    every output made from the pool.
    """

    prompt_field: Optional[str] = field(default=None, metadata={"help": "Record field holding the prompt."})
    response_field: Optional[str] = field(default=None, metadata={"help": "Record field holding the answer."})
    messages_field: Optional[str] = field(default=None, metadata={
        "help": "Record field holding a chat (a list of {role, content} or ShareGPT {from, value} turns)."})
    system_field: Optional[str] = field(default=None, metadata={"help": "Record field holding a system prompt."})
    history_field: Optional[str] = field(default=None, metadata={
        "help": "Record field holding earlier [question, answer] pairs (LLaMA-Factory's history)."})
    id_field: Optional[str] = field(default=None, metadata={
        "help": "Record field holding your own example id (kept in every output)."})

    def used(self) -> dict[str, str]:
        """The fields given, for provenance."""
        return {name: value for name, value in vars(self).items() if value is not None}

    def provenance(self) -> dict[str, dict]:
        """``{"columns": the fields given}`` for an output's provenance, or ``{}`` when none was."""
        used = self.used()
        return {"columns": used} if used else {}


SPLIT_HELP = "Split of a Hub dataset or a saved DatasetDict (e.g. train)."
DATASET_CONFIG_HELP = "Configuration (subset) name of a Hub dataset."
KEEP_DUPLICATES_HELP = ("Keep exact repeats (same prompt and answer) as examples of their own; by default each "
                        "is merged into its first occurrence and listed.")


#: The provenance keys :meth:`PoolReading.provenance` writes.
READING_PROVENANCE_KEYS = ("columns", "split", "dataset_config", "keep_duplicates")


@dataclass(frozen=True)
class PoolReading:
    """How to read a pool: its field mapping (:class:`Columns`), which split and configuration of
    a Hub dataset or saved ``DatasetDict``, and whether exact repeats stay apart.

    The one declaration of the pool-reading flags of every command (``--prompt-field`` …
    ``--id-field``, ``--split``, ``--dataset-config``, ``--keep-duplicates``); :meth:`read` hands
    them to :func:`read_pool` and :meth:`provenance` records them with every output.
    """

    columns: Columns = field(default_factory=Columns)
    split: Optional[str] = field(default=None, metadata={"help": SPLIT_HELP})
    dataset_config: Optional[str] = field(default=None, metadata={"help": DATASET_CONFIG_HELP})
    keep_duplicates: bool = field(default=False, metadata={"help": KEEP_DUPLICATES_HELP})

    def source_options(self) -> dict:
        """The options other than the columns that were given (not at their default)."""
        return {name: value for name, value in (("split", self.split), ("dataset_config", self.dataset_config),
                                                ("keep_duplicates", self.keep_duplicates)) if value}

    def used(self) -> dict:
        """Every option given, the fields of :class:`Columns` included (flag name → value)."""
        return {**self.columns.used(), **self.source_options()}

    def provenance(self) -> dict:
        """``{"columns": …, "split": …, "dataset_config": …, "keep_duplicates": true}``, each only when given."""
        return {**self.columns.provenance(), **self.source_options()}

    @classmethod
    def from_provenance(cls, provenance: dict) -> "PoolReading":
        """The options recorded by :meth:`provenance` (TypeError or ValueError when unreadable)."""
        recorded = {key: provenance[key] for key in READING_PROVENANCE_KEYS if key in provenance}
        columns = recorded.pop("columns", None) or {}
        if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
            raise ValueError(f"unreadable columns {columns!r}")
        if not all(isinstance(recorded.get(key, ""), str) for key in ("split", "dataset_config")):
            raise ValueError(f"unreadable split or dataset_config in {recorded!r}")
        if not isinstance(recorded.get("keep_duplicates", False), bool):
            raise ValueError(f"unreadable keep_duplicates {recorded['keep_duplicates']!r}")
        return cls(Columns(**columns), **recorded)

    def read(self, path, task_field: str | None = None, **options) -> "Pool":
        """:func:`read_pool` of ``path`` with these options (``options``: ``skip_bad``, ``limit``)."""
        return read_pool(path, task_field, columns=self.columns, split=self.split,
                         dataset_config=self.dataset_config, keep_duplicates=self.keep_duplicates, **options)


@dataclass(frozen=True)
class Example:
    """One candidate training example. ``response`` is None in an unlabelled pool."""

    id: str
    task: str
    prompt: tuple[dict, ...]
    response: str | None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    #: The user's own id (``--id-field``), kept beside the content-hash ``id`` in every output.
    user_id: str | None = None
    # (file, line) the record was read from, for errors found later (length, chat template).
    location: tuple[str, int] | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def messages(self) -> list[dict]:
        """The whole conversation in OpenAI ``messages`` form (the prompt, then the response)."""
        turns = [dict(turn) for turn in self.prompt]
        if self.response is not None:
            turns.append({"role": "assistant", "content": self.response})
        return turns


@dataclass
class SkippedRecord:
    file: str
    line: int
    reason: str


@dataclass
class Pool:
    """The examples of one pool file, in file order, and what was skipped on the way."""

    source: str
    examples: list[Example]
    skipped: list[SkippedRecord] = field(default_factory=list)
    #: Exact repeats merged into their first occurrence: (line of the repeat, line kept).
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    #: Text fields no reader used, with how many records had them (reported, never dropped silently).
    unused_fields: dict[str, int] = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    #: The read options other than the columns that were given (:meth:`PoolReading.source_options`).
    read_options: dict = field(default_factory=dict)

    @property
    def reading(self) -> "PoolReading":
        """How the pool was read: the same options read a test or dev set the same way."""
        return PoolReading(Columns(**self.columns), **self.read_options)

    def provenance(self) -> dict:
        """How the pool was read, for an output's provenance (:meth:`PoolReading.provenance`)."""
        return self.reading.provenance()

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def tasks(self) -> list[str]:
        """Task names in order of first appearance."""
        return list(dict.fromkeys(example.task for example in self.examples))

    @property
    def labelled(self) -> bool:
        return bool(self.examples) and all(e.response is not None for e in self.examples)

    def notes(self) -> list[str]:
        """What the reader did that the user should hear of: merged repeats, text fields no reader used."""
        notes = []
        if self.duplicates:
            lines = ", ".join(f"{line} (= {kept})" for line, kept in self.duplicates[:10])
            more = f" and {len(self.duplicates) - 10} more" if len(self.duplicates) > 10 else ""
            notes.append(f"{len(self.duplicates)} exact repeats merged into their first occurrence: lines "
                         f"{lines}{more} (--keep-duplicates keeps them)")
        for name, count in self.unused_fields.items():
            notes.append(f"the text field '{name}' of {count} records is not part of the prompt or the answer "
                         "(it is kept with the example; map it with --prompt-field, --response-field or "
                         "--system-field if it should be)")
        return notes

    def by_id(self) -> dict[str, Example]:
        return {example.id: example for example in self.examples}

    def examples_for(self, ids, *, what: str, file=None, fix: str) -> list[Example]:
        """The examples with these ids, in the order given; ``what`` names the ids in the error.

        Raises TunewiseError naming how many ids are missing and the first of them.
        """
        by_id = self.by_id()
        ids = [str(example_id) for example_id in ids]
        missing = [example_id for example_id in ids if example_id not in by_id]
        if missing:
            raise TunewiseError(f"{len(missing)} {what} ids are not in the pool (e.g. {missing[0]})",
                                file=str(file if file is not None else self.source), fix=fix)
        return [by_id[example_id] for example_id in ids]


def example_id(prompt: list[dict] | tuple[dict, ...], response: str | None) -> str:
    """A stable content hash: the same prompt and response get the same id in any file or run."""
    canonical = json.dumps(
        {"prompt": [{"role": t["role"], "content": t["content"]} for t in prompt], "response": response},
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def read_pool(
    path,
    task_field: str | None = None,
    *,
    skip_bad: bool = False,
    limit: int | None = None,
    columns: Columns | None = None,
    keep_duplicates: bool = False,
    split: str | None = None,
    dataset_config: str | None = None,
    **unknown,
) -> Pool:
    """Read a pool into a :class:`Pool`.

    ``path`` is a file (JSONL, JSON, CSV, Parquet; ``.gz`` or ``.zst`` compressed), a glob of such
    files (read in sorted order), a folder saved with ``Dataset.save_to_disk`` (a ``DatasetDict``
    needs ``split``), a Hugging Face Hub dataset id (``owner/name``; with ``dataset_config`` and
    ``split``, from the local HF cache when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set),
    or, from Python, a ``datasets.Dataset``, ``datasets.IterableDataset`` or pandas ``DataFrame``.

    Parameters
    ----------
    task_field:
        The record field holding the task name; without it every example is task ``default``.
    skip_bad:
        Skip malformed records (listed in ``pool.skipped``) instead of stopping at the first.
    limit:
        Keep only the first ``limit`` good examples.
    columns:
        Which fields hold the prompt, response, chat, system prompt, history and id
        (:class:`Columns`); by default the record's shape decides.
    keep_duplicates:
        Keep exact repeats (same prompt and response) as examples of their own, with ``~2``, ``~3`` …
        after the repeat's id. By default a repeat is merged into its first occurrence and listed in
        ``pool.duplicates``: real pools hold repeats, and a repeat would only be scored, counted and
        picked twice.

    Raises :class:`~tunewise.errors.TunewiseError` (file, line, field, fix) for a bad record (unless
    ``skip_bad``), and for a ``columns.id_field`` id given to two examples: ids name examples in
    every output, so they must be unique. Exact repeats are merged before that check, so a repeat
    that carries its original's id is no clash (with ``keep_duplicates`` it is one). A field of
    :class:`Columns` passed as a keyword of its own (``id_field=...``) is refused with the
    ``columns=Columns(...)`` form to use instead.
    """
    if unknown:
        _refuse_unknown_options(unknown)
    source = describe_source(path, split)
    skipped: list[SkippedRecord] = []
    duplicates: list[tuple[int, int]] = []
    unused: dict[str, int] = {}
    examples: list[Example] = []
    first_lines = _FirstLines()
    first_ids: dict = {}
    for part in expand_sources(path):
        left = None if limit is None else limit - len(examples)
        if left == 0:
            break
        records = iter_records(part, split=split, dataset_config=dataset_config)
        examples += iter_examples(describe_source(part, split), records, task_field, columns=columns,
                                  skip_bad=skip_bad, keep_duplicates=keep_duplicates, limit=left,
                                  first_lines=first_lines, first_ids=first_ids, on_skipped=skipped.append,
                                  on_duplicate=lambda line, kept: duplicates.append((line, kept)), unused=unused)
    reading = PoolReading(columns or Columns(), split, dataset_config, keep_duplicates)
    return Pool(source=str(source), examples=examples, skipped=skipped, duplicates=duplicates,
                unused_fields=unused, columns=reading.columns.used(), read_options=reading.source_options())


def _refuse_unknown_options(unknown: dict) -> None:
    """A TypeError would not say that the field mapping goes in ``columns``: say it, with the call to write."""
    import inspect
    from dataclasses import fields

    column_fields = [f.name for f in fields(Columns)]
    name, value = next(iter(unknown.items()))
    if name in column_fields:
        given = ", ".join(f"{key}={val!r}" for key, val in unknown.items() if key in column_fields)
        raise TunewiseError(f"read_pool has no option '{name}': the record fields go in columns", field=name,
                            fix=f"pass columns=Columns({given}) (from tunewise import Columns)")
    known = [p for p in inspect.signature(read_pool).parameters if p not in ("path", "unknown")]
    raise TunewiseError(f"read_pool has no option '{name}'", field=name,
                        fix=did_you_mean(name, known + column_fields))


class _FirstLines(dict):
    """Example id → the line it was first read at (the streaming reader keeps a compact one)."""

    def add(self, example_id: str, line: int) -> None:
        self.setdefault(example_id, line)


def iter_examples(path: Path, records, task_field: str | None = None, *, columns: Columns | None = None,
                  skip_bad: bool = False, keep_duplicates: bool = False, limit: int | None = None,
                  first_lines=None, first_ids: dict | None = None, on_skipped=None, on_duplicate=None,
                  unused: dict | None = None) -> Iterator[Example]:
    """The examples of ``records`` (numbered raw records of ``path``), as :func:`read_pool` keeps them.

    The one read loop of the pool readers (in memory and streaming): each bad record is refused
    with its line, or with ``skip_bad`` passed to ``on_skipped``; an exact repeat goes to
    ``on_duplicate(line, first_line)`` (or is kept under a ``~N`` id with ``keep_duplicates``); text
    fields no reader used are counted in ``unused``. ``first_lines`` remembers where each id was
    first seen (a dict by default), ``first_ids`` where each user id (``columns.id_field``) was: a
    user id met again on a record that is no merged exact repeat is refused (or skipped with
    ``skip_bad``). After the last record, a pool with no usable example is refused.
    """
    first_lines = _FirstLines() if first_lines is None else first_lines
    first_ids = {} if first_ids is None else first_ids
    repeats: dict[str, int] = {}
    kept = skipped = 0
    saw_task_field = False
    task_seen_at = None  # (file, line) of the first record with the task field
    for line, record in records:
        try:
            example = parse_record(record, task_field, columns)
            # The exact-repeat merge below comes before the id check: a merged repeat is no id clash.
            merged = not keep_duplicates and first_lines.get(example.id) is not None
            if example.user_id is not None and not merged:
                _check_new_user_id(example.user_id, path, line, first_ids, columns.id_field, keep_duplicates)
        except TunewiseError as error:
            if not skip_bad:
                fix = error.fix
                if task_seen_at is not None and error.message == _no_task_field(task_field):
                    # The name is right: other records have the field, this one lacks it.
                    fix = (f"give this record a '{task_field}' as {task_seen_at[0]}:{task_seen_at[1]} has, or pass "
                           "--skip-bad to skip the records without one")
                raise TunewiseError(error.message, file=str(path), line=line, field=error.field, fix=fix) from None
            skipped += 1
            if on_skipped is not None:
                on_skipped(SkippedRecord(str(path), line, str(error.message)))
            continue
        first_line = first_lines.get(example.id)
        if first_line is not None:
            if not keep_duplicates:
                if on_duplicate is not None:
                    on_duplicate(line, first_line)
                continue
            repeats[example.id] = repeats.get(example.id, 1) + 1
            example = replace(example, id=f"{example.id}~{repeats[example.id]}")
        else:
            first_lines.add(example.id, line)
        # parse_record refuses a record without the task field, so any kept example had one
        # (for a Label Studio or Argilla record, inside its data or metadata).
        saw_task_field = task_field is not None
        if saw_task_field and task_seen_at is None:
            task_seen_at = (str(path), line)
        if unused is not None:
            for name, value in example.metadata.items():
                if isinstance(value, str) and value.strip() and name != task_field and name not in BOOKKEEPING:
                    unused[name] = unused.get(name, 0) + 1
        kept += 1
        # Rebound, not yielded as a temporary: while the caller holds the example, this frame holds
        # the same object, never a second copy (the streaming reader counts what it holds).
        example = replace(example, location=(str(path), line))
        yield example
        if limit is not None and kept >= limit:
            break
    check_pool_was_usable(path, kept, skipped, task_field, saw_task_field)


def _check_new_user_id(user_id: str, path, line: int, first_ids: dict, id_field: str, keep_duplicates: bool) -> None:
    """Remember where ``user_id`` was first read, or refuse it when another example had it."""
    first = first_ids.get(user_id)
    if first is None:
        first_ids[user_id] = (str(path), line)
        return
    where = f"line {first[1]}" + ("" if first[0] == str(path) else f" of {first[0]}")
    raise TunewiseError(f"the id '{user_id}' is the id of {where} too: ids must be unique in a pool",
                        field=id_field, fix="give every record its own id" + (
                            ", or drop --keep-duplicates to merge exact repeats" if keep_duplicates else
                            " (exact repeats of a record may share its id: they are merged)"))


def read_labelled_pool(path: str | Path, task_field: str | None, role: str, reading: PoolReading | None = None) -> Pool:
    """Read a pool whose every example has a response; ``role`` (e.g. "dev") names it in the error,
    ``reading`` says how to read it (:class:`PoolReading`)."""
    pool = (reading or PoolReading()).read(path, task_field)
    unlabelled = [example.id for example in pool.examples if example.response is None]
    if unlabelled:
        raise TunewiseError(f"{len(unlabelled)} of {len(pool)} {role} examples have no response "
                            f"(first: {unlabelled[0]})", file=str(path), field="response",
                            fix=f"give the {role} set gold answers")
    return pool


def check_pool_was_usable(path: Path, kept: int, skipped: int, task_field: str | None, saw_task_field: bool) -> None:
    """After reading a whole pool file: refuse one with no usable example, or a --task-field no record has."""
    if not kept:
        raise TunewiseError(
            "the pool has no usable examples" + (f" ({skipped} bad records skipped)" if skipped else ""),
            file=str(path),
            fix="check the file holds records in one of the shapes: " + ", ".join(RECORD_SHAPES),
        )
    if task_field is not None and not saw_task_field:
        raise TunewiseError(f"no record has the task field '{task_field}'", file=str(path),
                            field=task_field, fix="name an existing field with --task-field")


_GLOB_CHARACTERS = frozenset("*?[")
_COMPRESSIONS = (".gz", ".zst")


def describe_source(path, split: str | None = None) -> str:
    """How a pool source is named in errors and provenance."""
    if isinstance(path, (str, Path)):
        return str(path) if split is None else f"{path}[{split}]"
    name = getattr(getattr(path, "info", None), "dataset_name", None) or type(path).__name__
    return f"<{name}>"


def iter_records(path, *, split: str | None = None, dataset_config: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line or record number, raw record) from any supported source (see :func:`read_pool`)."""
    if not isinstance(path, (str, Path)):
        yield from _iter_object(path)
        return
    text = getattr(path, "given", None) or str(path)
    path = Path(path)
    if not path.exists():
        if _looks_like_hub_id(text):
            yield from _iter_hub(text, split, dataset_config)
            return
        raise TunewiseError("no such file or folder", file=text,
                            fix="check the path (a Hub dataset id has the shape owner/name)")
    if path.is_dir():
        yield from _iter_saved_dataset(path, split)
        return
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSIONS else None
    suffix = (suffixes[-2] if len(suffixes) == 2 else "") if compression else (suffixes[-1] if suffixes else "")
    if suffix not in SUPPORTED_SUFFIXES:
        raise TunewiseError(
            f"unsupported pool file type '{suffix or '(none)'}'",
            file=str(path),
            fix=f"use one of {', '.join(SUPPORTED_SUFFIXES)} (optionally .gz or .zst), a glob, a Hub dataset id, "
                "or a folder saved with Dataset.save_to_disk",
        )
    if path.stat().st_size == 0:
        raise TunewiseError("the file is empty", file=str(path), fix="point at a file with records")
    if compression is not None and suffix == ".parquet":
        raise TunewiseError("a Parquet file is compressed inside already", file=str(path),
                            fix="decompress it to a plain .parquet file")
    if suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    reader = {".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv}[suffix]
    if compression is None:
        yield from reader(path, _binary_opener(path, compression))
        return
    _check_compressed_header(path, compression)
    try:
        yield from reader(path, _binary_opener(path, compression))
    except TunewiseError:
        raise
    except Exception as error:  # gzip, zlib and zstandard raise unrelated types for a damaged stream
        raise TunewiseError(f"the {compression} data is damaged or cut short ({type(error).__name__}: {error})",
                            file=str(path), fix="compress the file again, or pass the uncompressed file") from None


# The first bytes of a gzip member (RFC 1952) and of a zstd frame (RFC 8878).
_MAGIC = {".gz": (b"\x1f\x8b", "gzip", "gzip"), ".zst": (b"\x28\xb5\x2f\xfd", "zstd", "zstd")}


def _check_compressed_header(path: Path, compression: str) -> None:
    """Refuse a ``.gz``/``.zst`` file whose first bytes are not that format's (a mis-named plain file)."""
    magic, name, tool = _MAGIC[compression]
    with open(path, "rb") as handle:
        if handle.read(len(magic)) == magic:
            return
    plain = path.with_suffix("")
    raise TunewiseError(f"not a {name} file, though its name ends in {compression}", file=str(path),
                        fix=f"rename it to {plain.name} if it is not compressed, or compress it with {tool}")


def _binary_opener(path: Path, compression: str | None):
    """A function that opens ``path`` for reading bytes, decompressing ``.gz`` or ``.zst`` on the way
    (errors still name the file as the user gave it)."""
    if compression is None:
        return lambda: open(path, "rb")
    if compression == ".gz":
        import gzip

        return lambda: gzip.open(path, "rb")
    try:
        import zstandard
    except ImportError:
        raise TunewiseError("reading .zst files needs the zstandard package", file=str(path),
                            fix="pip install 'tunewise[hub]' (zstandard), or decompress the file first") from None
    # Buffered so that the JSONL reader can iterate it line by line.
    return lambda: io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))


def expand_sources(path) -> list:
    """A glob's files in sorted order; any other source as itself."""
    text = str(path) if isinstance(path, (str, Path)) else ""
    if not (_GLOB_CHARACTERS & set(text)) or Path(text).exists():
        return [path]
    import glob

    files = sorted(glob.glob(text, recursive=True))
    if not files:
        raise TunewiseError("the glob matches no file", file=text, fix="check the pattern (quote it in the shell)")
    return files


class SourcePath(type(Path())):
    """A path that keeps the text it was typed as: ``Path("./d/typo")`` is ``d/typo``, which has the
    shape of a Hub dataset id, while ``./d/typo`` is plainly a local path (the command line reads
    pool arguments into one). Paths derived from it are plain paths."""

    def __new__(cls, text):
        self = super().__new__(cls, text)
        self.given = str(text)
        return self


def _looks_like_hub_id(text: str) -> bool:
    """``owner/name`` or a bare ``name``; never text that looks local: ``./``, ``../``, ``/`` or ``~``
    at the start, a file suffix, or more than one ``/``."""
    parts = text.split("/")
    return (len(parts) <= 2 and all(parts) and not Path(text).suffix
            and not text.startswith((".", "~", "/")) and "\\" not in text)


def _iter_hub(dataset_id: str, split: str | None, dataset_config: str | None) -> Iterator[tuple[int, Any]]:
    import os

    try:
        import datasets
    except ImportError:
        raise TunewiseError(f"'{dataset_id}' is no file, and reading a Hub dataset needs the datasets package",
                            file=dataset_id, fix="pip install datasets") from None
    offline = any(os.environ.get(name, "").lower() in ("1", "true", "yes")
                  for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if split is None:
        raise TunewiseError("no such file or folder; read as a Hugging Face Hub dataset id, it needs a split",
                            file=dataset_id, field="split",
                            fix="check the path, or for a Hub dataset pass --split train (or the split you want)")
    try:
        dataset = datasets.load_dataset(dataset_id, dataset_config, split=split)
    except Exception as error:  # the datasets library raises many types for a missing or unreadable dataset
        how = ("it is not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE): download it "
               "once online, or unset HF_HUB_OFFLINE") if offline else "check the id, --dataset-config and --split"
        raise TunewiseError(f"cannot load the Hub dataset ({type(error).__name__}: {str(error)[:200]})",
                            file=dataset_id, fix=how) from None
    yield from _iter_object(dataset)


def _iter_object(data) -> Iterator[tuple[int, Any]]:
    """Records of a ``datasets.Dataset``/``IterableDataset`` or a pandas DataFrame, numbered from 1."""
    if hasattr(data, "to_dict") and hasattr(data, "columns") and hasattr(data, "iloc"):
        rows = data.to_dict(orient="records")
    elif hasattr(data, "__iter__") and hasattr(data, "features"):
        rows = data
    else:
        raise TunewiseError(f"cannot read a pool from a {type(data).__name__}",
                            fix="pass a path, a Hub id, a datasets.Dataset or IterableDataset, or a DataFrame")
    for number, record in enumerate(rows, start=1):
        yield number, record


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8-sig")  # tolerate the byte-order mark some editors write
    except UnicodeDecodeError as error:
        raise TunewiseError(f"not valid UTF-8 (byte {error.start})", file=str(path), line=line,
                            fix="re-encode the file as UTF-8") from None


def _parse_json(text: str):
    """``json.loads`` with every way hostile text can fail turned into ``json.JSONDecodeError``."""
    def refuse_constant(name: str):
        # Python's json reads NaN and Infinity, which JSON does not have: a NaN answer would
        # silently make a labelled example unlabelled.
        raise json.JSONDecodeError(f"{name} is not a JSON value (write null for a missing value)", text,
                                   max(text.find(name), 0))

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise json.JSONDecodeError(str(error).split(":")[0], text, 0) from None


def _iter_jsonl(path: Path, open_binary) -> Iterator[tuple[int, Any]]:
    with open_binary() as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = _decode(raw, path, number).strip()
            except TunewiseError as error:
                yield number, _BadRecord(error.message, error.fix)
                continue
            if not text:
                continue
            try:
                yield number, _parse_json(text)
            except json.JSONDecodeError as error:
                yield number, _BadRecord(f"malformed JSON ({error.msg} at column {error.colno})",
                                         "fix or remove this line")


def _read_all(open_binary) -> bytes:
    with open_binary() as handle:
        return handle.read()


def _iter_json(path: Path, open_binary) -> Iterator[tuple[int, Any]]:
    text = _decode(_read_all(open_binary), path, 1)
    try:
        data = _parse_json(text)
    except json.JSONDecodeError as error:
        raise TunewiseError(f"malformed JSON ({error.msg})", file=str(path), line=error.lineno,
                            fix="fix the JSON, or write one record per line as JSONL") from None
    if isinstance(data, dict):
        lists = [key for key in ("examples", "data", "instances", "rows") if isinstance(data.get(key), list)]
        if not lists:
            raise TunewiseError("a JSON pool must be a list of records or hold one under 'examples' or 'data'",
                                file=str(path), fix="wrap the records in a list")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise TunewiseError("a JSON pool must be a list of records", file=str(path), fix="wrap the records in a list")
    for number, record in enumerate(data, start=1):
        yield number, record


def _iter_csv(path: Path, open_binary) -> Iterator[tuple[int, Any]]:
    """Records of a CSV file with a header row, numbered by the line each starts on.

    A row with more or fewer cells than the header is a bad record (its cells would otherwise land
    in the wrong fields or vanish); a quote left open swallows the rest of the file, so it stops the
    read with the line it opened on.
    """
    text = _decode(_read_all(open_binary), path, 1)
    # strict: a quote left open is an error at the end of the file, not one giant last cell.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    # Long prompts are legitimate: lift the csv module's 128 KiB cell limit for this read only.
    previous_limit = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    rows = []
    start = 1
    try:
        # line_num counts physical lines, so a row starts one after where the last one ended.
        for cells in reader:
            rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as error:
        opened = f"a quote opened on line {start} is never closed" if "end of data" in str(error) else str(error)
        raise TunewiseError(f"malformed CSV ({opened})", file=str(path), line=start,
                            fix="close or double the quote (\"\") on this line, or write the pool as JSONL") from None
    finally:
        csv.field_size_limit(previous_limit)
    rows = [(line, cells) for line, cells in rows if cells]  # blank lines hold no record
    if not rows:
        return
    (_, header), *rows = rows
    for line, cells in rows:
        if len(cells) == len(header):
            yield line, dict(zip(header, cells))
        else:
            kind = "more" if len(cells) > len(header) else "fewer"
            yield line, _BadRecord(f"malformed CSV row: {len(cells)} cells, {kind} than the {len(header)} columns "
                                   f"of the header ({', '.join(header)})",
                                   "quote any cell holding a comma or line break, and give every row one cell per "
                                   "column (an empty cell for a missing value)")


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise TunewiseError(f"not a readable Parquet file ({error})", file=str(path),
                            fix="check the file is complete") from None
    yield from _numbered_records(parquet.iter_batches(batch_size=8192), path, "Parquet")


def _numbered_records(batches, path: Path, kind: str, first: int = 1) -> Iterator[tuple[int, Any]]:
    """Records of Arrow record batches, numbered from ``first``; a corrupt batch is a TunewiseError."""
    number = first - 1
    batches = iter(batches)
    while True:
        try:
            batch = next(batches, None)
            records = None if batch is None else batch.to_pylist()
        except Exception as error:  # pyarrow raises several unrelated types for corrupt data
            raise TunewiseError(f"corrupt {kind} data after record {number} ({error})", file=str(path),
                                line=number + 1, fix="the file is damaged or incomplete: write it again") from None
        if records is None:
            return
        for record in records:
            number += 1
            yield number, record


def _iter_saved_dataset(path: Path, split: str | None = None) -> Iterator[tuple[int, Any]]:
    """A folder written by ``Dataset.save_to_disk`` (Arrow stream files in order), or by
    ``DatasetDict.save_to_disk`` (one such folder per split; ``split`` chooses)."""
    import pyarrow as pa

    if (path / "dataset_dict.json").exists():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise TunewiseError(f"unreadable dataset_dict.json ({type(error).__name__})",
                                file=str(path / "dataset_dict.json"), fix="save the DatasetDict again") from None
        if split not in splits:
            raise TunewiseError(f"this DatasetDict has the splits {', '.join(map(str, splits))}"
                                + ("" if split is None else f", not '{split}'"), file=str(path), field="split",
                                fix="choose one with --split " + str(splits[0] if splits else "train"))
        yield from _iter_saved_dataset(path / split)
        return
    arrow_files = sorted(path.glob("*.arrow"))
    not_a_dataset_fix = "pass a pool file, or a folder written by Dataset.save_to_disk"
    if not arrow_files or not (path / "state.json").exists():
        raise TunewiseError("this folder is not a saved Hugging Face dataset (no state.json / *.arrow)",
                            file=str(path), fix=not_a_dataset_fix)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        ordered = [path / entry["filename"] for entry in state.get("_data_files", [])] or arrow_files
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise TunewiseError(f"unreadable state.json ({type(error).__name__}: {error})", file=str(path / "state.json"),
                            field="_data_files", fix=not_a_dataset_fix) from None
    number = 0
    for arrow_file in ordered:
        if not arrow_file.is_file():
            raise TunewiseError("state.json lists a data file that does not exist", file=str(arrow_file),
                                fix="copy the whole folder written by Dataset.save_to_disk")
        with pa.memory_map(str(arrow_file)) as source:
            try:
                stream = pa.ipc.open_stream(source)
            except Exception as error:  # pyarrow raises several unrelated types for a bad file
                raise TunewiseError(f"not an Arrow stream file ({error})", file=str(arrow_file),
                                    fix="the file is damaged or incomplete: save the dataset again") from None
            for number, record in _numbered_records(stream, arrow_file, "Arrow", first=number + 1):
                yield number, record


@dataclass
class _BadRecord:
    reason: str
    fix: str


def parse_record(record: Any, task_field: str | None = None, columns: Columns | None = None) -> Example:
    """Turn one raw record of any supported shape into an :class:`Example`.

    Record-level ``system``, ``tools`` and ``history`` (LLaMA-Factory's Alpaca and ShareGPT) become
    turns before the prompt: the system prompt (with the tools described in it) first, then each
    earlier ``[question, answer]`` pair as a user and an assistant turn. A blank or whitespace-only
    field counts as absent, the same way in every shape.
    """
    if isinstance(record, _BadRecord):
        raise TunewiseError(record.reason, fix=record.fix)
    if not isinstance(record, dict):
        raise TunewiseError(f"a record must be an object, got {type(record).__name__}",
                            fix="write one JSON object per record")
    record = labelled_record(record) or record  # a Label Studio task or an Argilla record, filled in or not
    columns = columns or Columns()
    for name, value in columns.used().items():
        if value not in record:
            raise TunewiseError(f"the record has no field '{value}' (--{name.replace('_', '-')})", field=value,
                                fix=f"name a field of the record: {did_you_mean(value, [str(k) for k in record])}")
    prompt, response, used = _prompt_and_response(record, columns)
    context, context_used = _context_turns(record, columns)
    if context:
        prompt = context + [turn for turn in prompt if not (turn["role"] == "system" and context[0]["role"] == "system"
                                                           and turn["content"] == context[0]["content"])]
    used |= context_used
    user_id = None
    if columns.id_field is not None:
        if _is_missing(record[columns.id_field]):
            raise TunewiseError("the id is empty", field=columns.id_field, fix="give every record an id")
        user_id = str(record[columns.id_field])
        used.add(columns.id_field)
    if task_field is None:
        task = DEFAULT_TASK
    else:
        if task_field not in record:
            raise TunewiseError(_no_task_field(task_field), field=task_field,
                                fix="name a field of the record with --task-field: "
                                + did_you_mean(task_field, [str(key) for key in record])
                                + " (or pass --skip-bad to skip the records without it)")
        if _is_missing(record[task_field]):
            raise TunewiseError("the task is empty", field=task_field,
                                fix="give every record a task, or drop --task-field")
        task = str(record[task_field])
        used.add(task_field)
    try:
        identifier = example_id(prompt, response)
        task.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TunewiseError(f"the text holds {error.object[error.start:error.end]!r}, which is not valid Unicode "
                            "(an unpaired surrogate)", fix="remove the stray \\ud800-\\udfff escape") from None
    metadata = {k: v for k, v in record.items() if k not in used}
    return Example(
        id=identifier,
        task=task,
        prompt=tuple(prompt),
        response=response,
        metadata=metadata,
        user_id=user_id,
    )


def _no_task_field(task_field: str) -> str:
    return f"the record has no task field '{task_field}'"


def _is_missing(value: Any) -> bool:
    """None, NaN, and blank or whitespace-only text count as absent."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _text(record: dict, key: str, *, required: bool) -> str | None:
    value = record.get(key)
    if _is_missing(value):
        if required:
            raise TunewiseError("missing or empty", field=key, fix=f"give every record a non-empty '{key}'")
        return None
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise TunewiseError(f"not a finite number: {value}", field=key,
                                    fix=f"give '{key}' as text, or leave it empty for a missing value")
            return str(value)
        raise TunewiseError(f"expected text, got {type(value).__name__}", field=key,
                            fix=f"make '{key}' a string")
    return value


def _prompt_and_response(record: dict, columns: Columns) -> tuple[list[dict], str | None, set]:
    if columns.messages_field is not None:
        name = columns.messages_field
        first = record[name][0] if isinstance(record[name], list) and record[name] else {}
        keys = ("from", "value") if isinstance(first, dict) and "from" in first else ("role", "content")
        return (*_split_conversation(record[name], name, *keys), {name})
    if columns.prompt_field is not None:
        name = columns.prompt_field
        response = _response_value(record, columns.response_field) if columns.response_field else None
        return _prompt_value(record, name), response, {name, columns.response_field} - {None}
    if "messages" in record:
        return (*_split_conversation(record["messages"], "messages", "role", "content"), {"messages"})
    if "conversations" in record:
        return (*_split_conversation(record["conversations"], "conversations", "from", "value"), {"conversations"})
    if "instruction" in record:
        # Alpaca (input/output) and Dolly (context/response): the extra text follows the instruction.
        instruction = _text(record, "instruction", required=True)
        extra_key = "input" if not _is_missing(record.get("input")) else "context"
        extra = _text(record, extra_key, required=False)
        content = instruction if not extra else f"{instruction}\n\n{extra}"
        response_key = columns.response_field or ("output" if "output" in record else "response")
        return ([{"role": "user", "content": content}], _text(record, response_key, required=False),
                {"instruction", "input", "context", response_key})
    for prompt_key, response_key in _PAIR_SHAPES:
        if prompt_key in record and (response_key in record or prompt_key != "input"):
            if prompt_key == "prompt" and response_key not in record and "response" in record:
                continue  # prompt/response comes next
            response_key = columns.response_field or response_key
            response = _response_value(record, response_key) if response_key in record else None
            return _prompt_value(record, prompt_key), response, {prompt_key, response_key}
    raise TunewiseError(
        f"unrecognised record shape (fields: {', '.join(sorted(map(str, record))) or 'none'})",
        fix="use one of: " + ", ".join(RECORD_SHAPES) + "; or name the fields with --prompt-field and "
            "--response-field (or --messages-field)",
    )


def _response_value(record: dict, key: str) -> str | None:
    """A response given as text, or as TRL's conversational completion: a list of assistant messages."""
    value = record.get(key)
    if isinstance(value, list):
        turns, response = _split_conversation(value, key, "role", "content", answer_only=True)
        return response
    return _text(record, key, required=False)


def _context_turns(record: dict, columns: Columns) -> tuple[list[dict], set]:
    """Record-level system prompt, tools and history, as the turns that go before the prompt."""
    turns, used = [], set()
    system_key = columns.system_field or "system"
    system = _text(record, system_key, required=False) if system_key in record else None
    tools = record.get("tools")
    if not _is_missing(tools):
        described = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
        system = f"{system}\n\n" if system else ""
        system += f"You can call these tools:\n{described}"
        used.add("tools")
    if system:
        turns.append({"role": "system", "content": system})
    if system_key in record:
        used.add(system_key)
    history_key = columns.history_field or "history"
    history = record.get(history_key)
    if history_key in record:
        used.add(history_key)
    if not _is_missing(history) and history != []:
        if not isinstance(history, list) or not all(isinstance(pair, (list, tuple)) and len(pair) == 2
                                                    for pair in history):
            raise TunewiseError("expected a list of [question, answer] pairs", field=history_key,
                                fix=f"write '{history_key}' as [[\"question\", \"answer\"], ...]")
        for index, (question, answer) in enumerate(history):
            if not isinstance(question, str) or not isinstance(answer, str):
                raise TunewiseError("a history turn must be text", field=f"{history_key}[{index}]",
                                    fix="write each pair as two strings")
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns, used


def _prompt_value(record: dict, key: str) -> list[dict]:
    value = record[key]
    if isinstance(value, list):
        turns, response = _split_conversation(value, key, "role", "content")
        if response is not None:
            turns.append({"role": "assistant", "content": response})
        return turns
    return [{"role": "user", "content": _text(record, key, required=True)}]


def _split_conversation(turns: Any, field_name: str, role_key: str, content_key: str, *, answer_only: bool = False):
    """Prompt = every turn before the final assistant turn; response = that turn (if any).

    ``answer_only``: the list is a completion (TRL's conversational prompt–completion), exactly one
    assistant message.
    """
    if not isinstance(turns, list) or not turns:
        raise TunewiseError("expected a non-empty list of turns", field=field_name,
                            fix=f"give '{field_name}' as a list of {{{role_key}, {content_key}}} objects")
    if answer_only and (len(turns) != 1 or not isinstance(turns[0], dict)
                        or _ROLE_ALIASES.get(str(turns[0].get(role_key)).lower()) != "assistant"):
        raise TunewiseError("a conversational completion must be one assistant message", field=field_name,
                            fix=f"write '{field_name}' as [{{\"role\": \"assistant\", \"content\": ...}}], "
                                "and earlier turns in the prompt")
    normalised = []
    for index, turn in enumerate(turns):
        where = f"{field_name}[{index}]"
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise TunewiseError(f"a turn needs '{role_key}' and '{content_key}'", field=where,
                                fix=f"write each turn as {{\"{role_key}\": ..., \"{content_key}\": ...}}")
        role = _ROLE_ALIASES.get(str(turn[role_key]).lower())
        if role is None:
            raise TunewiseError(f"unknown role '{turn[role_key]}'", field=f"{where}.{role_key}",
                                fix="use system, user or assistant (human/gpt for ShareGPT)")
        content = turn[content_key]
        if not isinstance(content, str):
            raise TunewiseError(f"expected text, got {type(content).__name__}", field=f"{where}.{content_key}",
                                fix="make every turn's content a string")
        normalised.append({"role": role, "content": content})
    if normalised[-1]["role"] == "assistant":
        prompt, response = normalised[:-1], normalised[-1]["content"]
        if not prompt and not answer_only:
            raise TunewiseError("the conversation has an answer but no prompt", field=field_name,
                                fix="start the conversation with a user turn")
        if not response.strip():
            raise TunewiseError("the final assistant turn is empty", field=field_name,
                                fix="give the answer, or drop the empty turn for an unlabelled pool")
        return prompt, response
    return normalised, None
