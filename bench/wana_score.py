"""Score a JSONL pool with wana's IFD scorer, resumably, one timed chunk file per slice of the pool.

Runs inside wana's own virtual environment (wana is not a tunewise dependency), so it imports
nothing from tunewise; ``bench/wana_compare.py`` creates that environment and calls this file:

    bench/out/wana-venv/bin/python bench/wana_score.py POOL.jsonl OUT_DIR --threads 1

wana is called the way its Python API composes it (``iter_scored`` with an ``IFDScorer`` over the
bundled llama.cpp model), except that the thread count is passed in: its CLI fixes llama.cpp at
4 threads, which oversubscribes a 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

from wana import iter_scored
from wana.adapters.io.jsonl import JsonlReader
from wana.adapters.logprob.bundled import BundledLogProbProvider
from wana.adapters.scoring.ifd import IFDScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="score only the pool's first LIMIT examples")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    provider = BundledLogProbProvider(threads=args.threads)
    load_seconds = time.perf_counter() - start
    scorer = IFDScorer(provider)
    examples = list(JsonlReader().read(str(args.pool)))[: args.limit]
    for first in range(0, len(examples), args.chunk):
        target = args.out_dir / f"chunk_{first:05d}.json"
        if target.exists():
            continue
        chunk = examples[first:first + args.chunk]
        start, cpu_start = time.perf_counter(), time.process_time()
        scored = list(iter_scored(chunk, scorers=(scorer,)))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        record = {
            "engine": "wana",
            "wana_version": importlib.metadata.version("wana"),
            "llama_cpp_python_version": importlib.metadata.version("llama-cpp-python"),
            "model": provider.model_name,
            "model_sha256": provider.revision,
            "threads": args.threads,
            "load_seconds": load_seconds,
            "first": first,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "ids": [row.example.metadata.get("id", row.example.id) for row in scored],
            "ifd": [row.value("ifd") for row in scored],
            "loss": [row.value("conditional_nll") for row in scored],
            "loss_unconditional": [row.value("unconditional_nll") for row in scored],
            "prompt_tokens": [len(_prompt_tokens(provider, row.example)) for row in scored],
            "response_tokens": [len(_response_tokens(provider, row.example)) for row in scored],
        }
        partial = target.with_suffix(".part")
        partial.write_text(json.dumps(record))
        partial.rename(target)
        print(f"wana chunk {first}: {len(chunk) / seconds:.3f} examples/s", flush=True)


def _prompt_tokens(provider, example) -> list[int]:
    prompt = provider.template.render(
        messages=[{"role": m.role.value, "content": m.content} for m in example.messages[:-1]],
        add_generation_prompt=True,
    )
    return provider.model.tokenize(prompt.encode(), add_bos=False, special=True)


def _response_tokens(provider, example) -> list[int]:
    return provider.model.tokenize(example.messages[-1].content.encode(), add_bos=False, special=False)


if __name__ == "__main__":
    main()
