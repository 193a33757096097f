"""``tunewise score``: indicator scores for every example of a pool."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.options import (POOL_HELP, check_output_path, parse_list, print_pool_notes, report_skipped,
                                  with_pool_options)
from tunewise.data.pool import PoolReading
from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.progress import progress_bar
from tunewise.errors import TunewiseError
from tunewise.indicators.registry import DEFAULT_INDICATORS, resolve_indicators


@command("score")
@with_pool_options()
def score_command(
    pool: Path = typer.Argument(..., help=POOL_HELP),
    output: Path = typer.Option(..., "-o", "--output", help="Scores file to write (Parquet)."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled), tiny-random, or a model folder."),
    indicators: str = typer.Option(",".join(DEFAULT_INDICATORS), help="Comma-separated indicators."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    limit: Optional[int] = typer.Option(None, min=1, help="Score only the first N examples."),
    skip_bad: bool = typer.Option(False, help="Skip malformed records (each is listed) instead of stopping."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs and on CPUs with bf16 instructions, "
                                                        "else fp32), fp32, bf16."),
    batch_tokens: Optional[int] = typer.Option(None, min=64, help="Token budget per batch."),
    max_new_tokens: int = typer.Option(30, min=1, help="Longest greedy answer for confidence (paper A: 30)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Score cache folder (default: user cache)."),
    engine: str = typer.Option("local", help="local, or ray (needs the tunewise[ray] extra)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (with --engine ray)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    reading: PoolReading = None,
) -> None:
    """Score a pool with the model: loss/ppl, IFD, confidence, length, CoT length, embeddings."""
    from tunewise.model import load_backend
    from tunewise.data.table import read_scores, write_scores
    from tunewise.indicators.score import score_pool, scores_provenance
    from tunewise.indicators.streaming import iter_pool_batches, score_pool_streaming, streamable
    from tunewise.io import remove_stale_temporaries

    check_output_path(output, {"the pool": pool})
    names = [i.name for i in resolve_indicators(parse_list(indicators))]
    if engine not in ("local", "ray"):
        raise TunewiseError(f"unknown engine '{engine}'", field="engine", fix="use --engine local or ray")
    started = time.perf_counter()
    remove_stale_temporaries(output)  # left by a killed run of this command
    if engine == "local" and streamable(names) and reading.split is None:
        # Model-free indicators: read, score and write in batches, so any pool size fits in memory.
        batches = iter_pool_batches(
            pool, task_field, skip_bad=skip_bad, limit=limit, on_skipped=report_skipped, columns=reading.columns,
            keep_duplicates=reading.keep_duplicates,
            on_duplicate=lambda line, kept: console.print(
                f"[yellow]note:[/] line {line} repeats line {kept} exactly and is merged into it", highlight=False))
        backend = load_backend(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                               max_batch_tokens=batch_tokens)
        with progress_bar("scoring") as update:
            provenance = scores_provenance(backend, names, str(pool)) | reading.provenance()
            score_pool_streaming(batches, backend, names, output, provenance,
                                 cache_dir=cache_dir, progress=update)
        scores, _ = read_scores(output)
    else:
        examples = reading.read(pool, task_field, skip_bad=skip_bad, limit=limit)
        print_pool_notes(examples)
        if engine == "ray":
            from tunewise.indicators.ray import score_pool_ray

            with progress_bar("scoring") as update:
                scores, provenance = score_pool_ray(examples, model, names, device=device, dtype=dtype,
                                                    cache_dir=cache_dir, address=address, progress=update,
                                                    max_new_tokens=max_new_tokens, max_batch_tokens=batch_tokens)
        else:
            backend = load_backend(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                                   max_batch_tokens=batch_tokens)
            with progress_bar("scoring") as update:
                scores = score_pool(examples, backend, names, cache_dir=cache_dir, progress=update,
                                    max_batch_tokens=batch_tokens)
            provenance = scores_provenance(backend, names, str(pool)) | reading.provenance()
        write_scores(scores, output, provenance)
    seconds = time.perf_counter() - started
    if as_json:
        print_json({"examples": len(scores), "seconds": round(seconds, 3), "output": str(output), "indicators": names, "means": summary_means(scores)})
        return
    stdout.print(summary_table(scores))
    stdout.print(f"{len(scores)} examples scored in {seconds:.1f} s → {output}", markup=False, highlight=False,
                 soft_wrap=True)


def summary_means(scores) -> dict[str, dict]:
    """Per task: the example count and the mean of every scalar indicator (None where undefined)."""
    from tunewise.indicators.registry import INDICATORS

    # The first column of each scalar indicator (loss, not its ppl; length, not prompt_length).
    columns = [i.columns[0] for i in INDICATORS.values() if not i.is_vector and i.columns[0] in scores.columns]
    means = {}
    for task, group in scores.groupby("task", sort=False):
        values = {column: group[column].mean() for column in columns}
        means[str(task)] = {"examples": len(group), **{c: None if v != v else float(v) for c, v in values.items()}}
    return means


def summary_table(scores) -> Table:
    """Per-task count and mean of every scalar indicator."""
    means = summary_means(scores)
    columns = [c for c in next(iter(means.values()), {}) if c != "examples"]
    table = Table(title="Scores per task")
    table.add_column("task")
    table.add_column("examples", justify="right")
    for column in columns:
        table.add_column(f"mean {column}", justify="right")
    for task, entry in means.items():
        cells = ["-" if entry[column] is None else f"{entry[column]:.3f}" for column in columns]
        table.add_row(escape(task), str(entry["examples"]), *cells)
    return table
