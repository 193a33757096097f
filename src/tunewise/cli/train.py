"""``tunewise finetune``, ``tunewise evaluate`` and ``tunewise sweep``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tunewise.cli.app import command, console, stdout
from tunewise.cli.progress import progress_bar
from tunewise.errors import TunewiseError
from tunewise.training.finetune import FinetuneConfig

_MODEL_HELP = "smollm2 (bundled), tiny-random, or a model folder."
_DEVICE_HELP = "auto, cpu, cuda, cuda:1 …"
_DTYPE_HELP = "auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), fp32, bf16."
_METRIC_HELP = ("auto (per task), exact_match, multiple_choice, gsm8k, or log_likelihood (mean log-probability "
                "per gold-answer token; no generation).")
_MAX_NEW_TOKENS_HELP = "Longest answer (default: each task's longest gold answer + 16 tokens)."


def with_config_options(config_class, exclude: tuple[str, ...] = ()):
    """Give a command one ``--flag`` per field of a config dataclass, passed in as ``config``.

    The fields' defaults and ``metadata["help"]`` become the flags' defaults and help, so the
    dataclass stays the single place where a hyperparameter is declared.
    """
    hints = typing.get_type_hints(config_class)
    fields = [f for f in dataclasses.fields(config_class) if f.name not in exclude]

    def decorate(func):
        signature = inspect.signature(func, eval_str=True)
        parameters = [p for p in signature.parameters.values() if p.name != "config"]
        for field in fields:
            option = typer.Option(field.default, help=field.metadata.get("help"), rich_help_panel="Fine-tuning")
            parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY,
                                                default=option, annotation=hints[field.name]))

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            config = config_class(**{field.name: kwargs.pop(field.name) for field in fields})
            return func(*args, config=config, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)
        return wrapper

    return decorate


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


def check_output_file(path: Path) -> None:
    """Refuse an output path that is a folder, before any slow work starts."""
    if path.is_dir():
        raise TunewiseError("the output path is a folder", file=str(path), fix="pass a file path with -o")


def selected_examples(pool, selection_path: Path) -> list:
    """The pool's examples named by a selection manifest, in the manifest's order."""
    from tunewise.select.manifest import read_selection

    picks, _ = read_selection(selection_path)
    by_id = pool.by_id()
    missing = [example_id for example_id in picks["id"] if example_id not in by_id]
    if missing:
        raise TunewiseError(f"{len(missing)} selected ids are not in the pool (e.g. {missing[0]})",
                            file=str(selection_path),
                            fix="pass the pool (and --task-field) the selection was made from")
    return [by_id[example_id] for example_id in picks["id"]]


@contextlib.contextmanager
def _training_progress():
    """Yields ``update(step, total, loss)`` for a bar that shows the running loss."""
    progress = Progress(TextColumn("[bold]fine-tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), console=console)
    task_id = None

    def update(step: int, total: int, loss: float) -> None:
        nonlocal task_id
        if task_id is None:
            task_id = progress.add_task("fine-tuning", total=total, loss="-")
        progress.update(task_id, completed=step, loss=f"{loss:.4f}")

    with progress:
        yield update


@command("finetune")
@with_config_options(FinetuneConfig)
def finetune_command(
    pool_path: Path = typer.Argument(..., metavar="POOL", help="Labelled pool file (or saved HF dataset folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write the LoRA adapter to."),
    model: str = typer.Option("smollm2", help=_MODEL_HELP),
    selection: Optional[Path] = typer.Option(
        None, help="Train only on these picks (selection.jsonl from `tunewise select`)."
    ),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    dtype: str = typer.Option("auto", help=_DTYPE_HELP),
    config: FinetuneConfig = None,
) -> None:
    """Fine-tune a LoRA adapter on a pool (or a selection of it) and save it."""
    from tunewise.training.finetune import check_adapter_output, finetune
    from tunewise.model.load import load_model
    from tunewise.data.pool import read_pool

    check_adapter_output(output)
    pool = read_pool(pool_path, task_field)
    examples = selected_examples(pool, selection) if selection is not None else pool.examples
    loaded = load_model(model, device=device, dtype=dtype)
    with _training_progress() as update:
        result = finetune(loaded, examples, config, output_dir=output, progress=update)
    log = result.log.to_dict()
    if log["truncated_examples"]:
        console.print(f"[yellow]note:[/] {log['truncated_examples']} examples were longer than "
                      f"--max-seq-length {config.max_seq_length} tokens and were cut", highlight=False)
    stdout.print(
        f"fine-tuned on {log['examples']} examples: {len(log['steps'])} steps in {log['seconds']:.1f} s "
        f"({log['steps_per_second']:.3g} steps/s, {log['examples_per_second']:.3g} examples/s), "
        f"final loss {log['final_loss']:.4f} → {escape(str(result.adapter_dir))}",
        highlight=False,
    )


@command("evaluate")
def evaluate_command(
    test_path: Path = typer.Argument(..., metavar="TEST", help="Labelled test file (the gold answer is the response)."),
    output: Path = typer.Option(..., "-o", "--output", help="Results JSON to write."),
    model: str = typer.Option("smollm2", help=_MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder from `tunewise finetune`."),
    metric: str = typer.Option("auto", help=_METRIC_HELP),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N examples."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help=_MAX_NEW_TOKENS_HELP),
    batch_tokens: int = typer.Option(8192, min=1, help="Token budget per generation batch."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    dtype: str = typer.Option("auto", help=_DTYPE_HELP),
) -> None:
    """Answer a test set greedily and score it per task (results JSON in lm-evaluation-harness style)."""
    from tunewise.training.evaluate import evaluate, write_json_atomic
    from tunewise.training.finetune import load_adapter
    from tunewise.model.load import load_model, model_summary
    from tunewise.data.pool import read_pool

    check_output_file(output)
    test = read_pool(test_path, task_field, limit=limit)
    loaded = load_model(model, device=device, dtype=dtype)
    adapted = load_adapter(loaded, adapter) if adapter is not None else loaded.model
    with progress_bar("evaluating") as update:
        results = evaluate(adapted, loaded.tokenizer, test.examples, metric=metric,
                           max_new_tokens=max_new_tokens, batch_tokens=batch_tokens, progress=update)
    results["config"].update(model_summary(loaded), adapter=None if adapter is None else str(adapter),
                             test=str(test_path), task_field=task_field, limit=limit)
    write_json_atomic(results, output)
    stdout.print(results_table(results))
    stdout.print(f"results → {escape(str(output))}", highlight=False)


def results_table(results: dict) -> Table:
    """Per-task score with its standard error, and the mean over tasks."""
    table = Table(title="Evaluation")
    for name in ("task", "metric", "n", "score", "± stderr"):
        table.add_column(name, justify="left" if name in ("task", "metric") else "right")
    for task, entry in results["results"].items():
        stderr = entry[f"{entry['metric']}_stderr"]
        table.add_row(escape(task), entry["metric"], str(entry["n"]), f"{entry[entry['metric']]:.4f}",
                      "-" if stderr is None else f"{stderr:.4f}")
    if len(results["results"]) > 1:
        table.add_row("mean over tasks", "", str(results["config"]["n_samples"]), f"{results['average']:.4f}", "")
    return table


@contextlib.contextmanager
def _sweep_progress():
    """Yields ``update(done, total, label)`` for a bar over the sweep's runs."""
    progress = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                        TextColumn("{task.fields[label]}"), TimeElapsedColumn(), console=console)
    task_id = None

    def update(done: int, total: int, label: str) -> None:
        nonlocal task_id
        if task_id is None:
            task_id = progress.add_task("sweep", total=total, label=label)
        progress.update(task_id, completed=done, label=label)

    with progress:
        yield update


@command("sweep")
@with_config_options(FinetuneConfig, exclude=("seed",))
def sweep_command(
    pool_path: Path = typer.Argument(..., metavar="POOL", help="Labelled pool to select from."),
    test: Path = typer.Option(..., help="Labelled held-out test file every run is evaluated on."),
    output: Path = typer.Option(..., "-o", "--output", help="Sweep folder (resumed when it exists)."),
    budgets: str = typer.Option(..., help="Comma-separated training budgets, e.g. 50,100,200."),
    strategies: str = typer.Option(
        "random,task_diversity",
        help="Comma-separated strategies to compare, each optionally with parameters after a colon, "
             "e.g. random,difficulty_window:c0=0.15,beta=0.",
    ),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds (selection and fine-tune)."),
    model: str = typer.Option("smollm2", help=_MODEL_HELP),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name (pool and test)."),
    metric: str = typer.Option("auto", help=_METRIC_HELP),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help=_MAX_NEW_TOKENS_HELP),
    batch_tokens: int = typer.Option(8192, min=1, help="Token budget per generation batch."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    dtype: str = typer.Option("auto", help=_DTYPE_HELP),
    config: FinetuneConfig = None,
) -> None:
    """Select → fine-tune → evaluate for every strategy x budget x seed; learning curves, AUC and
    gain over random with 95 % confidence intervals."""
    from tunewise.data.pool import read_pool
    from tunewise.training.sweep import PLOT_FILE, SUMMARY_FILE, run_sweep, split_strategy_specs

    budget_list = parse_int_list(budgets, "budgets")
    seed_list = parse_int_list(seeds, "seeds")
    strategy_list = split_strategy_specs(strategies)
    pool = read_pool(pool_path, task_field)
    test_set = read_pool(test, task_field)
    with _sweep_progress() as update:
        summary = run_sweep(pool, test_set, budget_list, strategy_list, seed_list, model, output, config,
                            device=device, dtype=dtype, metric=metric, max_new_tokens=max_new_tokens,
                            batch_tokens=batch_tokens, progress=update)
    stdout.print(curves_table(summary))
    if summary["baseline"] is None:
        console.print("[yellow]note:[/] add 'random' to --strategies to get the gain over random", highlight=False)
    elif len(summary["strategies"]) > 1:
        stdout.print(gains_table(summary))
    stdout.print(f"summary → {escape(str(output / SUMMARY_FILE))}, plot → {escape(str(output / PLOT_FILE))}",
                 highlight=False)


def curves_table(summary: dict) -> Table:
    """Mean score per budget (budget 0 = zero-shot) and the AUC, one row per strategy."""
    budgets = ["0", *map(str, summary["budgets"])]
    table = Table(title="Learning curves (mean score over seeds)")
    table.add_column("strategy")
    for budget in budgets:
        table.add_column("zero-shot" if budget == "0" else budget, justify="right")
    table.add_column("AUC", justify="right")
    for strategy, entry in summary["strategies"].items():
        cells = [f"{entry['curve'][b]:.4f}" if b in entry["curve"] else "-" for b in budgets]
        table.add_row(escape(strategy), *cells, "-" if entry["auc"] is None else f"{entry['auc']:.4f}")
    return table


def gains_table(summary: dict) -> Table:
    """Per strategy and budget: mean paired gain over random, its 95 % CI, and the seeds used."""
    table = Table(title="Gain over random (paired over seeds, 95 % t interval)")
    for name in ("strategy", "budget", "gain", "95 % CI", "seeds"):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for strategy, entry in summary["strategies"].items():
        for budget, gain in entry.get("gain_over_random", {}).items():
            interval = "-" if gain["ci_low"] is None else f"[{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]"
            table.add_row(escape(strategy), budget, f"{gain['mean']:+.4f}", interval, str(gain["n_seeds"]))
    return table
