"""``tunewise calibrate-difficulty``: fit the difficulty window's c0 and β from real fine-tunes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.options import (DTYPE_HELP, parse_int_list)
from tunewise.cli.progress import progress_bar
from tunewise.cli.options import with_config_options, with_pool_options
from tunewise.data.pool import PoolReading, SourcePath
from tunewise.errors import TunewiseError
from tunewise.training.finetune import FinetuneConfig
from tunewise.training.sweep import SweepRun


@command("calibrate-difficulty")
@with_config_options(FinetuneConfig, exclude=("seed",), panel="Fine-tuning")
@with_config_options(SweepRun, panel="Runs", name="run")
@with_pool_options(panel="Pool reading (pool and --test)")
def calibrate_difficulty_command(
    pool_path: Path = typer.Argument(..., parser=SourcePath, metavar="POOL", help="Labelled pool to select from."),
    test: Path = typer.Option(..., help="Labelled held-out test file every run is evaluated on."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder (a sweep; resumed when it exists)."),
    budgets: str = typer.Option("100,300,1000", help="Three (at least two) comma-separated budgets."),
    windows: str = typer.Option("0.15,0.5,0.85", help="Fixed window centres (difficulty quantiles in [0, 1])."),
    seeds: str = typer.Option("0", help="Comma-separated seeds (selection and fine-tune)."),
    difficulty: str = typer.Option("length", help="What the windows rank by: length (response tokens, paper C's "
                                                  "chain-of-thought length), cot_length or loss."),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    config: FinetuneConfig = None,
    run: SweepRun = None,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    reading: PoolReading = None,
) -> None:
    """Fine-tune on easy, medium and hard windows at each budget, find the best window per budget,
    and fit the c0 and β that `tunewise select --strategy difficulty_window` takes."""
    from tunewise.cli.options import check_sweep_output, model_input
    from tunewise.training.difficulty import CALIBRATION_FILE, calibrate_difficulty
    from tunewise.training.sweep import CONFIG_FILE, PLOT_FILE, SUMMARY_FILE, check_sweep_folder

    centres = _parse_windows(windows)
    check_sweep_output(output, {"the pool": pool_path, "--test": test, **model_input(run.model)},
                       (CONFIG_FILE, PLOT_FILE, SUMMARY_FILE, CALIBRATION_FILE))
    check_sweep_folder(output)
    pool = reading.read(pool_path, run.task_field)
    test_set = reading.read(test, run.task_field)
    with progress_bar("sweep", unit="runs") as update:
        calibration = calibrate_difficulty(
            pool, test_set, parse_int_list(budgets, "budgets"), run.model, output, centres,
            parse_int_list(seeds, "seeds"), config, difficulty=difficulty, provenance=reading.provenance(),
            device=run.device, dtype=dtype,
            metric=run.metric, max_new_tokens=run.max_new_tokens, batch_tokens=run.batch_tokens, progress=update,
            engine=run.engine, workers=run.workers,
        )
    if as_json:
        print_json(calibration)
        return
    stdout.print(calibration_table(calibration))
    tied = [budget for budget, entry in calibration["best"].items() if entry["tied"]]
    if tied:
        console.print(f"[yellow]note:[/] windows tied for best at budget {', '.join(tied)}; the mean of the tied "
                      "centres stands in there (a larger --test set or more --seeds separates them)",
                      highlight=False)
    stdout.print(f"fitted c0 = {calibration['c0']:.4g}, beta = {calibration['beta']:.4g} per decade, "
                 f"n0 = {calibration['n0']:.4g}; calibration → {escape(str(output / CALIBRATION_FILE))}",
                 highlight=False)
    stdout.print(calibration["select_command"], markup=False, highlight=False)


def calibration_table(calibration: dict) -> Table:
    """Mean score per window and budget (random beside it when run), and the best centre per budget."""
    budgets = [str(budget) for budget in calibration["budgets"]]
    table = Table(title="Difficulty window: mean test score over seeds, by budget")
    table.add_column("window centre")
    for budget in budgets:
        table.add_column(budget, justify="right")
    for centre, entry in calibration["grid"].items():
        table.add_row(centre, *(f"{entry['scores'][b]['score']:.4f}" for b in budgets))
    if calibration["random"]:
        table.add_row("random", *(f"{calibration['random'][b]['score']:.4f}" if b in calibration["random"] else "-"
                                  for b in budgets))
    table.add_row("best centre", *(f"{calibration['best'][b]['best_centre']:.3g}"
                                   + (" (tie)" if calibration["best"][b]["tied"] else "") for b in budgets))
    return table


def _parse_windows(text: str) -> list[float]:
    centres = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        try:
            centres.append(float(part))
        except ValueError:
            raise TunewiseError(f"'{part}' is not a number", field="windows",
                                fix="write --windows as quantiles in [0, 1], e.g. 0.15,0.5,0.85") from None
    return centres
