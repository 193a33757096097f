"""Every Python snippet of README.md runs: the ``python`` blocks (on the tiny random model instead of
the bundled one), the ``python -c`` lines of the shell blocks, and every dotted ``tunewise.…`` name
and ``tw.…`` attribute the prose mentions exists."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tunewise as tw
from tunewise.data.demo import demo_records

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# `python -c "..."` inside the shell blocks, up to the closing quote (the snippets use only ' inside).
PYTHON_C = re.findall(r'python -c "(.*?)"', "\n".join(re.findall(r"```bash\n(.*?)```", README, re.S)), re.S)


@pytest.fixture
def demo_folder(tmp_path, monkeypatch):
    """A working folder holding runs/demo/pool.jsonl, as `tunewise demo` leaves it (smaller)."""
    pool, test = demo_records(pool_per_task=12, test_per_task=2)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    for name, records in (("pool.jsonl", pool), ("test.jsonl", test)):
        (tmp_path / "runs" / "demo" / name).write_text("".join(json.dumps(r) + "\n" for r in records),
                                                       encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_the_snippets_this_test_runs():
    assert PYTHON_BLOCKS and len(PYTHON_C) >= 2


@pytest.mark.integration
@pytest.mark.parametrize("number", range(len(PYTHON_BLOCKS)))
def test_each_python_block_runs_on_the_tiny_model(demo_folder, number):
    code = PYTHON_BLOCKS[number].replace('load_backend("smollm2")', 'load_backend("tiny-random")')
    exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("number", range(len(PYTHON_C)))
def test_each_python_c_line_runs(demo_folder, number):
    subprocess.run([sys.executable, "-c", PYTHON_C[number]], check=True, cwd=demo_folder)


def test_every_tunewise_name_the_readme_mentions_exists():
    for dotted in sorted(set(re.findall(r"`(tunewise(?:\.\w+)+)", README))):
        parts = dotted.split(".")
        # the longest importable module prefix, then attributes
        for cut in range(len(parts), 0, -1):
            try:
                value = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(value, attribute), f"README names {dotted}, which does not exist"
            value = getattr(value, attribute)
    for name in sorted(set(re.findall(r"`tw\.(\w+)", README))):
        assert hasattr(tw, name), f"README names tw.{name}, which tunewise does not export"


def test_the_nested_strategy_the_readme_shows_builds_from_the_top_level():
    expression = re.search(r"`(tw\.PlanConfig\(.*?\)\)\))`", README, re.S).group(1)
    assert eval(expression, {"tw": tw}).strategy_name == "task_diversity"
