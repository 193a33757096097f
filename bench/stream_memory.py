"""Peak memory of scoring a pool streamed (chunk by chunk) against in memory, at N and 4N examples.

Every indicator (the model's loss, IFD, confidence and embedding included) on the tiny random
model, with a fresh score cache per run, each run in its own process so that its peak RSS
(``ru_maxrss``) is its own. A generated pool of distinct labelled examples (about 700 characters of
prompt and 200 of answer each); the streamed runs go through :func:`tunewise.score_file` with
``--chunk`` examples per chunk, the in-memory ones through ``read_pool`` + ``score_pool`` +
``write_scores``. Writes ``bench/out/stream_memory.json``.

    python bench/stream_memory.py --n 2000 --chunk 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDICATORS = ["loss", "ifd", "confidence", "confidence_ppl", "length", "cot_length", "embedding"]


def write_pool(path: Path, count: int) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    with path.open("w") as handle:
        for i in range(count):
            prompt = f"Example {i}. " + " ".join(words[(i * 7 + k) % len(words)] for k in range(110))
            answer = "\n".join(f"Step {k}: {words[(i + k) % len(words)]} " * 4 for k in range(1 + i % 4))
            handle.write(json.dumps({"prompt": prompt, "response": answer, "task": f"task{i % 5}"}) + "\n")


def child(mode: str, pool: str, output: str, cache: str, chunk: int) -> None:
    from tunewise.model import load_backend

    backend = load_backend("tiny-random", dtype="fp32")
    started = time.perf_counter()
    if mode == "stream":
        from tunewise.indicators.streaming import score_file

        rows = score_file(pool, backend, output, INDICATORS, task_field="task", cache_dir=cache, chunk_size=chunk)
    else:
        from tunewise.data.pool import read_pool
        from tunewise.data.table import write_scores
        from tunewise.indicators.score import score_pool, scores_provenance

        examples = read_pool(pool, "task")
        scores = score_pool(examples, backend, INDICATORS, cache_dir=cache)
        write_scores(scores, output, scores_provenance(backend, INDICATORS, pool))
        rows = len(scores)
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, pool, output, cache, chunk = args.child
        child(mode, pool, output, cache, int(chunk))
        return
    results = []
    with tempfile.TemporaryDirectory() as work:
        for count in (args.n, 4 * args.n):
            pool = Path(work) / f"pool-{count}.jsonl"
            write_pool(pool, count)
            for mode in ("stream", "memory"):
                run = subprocess.run([sys.executable, __file__, "--child", mode, str(pool),
                                      str(Path(work) / f"{mode}-{count}.parquet"), str(Path(work) / f"cache-{mode}-{count}"),
                                      str(args.chunk)], capture_output=True, text=True, check=True)
                result = {"mode": mode, "examples": count, **json.loads(run.stdout.strip().splitlines()[-1])}
                print(json.dumps(result), flush=True)
                results.append(result)
    out = ROOT / "bench" / "out" / "stream_memory.json"
    out.write_text(json.dumps({"model": "tiny-random (fp32)", "indicators": INDICATORS, "chunk": args.chunk,
                               "threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.processor() or
                               platform.machine(), "date": time.strftime("%Y-%m-%d"), "runs": results},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
