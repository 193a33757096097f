"""``tunewise score``: indicator scores for every example of a pool."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tunewise.cli.app import command, console, stdout
from tunewise.cli.progress import progress_bar
from tunewise.indicators import DEFAULT_INDICATORS, resolve_indicators


def parse_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@command("score")
def score_command(
    pool: Path = typer.Argument(..., help="Pool file (JSONL, JSON, CSV, Parquet) or saved HF dataset folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Scores file to write (Parquet)."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled), tiny-random, or a model folder."),
    indicators: str = typer.Option(",".join(DEFAULT_INDICATORS), help="Comma-separated indicators."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    limit: Optional[int] = typer.Option(None, min=1, help="Score only the first N examples."),
    skip_bad: bool = typer.Option(False, help="Skip malformed records (each is listed) instead of stopping."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto (fp32 on CPU, bf16 on GPU), fp32, bf16."),
    batch_tokens: Optional[int] = typer.Option(None, min=64, help="Token budget per batch."),
    max_new_tokens: int = typer.Option(32, min=1, help="Longest greedy answer for confidence."),
    cache_dir: Optional[Path] = typer.Option(None, help="Score cache folder (default: user cache)."),
    engine: str = typer.Option("local", help="local, or ray (needs the tunewise[ray] extra)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (with --engine ray)."),
) -> None:
    """Score a pool with the model: loss/ppl, IFD, confidence, length, CoT length, embeddings."""
    from tunewise.pool import read_pool
    from tunewise.scores import write_scores
    from tunewise.scoring import score_pool, scores_provenance

    names = [i.name for i in resolve_indicators(parse_list(indicators))]
    examples = read_pool(pool, task_field, skip_bad=skip_bad, limit=limit)
    for skipped in examples.skipped:
        console.print(f"[yellow]skipped[/] {skipped.file}:{skipped.line}: {skipped.reason}", highlight=False)
    started = time.perf_counter()
    if engine == "ray":
        from tunewise.distributed import score_pool_ray

        with progress_bar("scoring") as update:
            scores, provenance = score_pool_ray(examples, model, names, device=device, dtype=dtype,
                                                cache_dir=cache_dir, address=address, progress=update,
                                                max_new_tokens=max_new_tokens, max_batch_tokens=batch_tokens)
    else:
        from tunewise.backends import load_backend
        from tunewise.errors import TunewiseError

        if engine != "local":
            raise TunewiseError(f"unknown engine '{engine}'", field="engine", fix="use --engine local or ray")
        backend = load_backend(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                               max_batch_tokens=batch_tokens)
        with progress_bar("scoring") as update:
            scores = score_pool(examples, backend, names, cache_dir=cache_dir, progress=update,
                                max_batch_tokens=batch_tokens)
        provenance = scores_provenance(backend, names, str(pool))
    write_scores(scores, output, provenance)
    seconds = time.perf_counter() - started
    stdout.print(summary_table(scores))
    stdout.print(f"{len(scores)} examples scored in {seconds:.1f} s → {output}")


def summary_table(scores) -> Table:
    """Per-task count and mean of every scalar indicator."""
    columns = [c for c in ("loss", "ifd", "confidence", "length", "cot_length") if c in scores.columns]
    table = Table(title="Scores per task")
    table.add_column("task")
    table.add_column("examples", justify="right")
    for column in columns:
        table.add_column(f"mean {column}", justify="right")
    for task, group in scores.groupby("task", sort=False):
        cells = []
        for column in columns:
            mean = group[column].mean()
            cells.append("-" if mean != mean else f"{mean:.3f}")
        table.add_row(str(task), str(len(group)), *cells)
    return table
