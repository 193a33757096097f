"""``tunewise score``: indicator scores for every example of a pool."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.options import (POOL_HELP, check_output_path, parse_list, print_pool_notes, report_skipped,
                                  with_pool_options)
from tunewise.data.pool import PoolReading, SourcePath
from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.cli.progress import progress_bar
from tunewise.errors import TunewiseError
from tunewise.indicators.registry import DEFAULT_INDICATORS, resolve_indicators
from tunewise.indicators.score import SCORING_WINDOW


@command("score")
@with_pool_options()
def score_command(
    pool: Path = typer.Argument(..., parser=SourcePath, help=POOL_HELP),
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
    chunk_size: int = typer.Option(SCORING_WINDOW, min=1, help="Examples read, scored and written at a time (memory "
                                   "holds one chunk; a killed run resumes after the last finished one)."),
    max_new_tokens: int = typer.Option(30, min=1, help="Longest greedy answer for confidence (paper A: 30)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Score cache folder (default: user cache)."),
    engine: str = typer.Option("local", help="local, or ray (needs the tunewise[ray] extra)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (with --engine ray)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    reading: PoolReading = None,
) -> None:
    """Score a pool with the model: loss/ppl, IFD, confidence, length, CoT length, embeddings."""
    from tunewise.model import load_backend
    from tunewise.data.pool import Pool
    from tunewise.data.table import check_scores_path, write_scores
    from tunewise.indicators.score import scores_provenance
    from tunewise.indicators.streaming import iter_pool_batches, score_pool_streaming
    from tunewise.io import remove_stale_temporaries

    check_output_path(output, {"the pool": pool})
    check_scores_path(output)
    names = [i.name for i in resolve_indicators(parse_list(indicators))]
    if engine not in ("local", "ray"):
        raise TunewiseError(f"unknown engine '{engine}'", field="engine", fix="use --engine local or ray")
    started = time.perf_counter()
    remove_stale_temporaries(output)  # left by a killed run of this command
    if engine == "local":
        # Read, score and write chunk by chunk, so any pool size fits in memory; a killed run
        # resumes after its last finished chunk.
        unused: dict[str, int] = {}
        batches = iter_pool_batches(
            pool, task_field, chunk_size, skip_bad=skip_bad, limit=limit, on_skipped=report_skipped,
            columns=reading.columns, keep_duplicates=reading.keep_duplicates, unused=unused, split=reading.split,
            dataset_config=reading.dataset_config,
            on_duplicate=lambda line, kept: console.print(
                f"[yellow]note:[/] line {line} repeats line {kept} exactly and is merged into it", highlight=False))
        backend = load_backend(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                               max_batch_tokens=batch_tokens)
        with progress_bar("scoring") as update:
            provenance = scores_provenance(backend, names, str(pool)) | reading.provenance()
            count = score_pool_streaming(batches, backend, names, output, provenance, cache_dir=cache_dir,
                                         progress=update, max_batch_tokens=batch_tokens, window=chunk_size)
        # The reader's notes on fields it left unused, for the whole pool (repeats were noted as met).
        print_pool_notes(Pool(str(pool), [], unused_fields=unused))
        means = summary_means_of_file(output)
    else:
        from tunewise.indicators.ray import score_pool_ray

        examples = reading.read(pool, task_field, skip_bad=skip_bad, limit=limit)
        print_pool_notes(examples)
        with progress_bar("scoring") as update:
            scores, provenance = score_pool_ray(examples, model, names, device=device, dtype=dtype,
                                                cache_dir=cache_dir, address=address, progress=update,
                                                max_new_tokens=max_new_tokens, max_batch_tokens=batch_tokens)
        write_scores(scores, output, provenance)
        count, means = len(scores), summary_means([scores])
    seconds = time.perf_counter() - started
    if as_json:
        print_json({"examples": count, "seconds": round(seconds, 3), "output": str(output), "indicators": names,
                    "means": means})
        return
    stdout.print(summary_table(means))
    stdout.print(f"{count} examples scored in {seconds:.1f} s → {output}", markup=False, highlight=False,
                 soft_wrap=True)


def summary_means(chunks) -> dict[str, dict]:
    """Per task: the example count and the mean of every scalar indicator (None where undefined),
    over the scores tables in ``chunks`` taken together (a whole table, or a file's row groups):
    sums and counts are gathered chunk by chunk, so a file larger than memory is summarised too."""
    from tunewise.indicators.registry import INDICATORS

    totals: dict[str, dict] = {}
    columns = None
    for scores in chunks:
        if columns is None:
            # The first column of each scalar indicator (loss, not its ppl; length, not prompt_length).
            columns = [i.columns[0] for i in INDICATORS.values()
                       if not i.is_vector and i.columns[0] in scores.columns]
        for task, group in scores.groupby("task", sort=False):
            entry = totals.setdefault(str(task), {"examples": 0, **{c: [0.0, 0] for c in columns}})
            entry["examples"] += len(group)
            for column in columns:
                values = group[column].to_numpy(dtype=float)
                defined = values[~np.isnan(values)]
                entry[column][0] += float(defined.sum())
                entry[column][1] += len(defined)
    return {task: {"examples": entry["examples"],
                   **{c: entry[c][0] / entry[c][1] if entry[c][1] else None for c in columns or ()}}
            for task, entry in totals.items()}


def summary_means_of_file(path) -> dict[str, dict]:
    """:func:`summary_means` of a scores file, read one row group at a time without its vectors."""
    import pyarrow.parquet as pq

    from tunewise.indicators.registry import INDICATORS

    parquet = pq.ParquetFile(path)
    vectors = {c for i in INDICATORS.values() if i.is_vector for c in i.columns}
    wanted = [name for name in parquet.schema_arrow.names if name not in vectors]
    return summary_means(parquet.read_row_group(index, columns=wanted).to_pandas()
                         for index in range(parquet.num_row_groups))


def summary_table(means: dict[str, dict]) -> Table:
    """Per-task count and mean of every scalar indicator (:func:`summary_means`)."""
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
