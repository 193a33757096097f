"""One million rows: `tunewise score --indicators cot_length,length`, then `tunewise select --strategy
task_diversity`, on a generated 1,000,000-row pool, with the peak resident memory of each command
(goal, issue 8: under 2 GiB each).

The pool is generated in --workdir (default /tmp/tunewise-million, outside the repository):
GSM8K-shaped arithmetic word problems with 1 to 6 answer steps and a `#### n` line, over 20
tasks of uneven size, about 236 bytes a record. `length` is counted with the default model's
tokenizer (SmolLM2), so the score command loads that model. Each command runs from an empty
cache in a fresh process, under a small Python parent that reports the command's own peak RSS
(`getrusage(RUSAGE_CHILDREN)`).

For comparison, --in-memory-rows N also measures the path the score command took before it
streamed (read_pool, score_pool and write_scores with the whole pool in memory) on the first N
rows.

    .venv/bin/python bench/million_rows.py [--rows 1000000] [--budget 100000] [--in-memory-rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "million_rows.json"
TUNEWISE = str(Path(sys.executable).with_name("tunewise"))
GIB = 1024**3
TASKS = 20

# Runs one command as its only child and prints its wall time and peak RSS in bytes.
_MEASURE = """
import resource, subprocess, sys, time
started = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""

# The score command's path before streaming: the whole pool in memory, then one write.
_IN_MEMORY_SCORE = """
import sys
from tunewise.model import load_backend
from tunewise.data.pool import read_pool
from tunewise.data.table import write_scores
from tunewise.indicators.score import score_pool, scores_provenance
pool, output, cache = sys.argv[1:]
names = ["cot_length", "length"]
examples = read_pool(pool, "task")
backend = load_backend("smollm2")
write_scores(score_pool(examples, backend, names, cache_dir=cache), output, scores_provenance(backend, names, pool))
"""


def write_pool(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` distinct GSM8K-shaped records (the row number is in the question) over uneven tasks."""
    rng = random.Random(seed)
    task_weights = [rng.lognormvariate(0, 1) for _ in range(TASKS)]
    with path.open("w", encoding="utf-8") as handle:
        for row in range(rows):
            start, step = rng.randint(2, 999), rng.randint(2, 99)
            days = rng.randint(1, 6)
            steps = [f"Day {d}: {start + (d - 1) * step} + {step} = {start + d * step}." for d in range(1, days + 1)]
            record = {
                "question": f"Problem {row}: a crate holds {start} apples and {step} more arrive each day. "
                            f"How many are there after {days} days?",
                "answer": "\n".join(steps) + f"\n#### {start + days * step}",
                "task": f"task{rng.choices(range(TASKS), task_weights)[0]:02d}",
            }
            handle.write(json.dumps(record) + "\n")


def measure(command: list[str]) -> dict:
    """Wall time and peak RSS of ``command`` run in a fresh process."""
    finished = subprocess.run([sys.executable, "-c", _MEASURE, *command], check=True, capture_output=True, text=True)
    seconds, peak = finished.stdout.split()
    return {"seconds": float(seconds), "peak_rss_bytes": int(peak)}


def head(source: Path, target: Path, rows: int) -> None:
    with source.open(encoding="utf-8") as reading, target.open("w", encoding="utf-8") as writing:
        for _, line in zip(range(rows), reading):
            writing.write(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--in-memory-rows", type=int, default=100_000, help="0 to skip the comparison")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tunewise-million"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    pool = args.workdir / f"pool-{args.rows}.jsonl"
    if not pool.exists():
        write_pool(pool, args.rows)
    scores, selection = args.workdir / "scores.parquet", args.workdir / "selection.jsonl"
    cache = args.workdir / "cache"
    shutil.rmtree(cache, ignore_errors=True)

    runs = []
    score = measure([TUNEWISE, "score", str(pool), "-o", str(scores), "--indicators", "cot_length,length",
                     "--task-field", "task", "--cache-dir", str(cache)])
    runs.append({"command": "tunewise score --indicators cot_length,length", "rows": args.rows} | score)
    select = measure([TUNEWISE, "select", str(scores), "-o", str(selection), "--strategy", "task_diversity",
                      "--budget", str(args.budget)])
    runs.append({"command": f"tunewise select --strategy task_diversity --budget {args.budget}",
                 "rows": args.rows} | select)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(scores).metadata.num_rows == args.rows
    with selection.open(encoding="utf-8") as handle:
        assert sum(1 for _ in handle) == args.budget

    if args.in_memory_rows:
        smaller = args.workdir / f"pool-{args.in_memory_rows}.jsonl"
        head(pool, smaller, args.in_memory_rows)
        in_memory_cache = args.workdir / "cache-in-memory"
        shutil.rmtree(in_memory_cache, ignore_errors=True)
        in_memory = measure([sys.executable, "-c", _IN_MEMORY_SCORE, str(smaller),
                             str(args.workdir / "scores-in-memory.parquet"), str(in_memory_cache)])
        runs.append({"command": "in-memory score path (read_pool + score_pool + write_scores)",
                     "rows": args.in_memory_rows} | in_memory)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                               "pool_bytes": pool.stat().st_size, "runs": runs,
                               "load_average_after": os.getloadavg()}, indent=2))
    print(f"pool: {args.rows:,} rows, {pool.stat().st_size / 1e6:.0f} MB ({pool})")
    print("| command | rows | time (s) | peak RSS (GiB) |")
    print("|---|---:|---:|---:|")
    for run in runs:
        print(f"| {run['command']} | {run['rows']:,} | {run['seconds']:.0f} | {run['peak_rss_bytes'] / GIB:.2f} |")


if __name__ == "__main__":
    main()
