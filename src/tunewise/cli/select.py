"""``tunewise select``: choose examples from a scores table and write the selection manifest."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.options import StrategyFlags, flag_name, with_pool_options, with_strategy_options
from tunewise.data.pool import PoolReading, SourcePath
from tunewise.training.finetune import MAX_SEED
from tunewise.errors import TunewiseError
from tunewise.select import available_strategies


@command("select")
@with_strategy_options(panel="Strategy parameters")
@with_pool_options(panel="Pool reading (of --pool; default: as it was scored)")
def select_command(
    scores_path: Path = typer.Argument(..., metavar="SCORES", help="Scores file written by `tunewise score`."),
    output: Path = typer.Option(..., "-o", "--output", help="Selection manifest to write (JSONL)."),
    strategy: str = typer.Option(..., "--strategy", "-s", help="One of: " + ", ".join(available_strategies()) + "."),
    budget: Optional[int] = typer.Option(None, "--budget", "-n", help="Number of examples to select."),
    fraction: Optional[float] = typer.Option(None, help="Fraction of the pool to select, in (0, 1]."),
    cap_to_pool: bool = typer.Option(False, "--cap-to-pool",
                                     help="Let a budget above the pool select the whole pool instead of stopping."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed for every random choice."),
    pool: Optional[Path] = typer.Option(None, parser=SourcePath, help="The scored pool: the picks' own ids and fields go into the "
                                                   "manifest, and --export writes them as training data."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name (as when scoring)."),
    export: Optional[str] = typer.Option(None, help="Also write the chosen examples: messages, prompt_completion "
                                                     "or alpaca."),
    export_path: Optional[Path] = typer.Option(None, help="Where --export writes (default: beside -o)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    strategy_flags: StrategyFlags = None,
    reading: PoolReading = None,
) -> None:
    """Select examples and write the manifest (one row per pick) and its .meta.json provenance."""
    from tunewise.data.table import read_scores
    from tunewise.data.export import EXPORT_FORMATS, default_export_path, export_examples
    from tunewise.io import check_output_file, refuse_overwriting_inputs
    from tunewise.select.base import check_label_budget
    from tunewise.select.manifest import meta_path, selection_meta, write_selection

    if (budget is None) == (fraction is None):
        raise TunewiseError("give exactly one of --budget and --fraction", fix="e.g. --budget 500 or --fraction 0.1")
    if budget is not None:
        check_label_budget(budget)
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
    pool_flags = list(reading.used())
    if pool_flags and pool is None:
        flags = ", ".join(flag_name(name) for name in pool_flags)
        raise TunewiseError(f"{flags} {'says' if len(pool_flags) == 1 else 'say'} how to read the --pool, "
                            "and without --pool no pool is read",
                            fix="add --pool POOL (the pool that was scored), or drop the flags")

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
    from tunewise.select.base import check_budget_fits_pool

    check_budget_fits_pool(budget, len(scores), scores_path, cap_to_pool)
    selection = chosen.select(scores, budget, seed)
    selection.notes.extend(starved_task_notes(scores, selection))

    extra_files, picks = {}, None
    if pool is not None:
        reading = scored_reading(reading, provenance, scores_path)
        picks = picked_examples(scores, selection, pool, task_field, reading)
    if export is not None:
        extra_files[export_target] = export_examples(picks, export)
    meta = selection_meta(
        scores, selection, chosen, seed=seed, budget=budget, scores_provenance=provenance, scores_path=str(scores_path)
    ) | reading.provenance()  # pool-reading flags come only with --pool (checked above)
    written = write_selection(output, scores, selection, meta, extra_files, picks=picks)

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


def scored_reading(given: PoolReading, provenance: dict, scores_path: Path) -> PoolReading:
    """How to read --pool: the pool-reading flags ``given``, and for each one not given, what the
    scores' provenance records (the field flags as a whole, ``split``, ``dataset_config``,
    ``keep_duplicates``), so that the pool is read as it was scored; refused when the provenance
    is unreadable."""
    try:
        recorded = PoolReading.from_provenance(provenance)
    except (TypeError, ValueError) as error:
        raise TunewiseError(f"the scores' provenance holds unreadable field flags ({error})", file=scores_path,
                            field="columns", fix="pass the flags (--prompt-field …, --split …) the pool was "
                                                 "scored with") from None
    reading = PoolReading(given.columns if given.columns.used() else recorded.columns,
                          given.split or recorded.split, given.dataset_config or recorded.dataset_config,
                          given.keep_duplicates or recorded.keep_duplicates)
    taken = {name: value for name, value in reading.used().items() if name not in given.used()}
    if taken:
        flags = " ".join(flag_name(name) + ("" if value is True else f" {value}") for name, value in taken.items())
        console.print(f"[yellow]note:[/] reading --pool with the flags it was scored with: {escape(flags)}",
                      highlight=False)
    return reading


def picked_examples(scores, selection, pool_path: Path, task_field: str | None,
                    reading: PoolReading | None = None) -> tuple:
    """The chosen examples, in pick order, joined from the pool (read as ``reading`` says) by id:
    what the export holds and where the manifest's user ids and fields come from.

    Raises TunewiseError when a pick is not in the pool (not the pool that was scored), or is
    there under another task (the pool read with another --task-field than when scoring).
    """
    from tunewise.data.table import ExampleTable

    rows = scores.iloc[selection.positions]
    picks = ExampleTable.join((reading or PoolReading()).read(pool_path, task_field), rows,
                              what="selected").examples
    tasks = rows["task"].astype(str).tolist()
    differ = [(pick, task) for pick, task in zip(picks, tasks) if pick.task != task]
    if differ:
        pick, task = differ[0]
        raise TunewiseError(f"{len(differ)} selected examples have another task in the pool than in the scores "
                            f"(e.g. {pick.id}: '{pick.task}' in the pool, '{task}' in the scores)", file=pool_path,
                            field="task-field", fix="pass the --task-field the pool was scored with")
    return picks


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
