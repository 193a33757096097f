"""The Typer application every command module registers on.

Commands live one area per module (``cli/score.py``, ``cli/select.py`` …); this module only owns
the app object and the error handling shared by all of them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys

import typer
from rich.console import Console

from tunewise.errors import TunewiseError

app = typer.Typer(
    name="tunewise",
    help="How many labelled examples does each task need, and which should they be?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Progress and messages go to stderr so that stdout stays clean for --json output.
console = Console(stderr=True)
stdout = Console()


JSON_HELP = "Print the result as one JSON object on stdout, and nothing else there."


def _finite(value):
    """JSON has no NaN or infinity: they become null (a number is right or absent, never invalid)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _finite(value.item())  # numpy scalars
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def print_json(document) -> None:
    """``--json``: the result document, plain JSON on stdout (progress stays on stderr)."""
    sys.stdout.write(json.dumps(_finite(document), ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def user_errors_exit_2(func):
    """Turn a TunewiseError into a clear message and exit code 2, with no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TunewiseError as error:
            exit_with_user_error(error)

    return wrapper


def exit_with_user_error(error: TunewiseError):
    """Print a user error (file, line, field, fix) and exit with code 2, no traceback (even --quiet)."""
    console.quiet = False
    console.print("[bold red]error:[/] ", end="")
    console.print(str(error), markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


def command(*args, **kwargs):
    """``@command()`` registers a CLI command with the shared error handling."""

    def decorate(func):
        return app.command(*args, **kwargs)(user_errors_exit_2(func))

    return decorate


def _print_version(value: bool) -> None:
    """``--version``: handled while the options are parsed, so no command is needed."""
    if value:
        from tunewise import __version__

        stdout.print(f"tunewise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only results and errors: no progress, notes or logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also the library's log (debug level) on stderr."),
) -> None:
    """How many labelled examples does each task need, and which should they be?"""
    configure_output(quiet=quiet, verbose=verbose)
    prefer_passive_openmp_waits()
    # The CLI says "loading MODEL …" itself; transformers' per-tensor bar adds only noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if threads is not None:
        # Read when a model is loaded, so that importing the CLI never imports torch.
        os.environ["TUNEWISE_THREADS"] = str(threads)


def configure_output(*, quiet: bool, verbose: bool) -> None:
    """--quiet silences stderr's progress and notes (errors still print); the library's ``logging``
    records go to stderr at WARNING, INFO with nothing said, DEBUG with --verbose."""
    import logging

    from rich.logging import RichHandler

    console.quiet = quiet
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    logger = logging.getLogger("tunewise")
    logger.handlers[:] = [RichHandler(console=Console(stderr=True), show_path=False, show_time=False,
                                      markup=False)]
    logger.setLevel(level)
    logger.propagate = False


def prefer_passive_openmp_waits() -> None:
    """Let idle OpenMP threads sleep instead of spin, unless the user set ``OMP_WAIT_POLICY``.

    On a small machine shared with other jobs, a spinning thread burns the core its descheduled
    peer needs to reach the next barrier: on a 2-core CPU beside one other busy process, four
    LoRA steps of SmolLM2 took 189 s with spinning threads and 28 s with passive ones (one thread:
    40 s). It only takes effect before torch is first imported in the process, which the CLI
    defers until a command needs a model.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
