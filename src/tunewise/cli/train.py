"""``tunewise finetune``, ``tunewise evaluate`` and ``tunewise sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.options import (DEVICE_HELP, DTYPE_HELP, MAX_NEW_TOKENS_HELP, METRIC_HELP, MODEL_HELP,
                                   check_sweep_output, model_input, parse_int_list, with_config_options)
from tunewise.cli.tables import curves_table, gains_table
from tunewise.cli.progress import progress_bar
from tunewise.training.finetune import FinetuneConfig

def selected_examples(pool, selection_path: Path) -> list:
    """The pool's examples named by a selection manifest, in the manifest's order."""
    from tunewise.select.manifest import read_selection

    picks, _ = read_selection(selection_path)
    return pool.examples_for(picks["id"], what="selected", file=selection_path,
                             fix="pass the pool (and --task-field) the selection was made from")


@command("finetune")
@with_config_options(FinetuneConfig, panel="Fine-tuning")
def finetune_command(
    pool_path: Path = typer.Argument(..., metavar="POOL", help="Labelled pool file (or saved HF dataset folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write the LoRA adapter to."),
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    selection: Optional[Path] = typer.Option(
        None, help="Train only on these picks (selection.jsonl from `tunewise select`)."
    ),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    config: FinetuneConfig = None,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fine-tune a LoRA adapter on a pool (or a selection of it) and save it."""
    from tunewise.data.pool import read_pool
    from tunewise.io import refuse_overwriting_inputs
    from tunewise.model.load import load_model
    from tunewise.select.manifest import meta_path
    from tunewise.training.finetune import check_adapter_output, finetune

    refuse_overwriting_inputs({"-o": output}, {"the pool": pool_path, "--selection": selection,
                                               "the selection's provenance file": selection and meta_path(selection),
                                               **model_input(model)}, replaced_whole=True)
    check_adapter_output(output)
    pool = read_pool(pool_path, task_field)
    examples = selected_examples(pool, selection) if selection is not None else pool.examples
    loaded = load_model(model, device=device, dtype=dtype)
    with progress_bar("fine-tuning", unit="steps") as bar:
        update = lambda step, total, loss: bar(step, total, f"loss {loss:.4f}")  # noqa: E731
        result = finetune(loaded, examples, config, output_dir=output, progress=update)
    log = result.log.to_dict()
    if log["truncated_examples"]:
        console.print(f"[yellow]note:[/] {log['truncated_examples']} examples were longer than "
                      f"--max-seq-length {config.max_seq_length} tokens and were cut", highlight=False)
    if as_json:
        print_json({**log, "adapter": str(result.adapter_dir)})
        return
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
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder from `tunewise finetune`."),
    metric: str = typer.Option("auto", help=METRIC_HELP),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N examples."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help=MAX_NEW_TOKENS_HELP),
    batch_tokens: int = typer.Option(8192, min=1, help="Token budget per generation batch."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Answer a test set greedily and score it per task (results JSON in lm-evaluation-harness style)."""
    from tunewise.data.pool import read_pool
    from tunewise.io import check_output_file, refuse_overwriting_inputs, write_json
    from tunewise.model.load import load_model, model_summary
    from tunewise.training.evaluate import evaluate
    from tunewise.training.finetune import load_adapter, read_adapter_info

    if adapter is not None:
        read_adapter_info(adapter)  # a damaged adapter folder stops here, before the model loads
    refuse_overwriting_inputs({"-o": output}, {"the test set": test_path, "--adapter": adapter, **model_input(model)})
    check_output_file(output, example="-o results.json")
    test = read_pool(test_path, task_field, limit=limit)
    loaded = load_model(model, device=device, dtype=dtype)
    adapted = load_adapter(loaded, adapter) if adapter is not None else loaded.model
    with progress_bar("evaluating") as update:
        results = evaluate(adapted, loaded.tokenizer, test.examples, metric=metric,
                           max_new_tokens=max_new_tokens, batch_tokens=batch_tokens, progress=update)
    results["config"].update(model_summary(loaded), adapter=None if adapter is None else str(adapter),
                             test=str(test_path), task_field=task_field, limit=limit)
    write_json(output, results)
    if as_json:
        print_json(results)
        return
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
        if "acc_norm" in entry:
            stderr = entry["acc_norm_stderr"]
            table.add_row(escape(task), f"acc_norm (chance {entry['chance']:.3f})", str(entry["n"]),
                          f"{entry['acc_norm']:.4f}", "-" if stderr is None else f"{stderr:.4f}")
    if len(results["results"]) > 1:
        table.add_row("mean over tasks", "", str(results["config"]["n_samples"]), f"{results['average']:.4f}", "")
    return table


@command("sweep")
@with_config_options(FinetuneConfig, exclude=("seed",), panel="Fine-tuning")
def sweep_command(
    pool_path: Path = typer.Argument(..., metavar="POOL", help="Labelled pool to select from."),
    test: Path = typer.Option(..., help="Labelled held-out test file every run is evaluated on."),
    output: Path = typer.Option(..., "-o", "--output", help="Sweep folder (resumed when it exists)."),
    budgets: str = typer.Option(..., help="Comma-separated training budgets, e.g. 50,100,200."),
    strategies: str = typer.Option(
        "random,task_diversity",
        help="Comma-separated strategies to compare, each optionally with parameters after a colon, "
             "e.g. random,difficulty_bucket:bucket=hard,task_diversity:within=difficulty_window,c0=0.15.",
    ),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds (selection and fine-tune)."),
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name (pool and test)."),
    metric: str = typer.Option("auto", help=METRIC_HELP),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help=MAX_NEW_TOKENS_HELP),
    batch_tokens: int = typer.Option(8192, min=1, help="Token budget per generation batch."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    config: FinetuneConfig = None,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Select → fine-tune → evaluate for every strategy x budget x seed; learning curves, AUC and
    gain over random with 95 % confidence intervals."""
    from tunewise.data.pool import read_pool
    from tunewise.training.sweep import (CONFIG_FILE, PLOT_FILE, SUMMARY_FILE, check_sweep_folder, run_sweep,
                                         split_strategy_specs)

    budget_list = parse_int_list(budgets, "budgets")
    seed_list = parse_int_list(seeds, "seeds")
    strategy_list = split_strategy_specs(strategies)
    check_sweep_output(output, {"the pool": pool_path, "--test": test, **model_input(model)},
                       (CONFIG_FILE, PLOT_FILE, SUMMARY_FILE))
    check_sweep_folder(output)
    pool = read_pool(pool_path, task_field)
    test_set = read_pool(test, task_field)
    with progress_bar("sweep", unit="runs") as update:
        summary = run_sweep(pool, test_set, budget_list, strategy_list, seed_list, model, output, config,
                            device=device, dtype=dtype, metric=metric, max_new_tokens=max_new_tokens,
                            batch_tokens=batch_tokens, progress=update)
    if as_json:
        print_json(summary)
        return
    stdout.print(curves_table(summary))
    if summary["baseline"] is None:
        console.print("[yellow]note:[/] add 'random' to --strategies to get the gain over random", highlight=False)
    elif len(summary["strategies"]) > 1:
        stdout.print(gains_table(summary))
    stdout.print(f"summary → {escape(str(output / SUMMARY_FILE))}, plot → {escape(str(output / PLOT_FILE))}",
                 highlight=False)


