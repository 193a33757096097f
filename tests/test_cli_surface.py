"""The command line's shared surface (issue 12): --version, --json on every command, -o/--output for
every output, and a CLI that imports only the library's public modules."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import tunewise
import tunewise.cli
from tunewise.cli.app import app

CLI = Path(tunewise.cli.__file__).parent


@pytest.fixture(scope="module")
def commands():
    tunewise.cli._register_commands()
    return typer.main.get_command(app).commands


def test_version_prints_and_exits_0():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"tunewise {tunewise.__version__}"


def test_every_command_has_json(commands):
    missing = [name for name, command in commands.items()
               if not any("--json" in param.opts for param in command.params)]
    assert not missing, f"commands without --json: {missing}"


def test_every_output_is_minus_o_and_output(commands):
    for name, command in commands.items():
        outputs = [param for param in command.params if param.name in ("output", "out", "output_dir")]
        for param in outputs:
            assert "-o" in param.opts and "--output" in param.opts, (name, param.opts)


def test_json_output_is_plain_json_on_stdout(tmp_path):
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"0": 0.1, "50": 0.3, "500": 0.5, "5000": 0.6}))
    result = CliRunner().invoke(app, ["curve", str(curve), "--json"])
    assert result.exit_code == 0, result.output
    assert "auc" in json.loads(result.stdout)


def test_cli_imports_no_private_library_names():
    """The CLI uses the library's public names: nothing starting with an underscore from a
    library module, and no other command module (only the shared app, options, progress, tables)."""
    shared = {"tunewise.cli.app", "tunewise.cli.options", "tunewise.cli.progress", "tunewise.cli.tables"}
    problems = []
    for path in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunewise"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
                if private:
                    problems.append(f"{path.name}: {node.module} {private}")
                if node.module.startswith("tunewise.cli.") and node.module not in shared | {"tunewise.cli.tables"}:
                    problems.append(f"{path.name}: imports the command module {node.module}")
    assert not problems, problems


def test_public_names_stay_functions_on_every_access():
    """`tunewise.coslow` was a function on first access and a module on the second (issue 12)."""
    for name in ("coslow", "finetune", "evaluate", "calibrate", "plan", "score"):
        first, second = getattr(tunewise, name), getattr(tunewise, name)
        assert callable(first) and first is second and not isinstance(second, type(tunewise)), name
