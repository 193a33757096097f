"""One exception type for every problem the user can fix.

The CLI turns a :class:`TunewiseError` into a one-paragraph message and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TunewiseError(Exception):
    """A problem with the user's input, naming where it is and how to fix it.

    Parameters
    ----------
    message:
        What is wrong.
    file, line, field:
        Where it is, when known (line numbers are 1-based).
    fix:
        What the user should do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.fix = fix

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        # The message may quote the user's text; an unpaired surrogate in it must not make the
        # error itself unprintable.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def did_you_mean(name: str, choices) -> str:
    """A short hint naming the closest valid choice, or listing them all."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f"did you mean '{close[0]}'? (choices: {', '.join(choices)})"
    return f"choose one of: {', '.join(choices)}"
