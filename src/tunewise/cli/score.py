"""``tunewise score``: indicator scores for every example of a pool."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import command, console, stdout
from tunewise.cli.progress import progress_bar
from tunewise.errors import TunewiseError
from tunewise.indicators.registry import DEFAULT_INDICATORS, resolve_indicators


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
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs and on CPUs with bf16 instructions, "
                                                        "else fp32), fp32, bf16."),
    batch_tokens: Optional[int] = typer.Option(None, min=64, help="Token budget per batch."),
    max_new_tokens: int = typer.Option(32, min=1, help="Longest greedy answer for confidence."),
    cache_dir: Optional[Path] = typer.Option(None, help="Score cache folder (default: user cache)."),
    engine: str = typer.Option("local", help="local, or ray (needs the tunewise[ray] extra)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (with --engine ray)."),
) -> None:
    """Score a pool with the model: loss/ppl, IFD, confidence, length, CoT length, embeddings."""
    from tunewise.model import load_backend
    from tunewise.data.pool import read_pool
    from tunewise.data.table import read_scores, write_scores
    from tunewise.indicators.score import score_pool, scores_provenance
    from tunewise.indicators.streaming import iter_pool_batches, score_pool_streaming, streamable

    check_output_path(output)
    names = [i.name for i in resolve_indicators(parse_list(indicators))]
    if engine not in ("local", "ray"):
        raise TunewiseError(f"unknown engine '{engine}'", field="engine", fix="use --engine local or ray")
    started = time.perf_counter()
    if engine == "local" and streamable(names):
        # Model-free indicators: read, score and write in batches, so any pool size fits in memory.
        batches = iter_pool_batches(pool, task_field, skip_bad=skip_bad, limit=limit, on_skipped=report_skipped)
        backend = load_backend(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                               max_batch_tokens=batch_tokens)
        with progress_bar("scoring") as update:
            score_pool_streaming(batches, backend, names, output, scores_provenance(backend, names, str(pool)),
                                 cache_dir=cache_dir, progress=update)
        scores, _ = read_scores(output)
    else:
        examples = read_pool(pool, task_field, skip_bad=skip_bad, limit=limit)
        for skipped in examples.skipped:
            report_skipped(skipped)
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
            provenance = scores_provenance(backend, names, str(pool))
        write_scores(scores, output, provenance)
    seconds = time.perf_counter() - started
    stdout.print(summary_table(scores))
    stdout.print(f"{len(scores)} examples scored in {seconds:.1f} s → {output}")


def report_skipped(skipped) -> None:
    """Print one skipped record. Its reason may quote the record: plain text, never Rich markup."""
    where = f"{skipped.file}:{skipped.line}: {skipped.reason}".encode("utf-8", "backslashreplace").decode()
    console.print("[yellow]skipped[/] " + escape(where), highlight=False, soft_wrap=True)


def check_output_path(output: Path) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if output.is_dir():
        raise TunewiseError("the output path is a folder", file=output, field="output",
                            fix="give a file name, e.g. -o scores.parquet")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TunewiseError("the output's folder is a file", file=parent, field="output",
                                    fix="choose an output path inside a folder")
            break


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
