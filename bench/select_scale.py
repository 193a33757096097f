"""Selection at scale: budget allocation and task-diversity selection on a generated table of
1,000,000 rows over 100 tasks, and greedy k-center on 1,000,000 × 64 embeddings.

Goals (issue 3): allocation + task_diversity ≤ 2 s; k_center ≤ 60 s within 4 GiB peak memory.
Each measurement runs in a fresh process, so the peak resident memory it reports is its own
(generated table included). Prints a markdown table and writes bench/out/select_scale.json.

    .venv/bin/python bench/select_scale.py [--rows 1000000] [--tasks 100] [--dim 64] [--k 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "out" / "select_scale.json"
GIB = 1024**3


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generated_scores(rows: int, tasks: int, dim: int | None, seed: int = 0) -> pd.DataFrame:
    """Uneven task sizes (log-normal), random indicators, and optionally unit-length embeddings."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(sigma=1.0, size=tasks)
    task_of_row = rng.choice(tasks, size=rows, p=weights / weights.sum())
    frame = pd.DataFrame(
        {
            "id": [f"{i:016x}" for i in range(rows)],
            "task": [f"task{t:03d}" for t in task_of_row],
            "loss": rng.gamma(2.0, 1.0, rows),
            "confidence": rng.beta(2.0 + task_of_row % 5, 2.0, rows),
        }
    )
    if dim is not None:
        embeddings = rng.standard_normal((rows, dim), dtype=np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        frame["embedding"] = list(embeddings)  # one row view per example, as read_scores gives
    return frame


def measure_task_diversity(rows: int, tasks: int, budget: int, strategy: str) -> dict:
    from tunewise.select.allocation import allocate_budget
    from tunewise.select import get_strategy

    scores = generated_scores(rows, tasks, dim=None)
    pool_sizes = scores["task"].value_counts().sort_index().to_dict()
    started = time.perf_counter()
    allocate_budget(pool_sizes, None, budget, seed=0)
    allocation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    selection = get_strategy(strategy).select(scores, budget, seed=0)
    select_seconds = time.perf_counter() - started
    return {
        "measure": f"{strategy} (allocation + within-task order + round-robin)",
        "rows": rows,
        "tasks": tasks,
        "budget": budget,
        "selected": len(selection),
        "allocation_seconds": allocation_seconds,
        "seconds": select_seconds,
        "goal_seconds": 2.0,
        "peak_rss_gib": peak_rss_bytes() / GIB,
    }


def measure_k_center(rows: int, tasks: int, dim: int, k: int) -> dict:
    from tunewise.select import get_strategy

    scores = generated_scores(rows, tasks, dim=dim)
    before = peak_rss_bytes()
    started = time.perf_counter()
    selection = get_strategy("k_center").select(scores, k, seed=0)
    seconds = time.perf_counter() - started
    return {
        "measure": f"k_center on {rows:,} × {dim} embeddings",
        "rows": rows,
        "tasks": tasks,
        "budget": k,
        "selected": len(selection),
        "seconds": seconds,
        "goal_seconds": 60.0,
        "peak_rss_gib": peak_rss_bytes() / GIB,
        "peak_rss_before_select_gib": before / GIB,
        "goal_peak_rss_gib": 4.0,
    }


def in_fresh_process(function, *arguments) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=1000, help="k_center budget")
    args = parser.parse_args()

    results = [
        in_fresh_process(measure_task_diversity, args.rows, args.tasks, args.rows // 10, "task_diversity"),
        in_fresh_process(measure_task_diversity, args.rows, args.tasks, args.rows, "task_diversity"),
        in_fresh_process(measure_task_diversity, args.rows, args.tasks, args.rows // 10, "weighted_task_diversity"),
        in_fresh_process(measure_k_center, args.rows, args.tasks, args.dim, args.k),
    ]
    print("| measure | rows | budget | time (s) | goal (s) | peak RSS (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for result in results:
        print(
            f"| {result['measure']} | {result['rows']:,} | {result['budget']:,} | {result['seconds']:.2f} "
            f"| ≤ {result['goal_seconds']:.0f} | {result['peak_rss_gib']:.2f} |"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python bench/select_scale.py "
        + f"--rows {args.rows} --tasks {args.tasks} --dim {args.dim} --k {args.k}",
        "machine": {"platform": platform.platform(), "cpus": multiprocessing.cpu_count()},
        "results": results,
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {OUT}")


if __name__ == "__main__":
    main()
