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
@user_errors_exit_2
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    load_in_4bit: bool = typer.Option(False, "--load-in-4bit", rich_help_panel="Model loading",
                                      help="Load the model's weights in 4 bits (NF4, bitsandbytes); fine-tuning "
                                           "then trains LoRA on them (QLoRA)."),
    load_in_8bit: bool = typer.Option(False, "--load-in-8bit", rich_help_panel="Model loading",
                                      help="Load the model's weights in 8 bits (LLM.int8(), bitsandbytes)."),
    device_map: str = typer.Option(None, "--device-map", rich_help_panel="Model loading",
                                   help="'auto': spread a model too large for one device over every GPU (then "
                                        "the CPU); default: all of it on --device."),
    attn_implementation: str = typer.Option(None, "--attn-implementation", rich_help_panel="Model loading",
                                            help="eager, sdpa, flash_attention_2 … (default: transformers' choice)."),
    revision: str = typer.Option(None, "--revision", rich_help_panel="Model loading",
                                 help="Branch, tag or commit of a Hugging Face Hub model."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code/--no-trust-remote-code",
                                           rich_help_panel="Model loading",
                                           help="Run the Python code a Hub model ships (only for code you trust)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only results and errors: no progress, notes or logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also the library's log (debug level) on stderr."),
) -> None:
    """How many labelled examples does each task need, and which should they be?

    Model-loading options go before the command and hold for every model it loads:
    tunewise --load-in-4bit finetune POOL --model org/name -o adapter
    """
    configure_output(quiet=quiet, verbose=verbose)
    prefer_passive_openmp_waits()
    # The CLI says "loading MODEL …" itself; transformers' per-tensor bar adds only noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if threads is not None:
        # Read when a model is loaded, so that importing the CLI never imports torch.
        os.environ["TUNEWISE_THREADS"] = str(threads)
    set_load_options(load_in_4bit, load_in_8bit, device_map, attn_implementation, revision, trust_remote_code)


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


def set_load_options(load_in_4bit: bool, load_in_8bit: bool, device_map: str | None,
                     attn_implementation: str | None, revision: str | None, trust_remote_code: bool) -> None:
    """Hand the model-loading flags to every ``load_model`` of this run (and its Ray workers) through
    the environment, as ``--threads`` does, so that importing the CLI never imports torch."""
    from tunewise.model.load import LoadOptions

    if load_in_4bit and load_in_8bit:
        raise TunewiseError("--load-in-4bit and --load-in-8bit exclude each other", field="load_in_4bit",
                            fix="pass one of them")
    if device_map not in (None, "auto", "balanced", "balanced_low_0", "sequential"):
        raise TunewiseError(f"unknown --device-map '{device_map}'", field="device_map",
                            fix="use --device-map auto (or balanced, sequential)")
    options = LoadOptions(quantization="4bit" if load_in_4bit else "8bit" if load_in_8bit else None,
                          device_map=device_map, attn_implementation=attn_implementation, revision=revision,
                          trust_remote_code=trust_remote_code)
    os.environ.update(options.to_environment())


def prefer_passive_openmp_waits() -> None:
    """Let idle OpenMP threads sleep instead of spin, unless the user set ``OMP_WAIT_POLICY``.

    On a small machine shared with other jobs, a spinning thread burns the core its descheduled
    peer needs to reach the next barrier: on a 2-core CPU beside one other busy process, four
    LoRA steps of SmolLM2 took 189 s with spinning threads and 28 s with passive ones (one thread:
    40 s). It only takes effect before torch is first imported in the process, which the CLI
    defers until a command needs a model.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
