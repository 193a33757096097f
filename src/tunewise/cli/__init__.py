"""The ``tunewise`` command line: a thin layer over the library."""

from __future__ import annotations

import importlib

from tunewise.cli.app import app

# One module per area; each registers its commands on `app` when imported.
_COMMAND_MODULES = ["score", "select", "efficiency", "train", "calibrate", "weights", "plan", "demo"]


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"tunewise.cli.{name}")


def main() -> None:
    _register_commands()
    app()
