"""``tunewise plan`` (score → predict → allocate → select → report) and ``tunewise report``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.options import (CONFIG_FILE_OPTION, DEVICE_HELP, DTYPE_HELP, MODEL_HELP, POOL_HELP,
                                  print_pool_notes, resolved_config, with_config_options, with_pool_options)
from tunewise.cli.progress import stage_progress
from tunewise.cli.tables import print_plan
from tunewise.errors import TunewiseError
from tunewise.data.pool import PoolReading, SourcePath
from tunewise.run import PlanConfig

@command("plan")
@with_config_options(PlanConfig, panel="Plan")
@with_pool_options()
def plan_command(
    ctx: typer.Context,
    pool_path: Path = typer.Argument(..., parser=SourcePath, metavar="POOL", help=POOL_HELP),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder to write (created if needed)."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    skip_bad: bool = typer.Option(False, help="Skip malformed records (each is listed) instead of stopping."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    max_new_tokens: int = typer.Option(30, min=1, help="Longest greedy answer when scoring confidence (paper A: 30)."),
    json_output: bool = typer.Option(False, "--json", help="Print the plan document as JSON on stdout."),
    config_file: Optional[Path] = CONFIG_FILE_OPTION,
    config: PlanConfig = None,
    reading: PoolReading = None,
) -> None:
    """Plan labels per task: how many each task needs, and which examples; writes a run folder and a report."""
    import tunewise as tw

    from tunewise.io import check_output_folder

    started = time.perf_counter()
    check_output_folder(output)
    pool = reading.read(pool_path, task_field, skip_bad=skip_bad)
    tw.check_plan_inputs(pool, config, tw.resolve_coefficients(config.coefficients, model), source=pool_path,
                         output=output, config_file=config_file, writes_config=True)
    print_pool_notes(pool)
    console.print(f"loading {escape(model)} …", highlight=False)
    backend = tw.load_backend(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                              max_batch_tokens=config.batch_tokens)
    result = tw.plan(pool, backend, config, output, model_name=model, task_field=task_field, progress=stage_progress,
                     run_config=resolved_config(ctx), config_file=config_file)
    if json_output:
        print_json(result.document)
    else:
        print_plan(result.document)
    console.print(f"done in {time.perf_counter() - started:.0f} s", highlight=False)
    report = f"report → {escape(str(output / 'report.html'))}"
    (console if json_output else stdout).print(report, highlight=False, soft_wrap=True)


@command("report")
def report_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Folder written by `tunewise plan` (or demo)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Rebuild RUN_DIR/report.html from the files in the run folder."""
    import tunewise as tw

    from tunewise.io import RunFolder
    from tunewise.report.html import REPORT_FILE

    if not run_dir.is_dir():
        raise TunewiseError("no such run folder", file=run_dir, fix="pass the -o folder of `tunewise plan`")
    RunFolder(run_dir).check([REPORT_FILE])
    path = tw.build_report(run_dir)
    if as_json:
        print_json({"report": str(path)})
        return
    stdout.print(f"report → {escape(str(path))}", highlight=False, soft_wrap=True)


