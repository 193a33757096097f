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

``--what sweep`` measures the sweep engines instead (issue 15: one run on all threads, or several
single-thread runs?): the same 12-run sweep (random and task_diversity × budgets 4, 8, 16 × seeds
0, 1 on the demo's built-in pool, one epoch each, exact match on 20 held-out examples) is run by
``tunewise sweep`` in a fresh process per variant, from an empty folder:

- ``local``: the local engine, one run after another on torch's default threads (all cores);
- ``ray``: ``--engine ray --workers W``, W runs at a time on cores / W threads each;
- ``local-1-thread`` (optional): the local engine on one thread, the thread count of a Ray worker
  on 2 cores, to tell the engine apart from the thread count.

Reported per variant: wall clock of the whole command (Ray's start and the model loads in its
workers included), its ratio to ``local``, the load average before and after, and whether every
record equals the local engine's (timings left out) with the largest score difference.
Writes bench/out/ray_vs_local_sweep.json.

    .venv/bin/python bench/ray_vs_local.py --what sweep [--models smollm2] [--workers 2] [--repeats 1]
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


SWEEP_OUT = OUT.with_name("ray_vs_local_sweep.json")
SWEEP_GRID = ["--budgets", "4,8,16", "--strategies", "random,task_diversity", "--seeds", "0,1"]
SWEEP_FINETUNE = ["--epochs", "1", "--batch-size", "4", "--gradient-accumulation-steps", "1", "--learning-rate", "1e-3",
                  "--warmup-ratio", "0", "--metric", "exact_match", "--max-new-tokens", "8"]
CLI = "import sys; from tunewise.cli import main; sys.argv[0] = 'tunewise'; sys.exit(main())"


def sweep_variant(variant: str, model: str, workers: int, pool: Path, test: Path, folder: Path) -> dict:
    """Run the 12-run sweep with one engine in a fresh ``tunewise sweep`` process; its wall clock."""
    environment = {key: value for key, value in os.environ.items() if key != "TUNEWISE_THREADS"}
    threads = ["--threads", "1"] if variant == "local-1-thread" else []
    engine = ["--engine", "ray", "--workers", str(workers)] if variant == "ray" else ["--engine", "local"]
    command = [sys.executable, "-c", CLI, *threads, "--quiet", "sweep", str(pool), "--test", str(test),
               "-o", str(folder), "--task-field", "task", "--model", model, *SWEEP_GRID, *SWEEP_FINETUNE, *engine]
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return {"variant": variant, "model": model, "workers": workers if variant == "ray" else 1, "seconds": seconds,
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def without_timings(value):
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items()
                if "seconds" not in key and "per_second" not in key}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def compare_records(local: Path, other: Path) -> dict:
    """How the runs of ``other`` differ from ``local``'s: identical records, selections, largest score gap."""
    names = sorted(path.name for path in (local / "runs").glob("*.json"))
    assert names == sorted(path.name for path in (other / "runs").glob("*.json")), "different run files"
    identical = same_selection = 0
    largest = 0.0
    for name in names:
        a, b = (json.loads((folder / "runs" / name).read_text()) for folder in (local, other))
        identical += without_timings(a) == without_timings(b)
        same_selection += a.get("selected_ids") == b.get("selected_ids")
        largest = max(largest, abs(a["score"] - b["score"]))
    return {"runs": len(names), "identical_records": identical, "same_selections": same_selection,
            "max_abs_score_difference": largest}


def sweep_main(args) -> None:
    from tunewise.data.demo import demo_records
    from tunewise.io import encode_jsonl

    variants = args.variants.split(",")
    # ABBA… over repeats, so that a load drifting during the run favours no variant.
    order = [v for r in range(args.repeats) for v in (variants if r % 2 == 0 else variants[::-1])]
    results = []
    with tempfile.TemporaryDirectory(prefix="tunewise-bench-sweep-") as temporary:
        folder = Path(temporary)
        pool_records, test_records = demo_records(pool_per_task=16, test_per_task=4, seed=0)
        (folder / "pool.jsonl").write_bytes(encode_jsonl(pool_records))
        (folder / "test.jsonl").write_bytes(encode_jsonl(test_records))
        for model in args.models.split(","):
            for index, variant in enumerate(order):
                run_dir = folder / f"{model}-{variant}-{index}"
                result = sweep_variant(variant, model, args.workers, folder / "pool.jsonl", folder / "test.jsonl",
                                       run_dir)
                result["run_dir"] = run_dir
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "run_dir"}), flush=True)
            model_results = [r for r in results if r["model"] == model]
            reference = next(r["run_dir"] for r in model_results if r["variant"] == "local")
            local_mean = np.mean([r["seconds"] for r in model_results if r["variant"] == "local"])
            for result in model_results:
                result.update(compare_records(reference, result["run_dir"]))
                result["ratio_to_local"] = result["seconds"] / local_mean
        for result in results:
            del result["run_dir"]
    SWEEP_OUT.parent.mkdir(parents=True, exist_ok=True)
    SWEEP_OUT.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "grid": SWEEP_GRID,
                                     "finetune": SWEEP_FINETUNE, "runs": results}, indent=2))
    print("| model | variant | wall clock (s) | × local | records equal to local's | same selections "
          "| max abs. score diff. | load avg before → after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        variant = f"ray, {r['workers']} CPU workers" if r["variant"] == "ray" else r["variant"]
        print(f"| {r['model']} | {variant} | {r['seconds']:.1f} | {r['ratio_to_local']:.2f} "
              f"| {r['identical_records']}/{r['runs']} | {r['same_selections']}/{r['runs']} "
              f"| {r['max_abs_score_difference']:.3f} | {r['load_average_before'][0]:.1f} → "
              f"{r['load_average_after'][0]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", choices=("scoring", "sweep"), default="scoring")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--models", default=None, help="scoring: tiny-random,smollm2; sweep: smollm2")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="sweep: Ray workers")
    parser.add_argument("--variants", default="local,ray", help="sweep: local, ray, local-1-thread")
    parser.add_argument("--repeats", type=int, default=1, help="sweep: passes over the variants (ABBA order)")
    parser.add_argument("--run", choices=("local", "local-1-thread", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--scores", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what == "sweep":
        args.models = args.models or "smollm2"
        sweep_main(args)
        return
    args.models = args.models or "tiny-random,smollm2"
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
