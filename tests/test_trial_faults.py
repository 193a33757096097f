"""Faults a new user's trial found: each bad input is refused with exit code 2, the file, line or
field, and a fix, with no traceback and nothing written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import _register_commands
from tunewise.cli.app import app
from tunewise.data.pool import read_pool
from tunewise.errors import TunewiseError

_register_commands()

RECORDS = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "task": "math" if i % 2 else "trivia"}
           for i in range(6)]
LINES = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()


def run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def assert_user_error(result, output: Path | None, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"
    if output is not None:
        assert not output.exists()
        assert [p.name for p in output.parent.glob("*.tmp")] == []


# -- 1. a .gz or .zst name on a file that is not compressed ----------------------------------------


@pytest.mark.parametrize("suffix, name", [(".gz", "gzip"), (".zst", "zstd")])
def test_a_misnamed_compressed_file_is_refused_with_a_fix(tmp_path, suffix, name):
    pool = tmp_path / f"pool.jsonl{suffix}"
    pool.write_bytes(LINES)
    output = tmp_path / "scores.parquet"
    result = run("score", pool, "-o", output, "--model", "tiny-random")
    assert_user_error(result, output, str(pool), f"not a {name} file", "fix: rename it to pool.jsonl")


def test_a_cut_short_gzip_file_is_refused(tmp_path):
    pool = tmp_path / "pool.jsonl.gz"
    pool.write_bytes(gzip.compress(LINES)[:30])
    with pytest.raises(TunewiseError, match="damaged or cut short") as error:
        read_pool(pool)
    assert error.value.fix
