"""Command-line flags generated from the library's config dataclasses (TRL's habit).

A config dataclass declares each setting once: its type, default and ``metadata["help"]``.
:func:`with_config_options` turns every field into a ``--flag`` of a Typer command and hands the
command one validated config object, so the flag, its default and its help cannot drift from the
library. Field metadata may add ``flags`` (extra spellings such as ``-n``) and ``parser``; a field typed
``Optional[bool]`` becomes ``--name/--no-name``; a tuple of strings is written comma-separated.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tunewise.errors import TunewiseError, did_you_mean

MODEL_HELP = "smollm2 (bundled SmolLM2-135M-Instruct Q4_1), tiny-random, or a model folder."
DEVICE_HELP = "auto, cpu, cuda, cuda:1 …"
DTYPE_HELP = "auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), fp32, bf16."
METRIC_HELP = ("auto (per task), exact_match, multiple_choice, gsm8k, log_likelihood (mean log-probability "
               "per gold-answer token; no generation), or choice (lm-evaluation-harness multiple choice: the most "
               "likely of each example's 'choices', or of the task's labels; acc and acc_norm; no generation).")
MAX_NEW_TOKENS_HELP = "Longest answer (default: each task's longest gold answer + 16 tokens)."


POOL_HELP = ("Pool (labelled or not): a JSONL, JSON, CSV or Parquet file (.gz/.zst too), a quoted glob, a folder "
             "saved with save_to_disk, or a Hugging Face Hub dataset id with --split.")


def report_skipped(skipped) -> None:
    """Print one skipped record. Its reason may quote the record: plain text, never Rich markup."""
    from rich.markup import escape

    from tunewise.cli.app import console

    where = f"{skipped.file}:{skipped.line}: {skipped.reason}".encode("utf-8", "backslashreplace").decode()
    console.print("[yellow]skipped[/] " + escape(where), highlight=False, soft_wrap=True)


def print_pool_notes(pool) -> None:
    """What the pool reader skipped, merged or left unused, on stderr (user text escaped)."""
    from rich.markup import escape

    from tunewise.cli.app import console

    for skipped in pool.skipped:
        report_skipped(skipped)
    for note in pool.notes():
        console.print("[yellow]note:[/] " + escape(note), highlight=False, soft_wrap=True)


def _load_run_config(ctx, param, value):
    """``--config FILE``: the YAML file's keys become the command's defaults; flags still win."""
    from tunewise.cli.app import exit_with_user_error

    if value is None:
        return value
    try:
        ctx.default_map = {**(ctx.default_map or {}), **_run_config_defaults(ctx, value)}
    except TunewiseError as error:
        exit_with_user_error(error)
    return value


def _run_config_defaults(ctx, value) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunewiseError("no such config file", file=value, field="config", fix="check the path") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        raise TunewiseError(f"not a readable YAML file ({type(error).__name__})", file=value,
                            line=None if line is None else line + 1, field="config",
                            fix="write one 'flag: value' per line, e.g. budget: 200") from None
    if not isinstance(data, dict):
        raise TunewiseError("a run config is a mapping of flag names to values", file=value, field="config",
                            fix="write one 'flag: value' per line, e.g. budget: 200")
    known = {p.name: p for p in ctx.command.params}
    defaults = {}
    for key, item in data.items():
        name = str(key).replace("-", "_")
        if name not in known or name == "config_file":
            raise TunewiseError(f"'{key}' is not a flag of this command", file=value, field=str(key),
                                fix=did_you_mean(name, [n for n in known if n != "config_file"]))
        if isinstance(item, list):
            item = ",".join(map(str, item))
        defaults[name] = item
    return defaults


#: ``--config FILE``: a run's flags from YAML (``tunewise plan --config runs/x/config.yaml`` reproduces a run).
CONFIG_FILE_OPTION = typer.Option(None, "--config", help="YAML file of flag values (its keys are the flag names); "
                                  "flags given on the command line win.", is_eager=True, callback=_load_run_config,
                                  metavar="YAML")


def resolved_config(ctx) -> dict:
    """Every flag's value as the command ran, for the run folder's config.yaml."""
    values = {}
    for name, value in ctx.params.items():
        if name in ("config_file", "as_json", "json_output") or value is None:
            continue
        if dataclasses.is_dataclass(value):
            values.update({k: v for k, v in vars(value).items() if v is not None})
        else:
            values[name] = value
    return {name: (str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value)
            for name, value in values.items()}


def parse_list(text: str | None) -> list[str]:
    """``"loss, ifd"`` → ``["loss", "ifd"]``; empty or None → ``[]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _holds_tuple(annotation) -> bool:
    """``Optional[tuple[...]]``: a list the command line writes comma-separated."""
    return tuple in (typing.get_origin(arg) for arg in typing.get_args(annotation))


def flag_name(parameter: str) -> str:
    """``set_diversity`` → ``--set-diversity``."""
    return "--" + parameter.replace("_", "-")


def _plain(text: str | None) -> str | None:
    """Help declared in the library is plain text: its brackets (``[question, answer]``) are shown,
    not read as Rich markup."""
    return None if text is None else escape(text)


def _switch(name: str) -> str:
    """``set_diversity`` → ``--set-diversity/--no-set-diversity``."""
    return f"{flag_name(name)}/--no-{name.replace('_', '-')}"


def _flag(field: dataclasses.Field, annotation, panel: str | None):
    flag = flag_name(field.name)
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    default = ... if required else field.default
    declarations = [flag, *field.metadata.get("flags", ())]
    if annotation == Optional[bool]:
        declarations = [_switch(field.name)]
    elif _holds_tuple(annotation):
        annotation = Optional[str]
        default = None if default in (None, ...) else ",".join(default)
    # metadata "parser": a function of the flag's text (e.g. SourcePath, which keeps "./" of a pool path).
    option = typer.Option(default, *declarations, help=_plain(field.metadata.get("help")), rich_help_panel=panel,
                          parser=field.metadata.get("parser"))
    return option, annotation


def _with_options(options: dict, build, name: str):
    """Give a command the keyword ``options`` (parameter name → (annotation, ``typer.Option``)); the
    command receives ``build(values)`` as ``name`` instead of the values themselves."""

    def decorate(func):
        signature = inspect.signature(func, eval_str=True)
        parameters = [p for p in signature.parameters.values() if p.name != name]
        parameters += [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                       for key, (annotation, option) in options.items()]

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            values = {key: kwargs.pop(key) for key in options}
            return func(*args, **{name: build(values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)
        return wrapper

    return decorate


def with_config_options(config_class, exclude: tuple[str, ...] = (), panel: str | None = None,
                        name: str = "config"):
    """Give a command one ``--flag`` per field of ``config_class``, passed in as ``name``.

    Raises :class:`~tunewise.errors.TunewiseError` (exit 2 under ``@command``) when the config
    refuses the values.
    """
    options, build = _config_options(config_class, exclude, panel)
    return _with_options(options, build, name)


def _config_options(config_class, exclude: tuple[str, ...], panel: str | None):
    """The flags of ``config_class``'s fields (parameter name → (annotation, ``typer.Option``)), and
    the function that builds the config from their values."""
    hints = typing.get_type_hints(config_class)
    fields = [f for f in dataclasses.fields(config_class) if f.name not in exclude]
    tuple_fields = {f.name for f in fields if _holds_tuple(hints[f.name])}
    options = {}
    for field in fields:
        option, annotation = _flag(field, hints[field.name], panel)
        options[field.name] = (annotation, option)

    def build(values: dict):
        for field_name in tuple_fields:
            if values[field_name] is not None:
                values[field_name] = tuple(parse_list(values[field_name])) or None
        try:
            return config_class(**values)
        except (TypeError, ValueError) as error:
            raise TunewiseError(str(error), fix="check the flags against --help") from None

    return options, build


def with_pool_options(panel: str = "Pool reading", name: str = "reading"):
    """Give a command the pool-reading flags, passed in as one
    :class:`~tunewise.data.pool.PoolReading` called ``name``: one flag per field of
    :class:`~tunewise.data.pool.Columns` (``--prompt-field`` … ``--id-field``) and of
    ``PoolReading`` (``--split``, ``--dataset-config``, ``--keep-duplicates``). Every command that
    reads a pool, a test or a dev set takes them from here, so they read it the same way."""
    from tunewise.data.pool import Columns, PoolReading

    column_options, build_columns = _config_options(Columns, (), panel)
    source_options, build_reading = _config_options(PoolReading, ("columns",), panel)

    def build(values: dict):
        columns = build_columns({key: values.pop(key) for key in column_options})
        return dataclasses.replace(build_reading(values), columns=columns)

    return _with_options({**column_options, **source_options}, build, name)


class StrategyFlags:
    """The selector flags given on the command line (:func:`with_strategy_options`).

    ``files`` maps a file flag (``--weights``) to its path, for the checks that no output
    overwrites an input; :meth:`params` reads those files.
    """

    def __init__(self, values: dict, loaders: dict) -> None:
        self._values = {key: value for key, value in values.items() if value is not None}
        self._loaders = {key: loaders[key] for key in self._values if key in loaders}
        self.files = {flag_name(key): self._values[key] for key in self._loaders}

    def params(self) -> dict[str, tuple]:
        """Parameter → (value, the flag that gave it): what each given file holds, then the flags
        given (which win)."""
        params = {}
        for key, load in self._loaders.items():
            params.update((name, (value, flag_name(key))) for name, value in load(self._values[key]).items())
        params.update((key, (value, flag_name(key))) for key, value in self._values.items()
                      if key not in self._loaders)
        return params


def strategy_flags() -> dict:
    """Parameter name → (flag type, help, load, strategy names) over every registered strategy
    the command line can build, in registry order; the help names the strategies that take it."""
    from tunewise.select import STRATEGIES

    flags: dict = {}
    for strategy in STRATEGIES.values():
        if not strategy.command_line:
            continue
        for key, param in strategy.parameters.items():
            if param.flag is None:
                continue
            kind, help_text, load, names = flags.setdefault(key, (param.flag, param.help, param.load, []))
            if kind is not param.flag:
                raise TypeError(f"parameter '{key}' is a {kind.__name__} flag in one strategy and a "
                                f"{param.flag.__name__} flag in '{strategy.name}'")
            names.append(strategy.name)
    return flags


def with_strategy_options(name: str = "strategy_flags", panel: str | None = None):
    """Give a command one ``--flag`` per parameter of the registered strategies (each
    :class:`~tunewise.select.base.Param` with a ``flag``), passed in as a :class:`StrategyFlags`
    called ``name``: a new strategy's parameters become flags with no command-line code."""
    options, loaders = {}, {}
    for key, (kind, help_text, load, names) in strategy_flags().items():
        declarations = [_switch(key) if kind is bool else flag_name(key)]
        if load is not None:
            loaders[key] = load
        help_text = _plain(f"{', '.join(names)}: {help_text}")
        options[key] = (Optional[kind], typer.Option(None, *declarations, help=help_text, rich_help_panel=panel))
    return _with_options(options, lambda values: StrategyFlags(values, loaders), name)


def parse_int_list(text: str, name: str) -> list[int]:
    """``"50,100"`` → ``[50, 100]``, or a clear error naming the flag."""
    values = []
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise TunewiseError(f"'{part}' is not a whole number", field=name,
                                fix=f"write --{name} as comma-separated whole numbers, e.g. 0,1,2") from None
    return values


def check_output_path(output: Path, inputs: dict, example: str = "-o scores.parquet") -> None:
    """Before any work: the output file can be written, and is none of the ``inputs`` (name → path)."""
    from tunewise.io import check_output_file, refuse_overwriting_inputs

    refuse_overwriting_inputs({"-o": output}, inputs)
    check_output_file(output, example=example)


def model_input(model: str) -> dict:
    """``--model`` as an input to protect, when it names a local folder."""
    return {"--model": model} if Path(model).exists() else {}


def check_sweep_output(output: Path, inputs: dict, names) -> None:
    """A sweep folder's own files (and the folder) are none of its inputs."""
    from tunewise.io import refuse_overwriting_inputs

    refuse_overwriting_inputs({"-o": output, **{name: output / name for name in names}}, inputs)


__all__ = ["DEVICE_HELP", "DTYPE_HELP", "MAX_NEW_TOKENS_HELP", "METRIC_HELP", "MODEL_HELP", "StrategyFlags",
           "check_output_path", "check_sweep_output", "model_input", "parse_int_list", "parse_list",
           "with_config_options", "with_pool_options", "with_strategy_options"]
