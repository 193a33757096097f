"""Command-line flags generated from the library's config dataclasses (TRL's habit).

A config dataclass declares each setting once: its type, default and ``metadata["help"]``.
:func:`with_config_options` turns every field into a ``--flag`` of a Typer command and hands the
command one validated config object, so the flag, its default and its help cannot drift from the
library. Field metadata may add ``flags`` (extra spellings such as ``-n``); a field typed
``Optional[bool]`` becomes ``--name/--no-name``; a tuple of strings is written comma-separated.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Optional

import typer

from tunewise.errors import TunewiseError

MODEL_HELP = "smollm2 (bundled SmolLM2-135M-Instruct Q4_1), tiny-random, or a model folder."
DEVICE_HELP = "auto, cpu, cuda, cuda:1 …"
DTYPE_HELP = "auto (fp32 on CPU, bf16 on GPU), fp32, bf16."


def parse_list(text: str | None) -> list[str]:
    """``"loss, ifd"`` → ``["loss", "ifd"]``; empty or None → ``[]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _flag(field: dataclasses.Field, annotation, panel: str | None):
    flag = "--" + field.name.replace("_", "-")
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    default = ... if required else field.default
    declarations = [flag, *field.metadata.get("flags", ())]
    if annotation == Optional[bool]:
        declarations = [f"{flag}/--no-{field.name.replace('_', '-')}"]
    elif typing.get_origin(typing.Optional[annotation]) is typing.Union and tuple in (
            typing.get_origin(arg) for arg in typing.get_args(annotation)):
        annotation = Optional[str]
        default = None if default in (None, ...) else ",".join(default)
    option = typer.Option(default, *declarations, help=field.metadata.get("help"), rich_help_panel=panel)
    return option, annotation


def with_config_options(config_class, exclude: tuple[str, ...] = (), panel: str | None = None):
    """Give a command one ``--flag`` per field of ``config_class``, passed in as ``config``.

    Raises :class:`~tunewise.errors.TunewiseError` (exit 2 under ``@command``) when the config
    refuses the values.
    """
    hints = typing.get_type_hints(config_class)
    fields = [f for f in dataclasses.fields(config_class) if f.name not in exclude]
    tuple_fields = {f.name for f in fields if tuple in (typing.get_origin(a) for a in typing.get_args(hints[f.name]))}

    def decorate(func):
        signature = inspect.signature(func, eval_str=True)
        parameters = [p for p in signature.parameters.values() if p.name != "config"]
        for field in fields:
            option, annotation = _flag(field, hints[field.name], panel)
            parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                annotation=annotation))

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            values = {field.name: kwargs.pop(field.name) for field in fields}
            for name in tuple_fields:
                if values[name] is not None:
                    values[name] = tuple(parse_list(values[name])) or None
            try:
                config = config_class(**values)
            except (TypeError, ValueError) as error:
                raise TunewiseError(str(error), fix="check the flags against --help") from None
            return func(*args, config=config, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)
        return wrapper

    return decorate


__all__ = ["DEVICE_HELP", "DTYPE_HELP", "MODEL_HELP", "parse_list", "with_config_options"]
