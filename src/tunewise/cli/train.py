"""``tunewise finetune``, ``tunewise evaluate`` and ``tunewise sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.options import (CONFIG_FILE_OPTION, DEVICE_HELP, DTYPE_HELP, MAX_NEW_TOKENS_HELP, METRIC_HELP, MODEL_HELP,
                                   check_sweep_output, model_input, parse_int_list, with_config_options,
                                   with_pool_options)
from tunewise.cli.tables import curves_table, gains_table
from tunewise.cli.progress import progress_bar
from tunewise.data.pool import PoolReading, SourcePath
from tunewise.errors import TunewiseError
from tunewise.training.sweep import SweepRun
from tunewise.training.finetune import FinetuneConfig

_TRAIN_DTYPE_HELP = ("Compute type: auto (bf16 mixed precision where the hardware runs bf16: CUDA, CPUs with "
                     "AVX512-BF16 or AMX; fp32 otherwise), float32, bfloat16.")
_PROFILE_HELP = ("Start from a named fine-tuning recipe; flags given explicitly win. paper-a: paper A's "
                 "learning-curve recipe (full fine-tuning, lr 1e-5 cosine, 500 steps, validation every 4 "
                 "steps, early stopping after 10, best checkpoint restored).")
_SFT_CONFIG_HELP = "YAML file of TRL SFTConfig fields passed through to the trainer (they win over tunewise's)."


def finetune_settings(context: typer.Context, config: FinetuneConfig, profile: str | None, sft_config: Path | None):
    """The command's ``FinetuneConfig`` on top of ``--profile`` (flags given on the command line
    win) and the ``--sft-config`` overrides."""
    import dataclasses

    from tunewise.training.finetune import read_sft_overrides

    if profile is not None:
        def given(name: str) -> bool:
            source = context.get_parameter_source(name)
            # a flag typed, or a key of --config run.yaml (click's default map), wins over the profile
            return source is not None and source.name != "DEFAULT"

        explicit = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                    if f.name in context.params and given(f.name)}
        config = FinetuneConfig.from_profile(profile, **explicit)
    return config, (read_sft_overrides(sft_config) if sft_config is not None else None)


def selected_examples(pool, selection_path: Path) -> list:
    """The pool's examples named by a selection manifest, in the manifest's order."""
    from tunewise.select.manifest import read_selection

    picks, _ = read_selection(selection_path)
    return pool.examples_for(picks["id"], what="selected", file=selection_path,
                             fix="pass the pool (and --task-field) the selection was made from")


@command("finetune")
@with_pool_options()
@with_config_options(FinetuneConfig, panel="Fine-tuning")
def finetune_command(
    context: typer.Context,
    pool_path: Path = typer.Argument(..., parser=SourcePath, metavar="POOL", help="Labelled pool file (or saved HF dataset folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write the LoRA adapter to."),
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    selection: Optional[Path] = typer.Option(
        None, help="Train only on these picks (selection.jsonl from `tunewise select`)."
    ),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=_TRAIN_DTYPE_HELP),
    profile: Optional[str] = typer.Option(None, help=_PROFILE_HELP, rich_help_panel="Fine-tuning"),
    sft_config: Optional[Path] = typer.Option(None, help=_SFT_CONFIG_HELP, rich_help_panel="Fine-tuning"),
    config: FinetuneConfig = None,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    reading: PoolReading = None,
) -> None:
    """Fine-tune a LoRA adapter (or the whole model) on a pool, or a selection of it, with TRL, and save it."""
    from tunewise.io import refuse_overwriting_inputs
    from tunewise.model.load import load_model
    from tunewise.select.manifest import meta_path
    from tunewise.training.finetune import check_adapter_output, finetune

    config, sft_overrides = finetune_settings(context, config, profile, sft_config)
    refuse_overwriting_inputs({"-o": output}, {"the pool": pool_path, "--selection": selection,
                                               "the selection's provenance file": selection and meta_path(selection),
                                               "--sft-config": sft_config, **model_input(model)},
                              replaced_whole=True)
    check_adapter_output(output)
    pool = reading.read(pool_path, task_field)
    examples = selected_examples(pool, selection) if selection is not None else pool.examples
    loaded = load_model(model, device=device, dtype=dtype)
    with progress_bar("fine-tuning", unit="steps") as bar:
        update = lambda step, total, loss: bar(step, total, f"loss {loss:.4f}")  # noqa: E731
        result = finetune(loaded, examples, config, output_dir=output, progress=update, dtype=dtype,
                          sft_overrides=sft_overrides,
                          provenance={"pool": str(pool_path), "task_field": task_field,
                                      "selection": None if selection is None else str(selection),
                                      **reading.provenance()})
    result.release()
    log = result.log.to_dict()
    print_length_notes(log["lengths"])
    if as_json:
        print_json({**log, "adapter": str(result.adapter_dir)})
        return
    stdout.print(
        f"fine-tuned on {log['examples']} examples: {len(log['steps'])} steps in {log['seconds']:.1f} s "
        f"({log['steps_per_second']:.3g} steps/s, {log['examples_per_second']:.3g} examples/s), "
        f"final loss {log['final_loss']:.4f} → {escape(str(result.adapter_dir))}",
        highlight=False,
    )


def print_length_notes(lengths: dict) -> None:
    """Say which training examples --truncate cut, and which were left with no response token."""
    from tunewise.model.lengths import listing

    if lengths.get("truncated"):
        console.print(f"[yellow]note:[/] {len(lengths['truncated'])} examples were longer than "
                      f"{lengths['max_tokens']} tokens and were cut (--truncate): "
                      f"{escape(listing(lengths['truncated']))}", highlight=False)
    if lengths.get("without_response"):
        console.print(f"[yellow]note:[/] {len(lengths['without_response'])} examples keep no response token "
                      f"after the cut and train nothing (left out): {escape(listing(lengths['without_response']))}",
                      highlight=False)


@command("evaluate")
@with_pool_options(panel="Test set reading")
def evaluate_command(
    test_path: Path = typer.Argument(..., parser=SourcePath, metavar="TEST", help="Labelled test file (the gold answer is the response)."),
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
    predictions: Optional[Path] = typer.Option(
        None, help="Score these answers (JSONL, one {\"id\" or \"line\", \"prediction\"} per test item, "
                   "made elsewhere: vLLM, an API, another harness) instead of generating; no model is loaded."),
    truncate: bool = typer.Option(False, help="Cut the beginning of prompts too long for the model's context "
                                              "instead of refusing them (marked in the samples, counted in the "
                                              "config)."),
    reading: PoolReading = None,
) -> None:
    """Answer a test set greedily and score it per task (results JSON in lm-evaluation-harness style)."""
    from tunewise.io import check_output_file, refuse_overwriting_inputs, write_json
    from tunewise.model.load import load_model, model_summary
    from tunewise.training.evaluate import evaluate
    from tunewise.training.finetune import load_adapter, read_adapter_info

    if adapter is not None:
        read_adapter_info(adapter)  # a damaged adapter folder stops here, before the model loads
    refuse_overwriting_inputs({"-o": output}, {"the test set": test_path, "--adapter": adapter,
                                               "--predictions": predictions, **model_input(model)})
    check_output_file(output, example="-o results.json")
    test = reading.read(test_path, task_field, limit=limit)
    if predictions is not None:
        if adapter is not None:
            raise TunewiseError("--adapter has no effect when --predictions gives the answers", field="adapter",
                                fix="drop --adapter, or drop --predictions to generate the answers")
        results = score_prediction_file(test.examples, predictions, metric)
    else:
        loaded = load_model(model, device=device, dtype=dtype)
        adapted = load_adapter(loaded, adapter) if adapter is not None else loaded.model
        with progress_bar("evaluating") as update:
            results = evaluate(adapted, loaded.tokenizer, test.examples, metric=metric,
                               max_new_tokens=max_new_tokens, batch_tokens=batch_tokens, progress=update,
                               truncate=truncate)
        results["config"].update(model_summary(loaded), adapter=None if adapter is None else str(adapter))
    results["config"].update(test=str(test_path), task_field=task_field, limit=limit, **test.provenance())
    write_json(output, results)
    if as_json:
        print_json(results)
        return
    stdout.print(results_table(results))
    if results["config"].get("truncated"):
        stdout.print(f"truncated: {results['config']['truncated']} of {results['config']['n_samples']} prompts lost "
                     "their beginning to fit the model's context (--truncate; 'truncated' in the samples)",
                     highlight=False)
    stdout.print(f"results → {escape(str(output))}", highlight=False)


def score_prediction_file(examples, predictions: Path, metric: str) -> dict:
    """The results document for answers read from ``predictions`` (see ``read_predictions``)."""
    from tunewise.training.evaluate import LOG_LIKELIHOOD, answer_metrics, check_metric, read_predictions
    from tunewise.training.evaluate import score_predictions

    check_metric(metric)
    if metric == LOG_LIKELIHOOD:
        raise TunewiseError("log_likelihood scores the gold answer with the model, not a prediction",
                            field="metric", fix="drop --predictions, or choose an answer metric (auto, exact_match, "
                                                "multiple_choice, gsm8k)")
    if any(example.response is None for example in examples):
        raise TunewiseError("the test set has items without a gold answer", field="response",
                            fix="score predictions against a labelled test set")
    answers = read_predictions(predictions, examples)
    metrics = answer_metrics(examples, metric)
    config = {"metric": metric, "metrics": metrics, "predictions": str(predictions), "n_samples": len(examples),
              "truncated": 0}
    return score_predictions(examples, answers, metrics, config)


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
@with_pool_options(panel="Pool reading (pool and --test)")
@with_config_options(SweepRun, panel="Runs", name="run")
@with_config_options(FinetuneConfig, exclude=("seed",), panel="Fine-tuning")
def sweep_command(
    context: typer.Context,
    pool_path: Path = typer.Argument(..., parser=SourcePath, metavar="POOL", help="Labelled pool to select from."),
    test: Path = typer.Option(..., help="Labelled held-out test file every run is evaluated on."),
    output: Path = typer.Option(..., "-o", "--output", help="Sweep folder (resumed when it exists)."),
    budgets: str = typer.Option(..., help="Comma-separated training budgets, e.g. 50,100,200."),
    strategies: str = typer.Option(
        "random,task_diversity",
        help="Comma-separated strategies to compare, each optionally with parameters after a colon, "
             "e.g. random,difficulty_bucket:bucket=hard,task_diversity:within=difficulty_window,c0=0.15.",
    ),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds (selection and fine-tune)."),
    dtype: str = typer.Option("auto", help=_TRAIN_DTYPE_HELP),
    profile: Optional[str] = typer.Option(None, help=_PROFILE_HELP, rich_help_panel="Fine-tuning"),
    sft_config: Optional[Path] = typer.Option(None, help=_SFT_CONFIG_HELP, rich_help_panel="Fine-tuning"),
    config: FinetuneConfig = None,
    run: SweepRun = None,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config_file: Optional[Path] = CONFIG_FILE_OPTION,
    reading: PoolReading = None,
) -> None:
    """Select → fine-tune → evaluate for every strategy x budget x seed; learning curves, AUC and
    gain over random with 95 % confidence intervals. ``--config run.yaml`` takes the flags from YAML."""
    from tunewise.training.sweep import (CONFIG_FILE, PLOT_FILE, SUMMARY_FILE, check_sweep_folder, run_sweep,
                                         split_strategy_specs)

    config, sft_overrides = finetune_settings(context, config, profile, sft_config)
    budget_list = parse_int_list(budgets, "budgets")
    seed_list = parse_int_list(seeds, "seeds")
    strategy_list = split_strategy_specs(strategies)
    check_sweep_output(output, {"the pool": pool_path, "--test": test, **model_input(run.model)},
                       (CONFIG_FILE, PLOT_FILE, SUMMARY_FILE))
    check_sweep_folder(output)
    pool = reading.read(pool_path, run.task_field)
    test_set = reading.read(test, run.task_field)
    with progress_bar("sweep", unit="runs") as update:
        summary = run_sweep(pool, test_set, budget_list, strategy_list, seed_list, run.model, output, config,
                            device=run.device, dtype=dtype, metric=run.metric, max_new_tokens=run.max_new_tokens,
                            batch_tokens=run.batch_tokens, progress=update, sft_overrides=sft_overrides,
                            engine=run.engine, workers=run.workers)
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


