"""``tunewise select``: choose examples from a scores table and write the selection manifest."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.options import StrategyFlags, flag_name, with_config_options, with_strategy_options
from tunewise.data.pool import Columns
from tunewise.training.finetune import MAX_SEED
from tunewise.errors import TunewiseError
from tunewise.select import available_strategies


@command("select")
@with_strategy_options(panel="Strategy parameters")
@with_config_options(Columns, panel="Pool fields (of --pool, for --export)", name="columns")
def select_command(
    scores_path: Path = typer.Argument(..., metavar="SCORES", help="Scores file written by `tunewise score`."),
    output: Path = typer.Option(..., "-o", "--output", help="Selection manifest to write (JSONL)."),
    strategy: str = typer.Option(..., "--strategy", "-s", help="One of: " + ", ".join(available_strategies()) + "."),
    budget: Optional[int] = typer.Option(None, "--budget", "-n", help="Number of examples to select."),
    fraction: Optional[float] = typer.Option(None, help="Fraction of the pool to select, in (0, 1]."),
    cap_to_pool: bool = typer.Option(False, "--cap-to-pool",
                                     help="Let a budget above the pool select the whole pool instead of stopping."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed for every random choice."),
    pool: Optional[Path] = typer.Option(None, help="The scored pool, to --export the chosen examples."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name (as when scoring)."),
    export: Optional[str] = typer.Option(None, help="Also write the chosen examples: messages or alpaca."),
    export_path: Optional[Path] = typer.Option(None, help="Where --export writes (default: beside -o)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    strategy_flags: StrategyFlags = None,
    columns: Columns = None,
) -> None:
    """Select examples and write the manifest (one row per pick) and its .meta.json provenance."""
    from tunewise.data.table import read_scores
    from tunewise.data.export import EXPORT_FORMATS, default_export_path
    from tunewise.io import check_output_file, refuse_overwriting_inputs
    from tunewise.select.manifest import meta_path, selection_meta, write_selection

    if (budget is None) == (fraction is None):
        raise TunewiseError("give exactly one of --budget and --fraction", fix="e.g. --budget 500 or --fraction 0.1")
    if budget is not None and budget < 0:
        raise TunewiseError(f"--budget must be ≥ 0, got {budget}", field="budget")
    if fraction is not None and not 0 < fraction <= 1:
        raise TunewiseError(f"--fraction must be in (0, 1], got {fraction}", field="fraction")
    if export is not None:
        if export not in EXPORT_FORMATS:
            raise TunewiseError(
                f"unknown export format '{export}'", field="export", fix="use --export " + " or ".join(EXPORT_FORMATS)
            )
        if pool is None:
            raise TunewiseError(
                "--export needs the pool the scores came from", fix="add --pool POOL (and --task-field)"
            )
    if columns.used() and export is None:
        flags = ", ".join(flag_name(name) for name in columns.used())
        raise TunewiseError(f"{flags} map{'s' if len(columns.used()) == 1 else ''} the fields of the --pool that "
                            "--export reads, and without --export no pool is read",
                            fix="add --export FORMAT --pool POOL, or drop the field flags")

    export_target = None if export is None else export_path or default_export_path(output, export)
    outputs = {"-o": output, "the selection's provenance file": meta_path(output), "--export-path": export_target}
    refuse_overwriting_inputs(outputs, {"the scores": scores_path, "--pool": pool, **strategy_flags.files})
    for name, path in outputs.items():
        if path is not None:
            check_output_file(path, field=name.lstrip("-"), example="-o selection.jsonl")

    chosen = strategy_from_flags(strategy, strategy_flags)

    scores, provenance = read_scores(scores_path)
    if fraction is not None:
        budget = math.floor(fraction * len(scores) + 0.5)
        if budget == 0:
            raise TunewiseError(
                f"--fraction {fraction} of {len(scores)} examples selects none "
                f"({fraction * len(scores):.3g} rounds to 0)",
                field="fraction", fix=f"pass --fraction {0.5 / len(scores):.3g} or more, or --budget 1 or more",
            )
    if budget == 0:
        raise TunewiseError("--budget 0 selects nothing", field="budget", fix="pass --budget 1 or more")
    from tunewise.select.base import check_budget_fits_pool

    check_budget_fits_pool(budget, len(scores), scores_path, cap_to_pool)
    selection = chosen.select(scores, budget, seed)
    selection.notes.extend(starved_task_notes(scores, selection))

    extra_files = {}
    if export is not None:
        extra_files[export_target] = export_selected(scores, selection, pool, task_field, export, columns)
    meta = selection_meta(
        scores, selection, chosen, seed=seed, budget=budget, scores_provenance=provenance, scores_path=str(scores_path)
    ) | columns.provenance()  # field flags come only with --export (checked above)
    written = write_selection(output, scores, selection, meta, extra_files)

    for note in selection.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if as_json:
        print_json({**meta, "written": [str(path) for path in written]})
        return
    stdout.print(allocation_table(meta))
    stdout.print(
        f"{len(selection)} of {len(scores)} examples selected with {strategy} → " + ", ".join(map(str, written)),
        markup=False, highlight=False, soft_wrap=True,
    )


def starved_task_notes(scores, selection) -> list[str]:
    """A note naming the tasks that got no example, when the budget left some out: with fewer
    picks than tasks a per-task split cannot give each task one, and the user must be told."""
    if "task" not in scores.columns or not len(selection):
        return []
    picked = set(scores["task"].astype(str).to_numpy()[selection.positions].tolist())
    tasks = list(dict.fromkeys(scores["task"].astype(str).tolist()))
    starved = [task for task in tasks if task not in picked]
    if not starved:
        return []
    shown = ", ".join(starved[:5]) + (f" and {len(starved) - 5} more" if len(starved) > 5 else "")
    return [f"{len(starved)} of {len(tasks)} tasks get no example from {len(selection)} picks: {shown}"
            + (" (fewer picks than tasks)" if len(selection) < len(tasks) else "")]


def strategy_from_flags(strategy: str, flags: StrategyFlags):
    """The strategy object the flags describe: a task strategy gets its ``within`` strategy built as
    an object from the flags that belong to it; a flag that applies to neither is refused."""
    from tunewise.errors import did_you_mean
    from tunewise.select import STRATEGIES, WITHIN_TASK, route_parameters
    from tunewise.select.base import build_strategy

    if strategy not in STRATEGIES:
        raise TunewiseError(f"unknown strategy '{strategy}'", field="strategy", fix=did_you_mean(strategy, STRATEGIES))
    if not STRATEGIES[strategy].command_line:
        raise TunewiseError(f"the {strategy} strategy needs predicted learning curves, which `select` cannot make",
                            field="strategy", fix=f"use `tunewise plan --strategy {strategy} --coefficients ...`")
    given = flags.params()
    values = {name: value for name, (value, _) in given.items()}
    own, inner, rest = route_parameters(strategy, values)
    declared = STRATEGIES[strategy].parameters
    if rest:
        names = sorted({given[name][1] for name in rest})
        used_by = f"--strategy {strategy}" + (f" --within {values.get('within', 'random')}" if "within" in declared
                                              else "")
        raise TunewiseError(
            f"{', '.join(names)} {'does' if len(names) == 1 else 'do'} not apply to {used_by}",
            fix="drop the flag, or choose a strategy that uses it",
        )
    if inner:
        own["within"] = build_strategy(WITHIN_TASK[own["within"]], inner)
    return build_strategy(STRATEGIES[strategy], own)


def export_selected(scores, selection, pool_path: Path, task_field: str | None, export_format: str,
                    columns: Columns | None = None) -> bytes:
    """The chosen examples, joined from the pool (read with ``columns``) by id, in the requested
    training format."""
    from tunewise.data.pool import read_pool
    from tunewise.data.export import export_examples
    from tunewise.data.table import ExampleTable

    picked = ExampleTable.join(read_pool(pool_path, task_field, columns=columns), scores.iloc[selection.positions],
                               what="selected")
    return export_examples(picked.examples, export_format)


def allocation_table(meta: dict) -> Table:
    """Per-task pool size, picks and share of the selection."""
    table = Table(title=f"Selection per task ({meta['strategy']}, seed {meta['seed']})")
    table.add_column("task")
    table.add_column("pool", justify="right")
    table.add_column("selected", justify="right")
    table.add_column("share", justify="right")
    for task, counts in meta["tasks"].items():
        share = counts["selected"] / meta["selected"] if meta["selected"] else 0.0
        table.add_row(escape(task), str(counts["pool"]), str(counts["selected"]), f"{share:.1%}")
    total_share = "100.0%" if meta["selected"] else "0.0%"
    table.add_row("total", str(meta["pool"]), str(meta["selected"]), total_share, style="bold")
    return table
