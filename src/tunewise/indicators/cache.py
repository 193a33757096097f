"""A content-addressed cache of indicator values, safe to share between processes.

Key: (model fingerprint, output name, indicator version, example id). Values are floats, or
float32 vectors stored as bytes. SQLite gives atomic batch commits (a killed run loses at most
the batch in flight and never leaves half a row) and serialises writers from several processes
sharing the folder.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL,
    output TEXT NOT NULL,
    version INTEGER NOT NULL,
    example TEXT NOT NULL,
    value REAL,
    vector BLOB,
    PRIMARY KEY (model, output, version, example)
) WITHOUT ROWID
"""
_LOOKUP_CHUNK = 900  # under SQLite's default limit of host parameters per statement
_LOCK_TIMEOUT_S = 120.0


class ScoreCache:
    """Read and write indicator values for many examples at once."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "scores.sqlite"
        self._connection = sqlite3.connect(self.path, timeout=_LOCK_TIMEOUT_S, isolation_level=None)
        self._execute_setup("PRAGMA journal_mode=WAL")
        self._execute_setup("PRAGMA synchronous=NORMAL")
        self._execute_setup(_SCHEMA)

    def _execute_setup(self, statement: str) -> None:
        # Switching a new database to WAL while another process creates it can fail with
        # "database is locked" at once: SQLite skips the busy handler there to avoid a deadlock,
        # so the retry is ours.
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                self._connection.execute(statement)
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "ScoreCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, model: str, output: str, version: int, examples: Sequence[str]) -> dict[str, object]:
        """Cached values for those example ids that have one (vectors as float32 arrays)."""
        found: dict[str, object] = {}
        for start in range(0, len(examples), _LOOKUP_CHUNK):
            chunk = list(examples[start:start + _LOOKUP_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT example, value, vector FROM scores WHERE model=? AND output=? AND version=? "
                f"AND example IN ({marks})",
                (model, output, version, *chunk),
            )
            for example, value, vector in rows:
                found[example] = np.frombuffer(vector, dtype=np.float32).copy() if vector is not None else value
        return found

    def put(self, model: str, output: str, version: int, values: Iterable[tuple[str, object]]) -> None:
        """Store values in one transaction; a repeated key keeps one row (the newest value)."""
        rows = []
        for example, value in values:
            if isinstance(value, np.ndarray):
                rows.append((model, output, version, example, None, value.astype(np.float32).tobytes()))
            else:
                rows.append((model, output, version, example, None if value is None else float(value), None))
        with self._connection:
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)", rows)
