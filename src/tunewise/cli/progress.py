"""A Rich progress bar with rate and ETA, shared by the long-running commands."""

from __future__ import annotations

import contextlib

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from tunewise.cli.app import console


class _Rate(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s"


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "examples"):
    """Yields ``update(done, total)``; the bar appears on the first update."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(unit),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    )
    task_id = None

    def update(done: int, total: int) -> None:
        nonlocal task_id
        if task_id is None:
            task_id = progress.add_task(description, total=total)
        progress.update(task_id, completed=done, total=total)

    with progress:
        yield update


def stage_progress(stage: str, unit: str):
    """The library's ``progress(stage, unit)`` hook (:mod:`tunewise.run`), drawn as a Rich bar."""
    return progress_bar(stage, unit=unit)
