"""A Rich progress bar with rate and ETA, shared by the long-running commands."""

from __future__ import annotations

import contextlib

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from tunewise.cli.app import console
from rich.markup import escape


class _Rate(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s"


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "examples"):
    """Yields ``update(done, total, label="")``; the bar appears on the first update. ``label`` is
    shown after the bar (the running loss, the sweep's current run)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(unit),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[label]}"),
        console=console, transient=False,
    )
    task_id = None

    def update(done: int, total: int, label: str = "") -> None:
        nonlocal task_id
        if task_id is None:
            task_id = progress.add_task(description, total=total, label="")
        # A label may name a task or a strategy: user text, never Rich markup.
        progress.update(task_id, completed=done, total=total, label=escape(label))

    with progress:
        yield update


def stage_progress(stage: str, unit: str):
    """The library's ``progress(stage, unit)`` hook (:mod:`tunewise.run`), drawn as a Rich bar."""
    return progress_bar(stage, unit=unit)
