"""Scoring throughput of the Ray Data engine (local mode, CPU actors) against the local engine.

Both engines score the same GSM8K training examples with the default indicators (loss, IFD,
confidence with 32 new tokens, length, CoT length) at fp32 on the CPU, from an empty cache. Each
run is a fresh process, so the Ray run pays for starting Ray and loading the model in every
actor, as a user would. Reported per run:

- end to end: from examples in memory to the scores table (model loading included);
- steady rate: examples per second between the first and the last batch coming back;
- the largest difference of the Ray engine's scores from the local engine's.

The local engine also runs a second time with one torch thread (``local-1-thread``): each Ray
actor gets cores / actors threads, and on a machine shared with other jobs the thread count
alone changes the local engine's speed a great deal.

Prints a markdown table and writes bench/out/ray_vs_local.json.

    .venv/bin/python bench/ray_vs_local.py [--n 100] [--models tiny-random,smollm2] [--actors 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "out" / "ray_vs_local.json"
INDICATORS = ("loss", "ifd", "confidence", "length", "cot_length")
COMPARED = ("loss", "ifd", "confidence", "length", "prompt_length", "cot_length")


def run_engine(engine: str, model: str, n: int, actors: int, scores_path: Path) -> dict:
    """Score ``n`` GSM8K examples with one engine in this process; the scores go to ``scores_path``."""
    import realdata
    from tunewise.data.table import write_scores

    examples = realdata.gsm8k("train", limit=n, seed=0)
    returned: list[tuple[float, int]] = []

    def progress(done: int, total: int) -> None:
        returned.append((time.perf_counter(), done))

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tunewise-bench-cache-") as cache_dir:
        started = time.perf_counter()
        if engine == "ray":
            from tunewise.indicators.ray import score_pool_ray

            scores, _ = score_pool_ray(examples, model, INDICATORS, device="cpu", dtype="fp32", cache_dir=cache_dir,
                                       max_new_tokens=32, progress=progress, cpu_actors=actors)
        else:
            import torch

            from tunewise.model import load_backend
            from tunewise.indicators.score import score_pool

            if engine == "local-1-thread":
                torch.set_num_threads(1)
            backend = load_backend(model, device="cpu", dtype="fp32", max_new_tokens=32)
            scores = score_pool(examples, backend, INDICATORS, cache_dir=cache_dir, progress=progress)
        seconds = time.perf_counter() - started
    write_scores(scores, scores_path, {})
    (first_time, first_done), (last_time, last_done) = returned[0], returned[-1]
    steady = (last_done - first_done) / (last_time - first_time) if last_time > first_time else float("nan")
    return {"engine": engine, "model": model, "examples": len(examples), "seconds": seconds,
            "end_to_end_per_s": len(examples) / seconds, "steady_per_s": steady,
            "batches_returned": len(returned), "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0]}


def measure(engine: str, model: str, n: int, actors: int, scores_path: Path) -> dict:
    """Run one engine in a fresh process and return its figures."""
    command = [sys.executable, __file__, "--run", engine, "--models", model, "--n", str(n),
               "--actors", str(actors), "--scores", str(scores_path)]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def largest_difference(local: pd.DataFrame, distributed: pd.DataFrame) -> float:
    assert local["id"].tolist() == distributed["id"].tolist()
    differences = [np.nanmax(np.abs(local[c].to_numpy() - distributed[c].to_numpy())) for c in COMPARED]
    return float(max(differences))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--models", default="tiny-random,smollm2")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--run", choices=("local", "local-1-thread", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--scores", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_engine(args.run, args.models, args.n, args.actors, args.scores)))
        return

    from tunewise.data.table import read_scores

    results = []
    with tempfile.TemporaryDirectory(prefix="tunewise-bench-") as folder:
        for model in args.models.split(","):
            local = measure("local", model, args.n, args.actors, Path(folder) / f"{model}-local.parquet")
            one_thread = measure("local-1-thread", model, args.n, args.actors, Path(folder) / f"{model}-1.parquet")
            distributed = measure("ray", model, args.n, args.actors, Path(folder) / f"{model}-ray.parquet")
            distributed["max_abs_difference"] = largest_difference(
                read_scores(Path(folder) / f"{model}-local.parquet")[0],
                read_scores(Path(folder) / f"{model}-ray.parquet")[0],
            )
            results += [local, one_thread, distributed]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "actors": args.actors,
                               "indicators": INDICATORS, "runs": results}, indent=2))
    print("| model | engine | examples | end to end (s) | end to end (ex/s) | steady (ex/s) | max abs. diff. | load avg |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in results:
        engine = f"ray, {args.actors} CPU actors" if run["engine"] == "ray" else run["engine"]
        difference = f"{run['max_abs_difference']:.1e}" if "max_abs_difference" in run else "-"
        print(f"| {run['model']} | {engine} | {run['examples']} | {run['seconds']:.1f} | {run['end_to_end_per_s']:.2f} "
              f"| {run['steady_per_s']:.2f} | {difference} | {run['load_average_before']:.1f} |")


if __name__ == "__main__":
    main()
