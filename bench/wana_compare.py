"""Studies 5 and 6: tunewise's IFD scoring against the plain loop and against wana, and its FLOP/s
against a dense matmul, on one seeded GSM8K sample.

wana (PyPI) scores IFD with the same SmolLM2 GGUF file through llama.cpp. It lives in its own
virtual environment, created here on first use, so it never becomes a tunewise dependency:

    .venv/bin/python bench/wana_compare.py --n 500 --threads 1 --plain-n 100 --default-n 50

Every engine scores the pool in chunks and writes one file per finished chunk under ``--out-dir``;
re-running the same command skips finished chunks, so an interrupted study continues. Each chunk's
time covers scoring only (model loads are recorded apart), with an empty tunewise score cache. A
dense matmul at the same dtype and thread count is timed after every chunk, so the achieved FLOP/s
is set against the roof of the same minutes on a shared machine.

Engines: tunewise loss + IFD in fp32 and bf16 (padding-free pass, its padding share recorded per
chunk), the plain one-at-a-time loop in fp32 and bf16, wana, tunewise bf16 with every example
scored alone (``--alone-n``: batched against alone, the batch-composition check), and tunewise's
default indicator set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

import realdata
from score_throughput import FlopModel, fused_flops, plain_loop
from tunewise.model.hf import HFBackend
from tunewise.indicators.registry import DEFAULT_INDICATORS
from tunewise.model.load import load_model
from tunewise.indicators.score import score_pool

WANA_VERSION = "0.5.1"
IFD_INDICATORS = ("loss", "ifd")
# engine name → (dtype, indicators); "plain" and "wana" are the two baselines.
TUNEWISE_ENGINES = {
    "tunewise-ifd-fp32": ("fp32", IFD_INDICATORS),
    "tunewise-ifd-bf16": ("bf16", IFD_INDICATORS),
    "tunewise-default-fp32": ("fp32", DEFAULT_INDICATORS),
}
PLAIN_ENGINES = {"plain-ifd-fp32": "fp32", "plain-ifd-bf16": "bf16"}
# tunewise bf16 with every example scored alone: the batch-composition check.
ALONE_ENGINE = "tunewise-ifd-bf16-alone"
ENGINES = ("tunewise-ifd-fp32", "plain-ifd-fp32", "wana", "tunewise-ifd-bf16", "plain-ifd-bf16", ALONE_ENGINE,
           "tunewise-default-fp32")


def ifd_flops(encoded, flops: FlopModel) -> float:
    """Analytic FLOPs of tunewise's loss + IFD pass: prompt + response with the vocabulary head on
    response rows only, and the response alone after the start token (padding not counted)."""
    total = 0.0
    for e in encoded:
        p, r = e.prompt_length, e.response_length
        total += flops.forward(p + r, (p + r) / 2, r)
        total += flops.forward(r + 1, (r + 1) / 2, r)
    return total


def padding_tokens(backend, encoded, indicators, batch_tokens: int) -> tuple[int, int]:
    """(padded tokens, tokens run) of the loss + IFD sequences, as score_pool batches them and
    tunewise.model.packed pads them."""
    from tunewise.indicators.score import plan_scoring_batches, required_outputs
    from tunewise.model.packed import plan_padded_chunks

    outputs = required_outputs(indicators)
    padded = run = 0
    for batch in plan_scoring_batches(backend, encoded, outputs, batch_tokens):
        lengths = [n for i in batch for n in (encoded[i].prompt_length + encoded[i].response_length,
                                              encoded[i].response_length + 1)]
        for width, chunk in plan_padded_chunks(lengths, batch_tokens):
            run += width * len(chunk)
            padded += sum(width - lengths[j] for j in chunk)
    return padded, run


def full_logit_flops(prompt_lengths, response_lengths, flops: FlopModel) -> float:
    """Analytic FLOPs of the one-at-a-time IFD loop (plain loop, wana): prompt + response and the
    response alone, each with the vocabulary head on every position."""
    return sum(flops.forward(p + r, (p + r) / 2, p + r) + flops.forward(r + 1, (r + 1) / 2, r + 1)
               for p, r in zip(prompt_lengths, response_lengths))


class Timer:
    """Wall and CPU seconds of a block. On cores shared with other jobs the wall clock also counts
    the time this process waited for a core; its CPU time does not."""

    def __enter__(self) -> "Timer":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu


def matmul_roof(dtype, size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Dense matmul FLOP/s per wall and per CPU second: the practical roof at this thread count."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    with Timer() as timer:
        for _ in range(repeats):
            a @ b
    work = 2 * size**3 * repeats
    return {"wall": work / timer.seconds, "cpu": work / timer.cpu_seconds}


def write_atomically(path: Path, record: dict) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(record))
    partial.rename(path)


class Models:
    """SmolLM2 loaded once per dtype for the whole study, with the seconds each load took."""

    def __init__(self) -> None:
        self.loaded: dict[str, object] = {}
        self.load_seconds: dict[str, float] = {}

    def get(self, dtype: str):
        if dtype not in self.loaded:
            start = time.perf_counter()
            self.loaded[dtype] = load_model("smollm2", device="cpu", dtype=dtype)
            self.load_seconds[dtype] = time.perf_counter() - start
        return self.loaded[dtype]


def run_tunewise_chunk(engine: str, chunk, first: int, args, models: Models, target: Path) -> None:
    dtype, indicators = TUNEWISE_ENGINES["tunewise-ifd-bf16" if engine == ALONE_ENGINE else engine]
    loaded = models.get(dtype)
    flops = FlopModel(loaded.model)
    backend = HFBackend(loaded, max_new_tokens=args.max_new_tokens, max_batch_tokens=args.batch_tokens)
    cache_dir = Path(tempfile.mkdtemp(prefix="wana-compare-cache-"))
    try:
        with Timer() as timer:
            if engine == ALONE_ENGINE:
                scores = pd.concat([score_pool([e], backend, indicators, cache_dir=str(cache_dir)) for e in chunk])
            else:
                scores = score_pool(chunk, backend, indicators, cache_dir=str(cache_dir))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    encoded = backend.encode([e.prompt for e in chunk], [e.response for e in chunk])
    if "confidence" in indicators:
        # Generated lengths are not kept; every answer is counted at the cap (an upper bound).
        work = fused_flops(backend, chunk, [args.max_new_tokens] * len(chunk), flops)
    else:
        work = ifd_flops(encoded, flops)
    padded, run = padding_tokens(backend, encoded, indicators, args.batch_tokens)
    write_atomically(target, {
        "engine": engine, "dtype": dtype, "indicators": list(indicators), "threads": args.threads,
        "padded_tokens": padded, "run_tokens": run,
        "load_seconds": models.load_seconds[dtype], "first": first, "seconds": timer.seconds,
        "cpu_seconds": timer.cpu_seconds, "flops": work, "roof_flops_per_s": matmul_roof(loaded.dtype),
        "ids": scores["id"].tolist(), "loss": scores["loss"].tolist(), "ifd": scores["ifd"].tolist(),
        "prompt_tokens": [e.prompt_length for e in encoded],
        "response_tokens": [e.response_length for e in encoded],
    })
    print(f"{engine} chunk {first}: {len(chunk) / timer.seconds:.3f} examples/s", flush=True)


def run_plain_chunk(engine: str, chunk, first: int, args, models: Models, target: Path) -> None:
    dtype = PLAIN_ENGINES[engine]
    loaded = models.get(dtype)
    flops = FlopModel(loaded.model)
    with Timer() as timer:
        results, work = plain_loop(loaded, chunk, args.max_new_tokens, flops, with_confidence=False)
    write_atomically(target, {
        "engine": engine, "dtype": dtype, "indicators": list(IFD_INDICATORS),
        "threads": args.threads, "load_seconds": models.load_seconds[dtype], "first": first,
        "seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds, "flops": work,
        "roof_flops_per_s": matmul_roof(loaded.dtype),
        "ids": [e.id for e in chunk], "loss": results[:, 0].tolist(), "ifd": results[:, 1].tolist(),
    })
    print(f"{engine} chunk {first}: {len(chunk) / timer.seconds:.3f} examples/s", flush=True)


def wana_python(venv: Path) -> Path:
    """wana's interpreter, creating its virtual environment (outside tunewise's) when missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"wana=={WANA_VERSION}"], check=True)
    return python


def run_wana_chunk(examples, first: int, args, folder: Path) -> None:
    """wana scores its chunks in its own interpreter, up to and including the one at ``first``."""
    pool = folder / "pool.jsonl"
    if not pool.exists():
        lines = [json.dumps({"id": e.id, "messages": e.messages}) for e in examples]
        pool.write_text("\n".join(lines) + "\n")
    script = Path(__file__).with_name("wana_score.py")
    command = [str(wana_python(args.wana_venv)), str(script), str(pool), str(folder),
               "--threads", str(args.threads), "--chunk", str(args.chunk), "--limit", str(first + args.chunk)]
    subprocess.run(command, check=True)


def load_chunks(folder: Path) -> dict | None:
    files = sorted(folder.glob("chunk_*.json"))
    if not files:
        return None
    chunks = [json.loads(f.read_text()) for f in files]
    merged = {key: [x for c in chunks for x in c[key]] for key in ("ids", "loss", "ifd")}
    for key in ("prompt_tokens", "response_tokens", "loss_unconditional"):
        if key in chunks[0]:
            merged[key] = [x for c in chunks for x in c[key]]
    merged.update(load_seconds=chunks[0]["load_seconds"], threads=chunks[0]["threads"],
                  chunks={c["first"]: c for c in chunks})
    for key in ("wana_version", "llama_cpp_python_version", "model", "model_sha256", "dtype"):
        if key in chunks[0]:
            merged[key] = chunks[0][key]
    return merged


def rank_agreement(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def total(chunks, key: str) -> float:
    return sum(c[key] for c in chunks)


def speed_ratio(ours, theirs, clock: str) -> float:
    """Examples per second of ``ours`` over those of ``theirs`` (a subset engine's chunk is shorter)."""
    rate = lambda chunks: sum(len(c["ids"]) for c in chunks) / total(chunks, clock)  # noqa: E731
    return rate(ours) / rate(theirs)


def summarise(results: dict, flops: FlopModel) -> dict:
    rows = {}
    for engine, r in results.items():
        chunks = list(r["chunks"].values())
        if engine == "wana":
            for c in chunks:
                c["flops"] = full_logit_flops(c["prompt_tokens"], c["response_tokens"], flops)
        n, seconds, cpu_seconds = len(r["ids"]), total(chunks, "seconds"), total(chunks, "cpu_seconds")
        row = {"examples": n, "chunks": sorted(r["chunks"]), "threads": r["threads"],
               **({"padding_share": total(chunks, "padded_tokens") / total(chunks, "run_tokens")}
                  if "run_tokens" in chunks[0] else {}),
               "load_seconds": r["load_seconds"], "seconds": seconds, "cpu_seconds": cpu_seconds,
               "examples_per_s": n / seconds, "examples_per_cpu_s": n / cpu_seconds,
               "flops_per_s": total(chunks, "flops") / seconds,
               "flops_per_cpu_s": total(chunks, "flops") / cpu_seconds}
        if "roof_flops_per_s" in chunks[0]:
            # The roof is timed after every chunk; its mean stands for the minutes of the run.
            for clock, suffix in (("wall", "s"), ("cpu", "cpu_s")):
                roofs = [c["roof_flops_per_s"][clock] for c in chunks]
                row[f"roof_flops_per_{suffix}"] = float(np.mean(roofs))
                row[f"roof_range_per_{suffix}"] = [min(roofs), max(roofs)]
                row[f"share_of_roof_per_{suffix}"] = row[f"flops_per_{suffix}"] / float(np.mean(roofs))
        for key in ("wana_version", "llama_cpp_python_version", "model", "model_sha256", "dtype"):
            if key in r:
                row[key] = r[key]
        rows[engine] = row
    if "wana" in results:
        # The goal is stated against wana: each engine's speed over the chunks both finished.
        wana = results["wana"]["chunks"]
        for engine, r in results.items():
            shared = sorted(set(r["chunks"]) & set(wana))
            ours, theirs = [r["chunks"][f] for f in shared], [wana[f] for f in shared]
            rows[engine]["speed_over_wana"] = speed_ratio(ours, theirs, "seconds")
            rows[engine]["cpu_speed_over_wana"] = speed_ratio(ours, theirs, "cpu_seconds")
    comparison: dict[str, object] = {}
    # bf16 pairs: tunewise against the plain loop at the same dtype, and batched against alone.
    for ours, theirs in (("tunewise-ifd-bf16", "plain-ifd-bf16"), ("tunewise-ifd-bf16", ALONE_ENGINE)):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            shared = sorted(set(a["chunks"]) & set(b["chunks"]))
            where = {i: k for k, i in enumerate(a["ids"])}
            at = [(where[i], k) for k, i in enumerate(b["ids"]) if i in where]
            entry = {"examples": len(at),
                     "speed_ratio": speed_ratio([a["chunks"][f] for f in shared], [b["chunks"][f] for f in shared], "seconds"),
                     "cpu_speed_ratio": speed_ratio([a["chunks"][f] for f in shared], [b["chunks"][f] for f in shared],
                                                    "cpu_seconds")}
            for key in ("loss", "ifd"):
                mine, other = np.array(a[key])[[x for x, _ in at]], np.array(b[key])[[y for _, y in at]]
                entry[f"max_abs_diff_{key}"] = float(np.max(np.abs(mine - other)))
                entry[f"spearman_{key}"] = rank_agreement(mine, other)
            comparison[f"{ours} vs {theirs}"] = entry
    reference = results.get("tunewise-ifd-fp32")
    if reference is None:
        return {"rows": rows, "comparison": comparison}
    position = {example_id: i for i, example_id in enumerate(reference["ids"])}
    loss = np.array(reference["loss"])
    ifd = np.array(reference["ifd"])
    # tunewise's IFD is a ratio of perplexities, exp(loss - loss_alone); wana's is the ratio of the
    # mean NLLs, loss / loss_alone. Both are recovered from tunewise's two losses.
    loss_alone = loss - np.log(ifd)
    for engine, r in results.items():
        if engine == "tunewise-ifd-fp32":
            continue
        # Speed ratios over the chunks both engines finished: the same examples, the same minutes.
        shared = sorted(set(r["chunks"]) & set(reference["chunks"]))
        ours = [reference["chunks"][f] for f in shared]
        theirs = [r["chunks"][f] for f in shared]
        kept = {i for c in theirs for i in c["ids"]}
        pairs = [(position[i], k) for k, i in enumerate(r["ids"]) if i in position and i in kept]
        at, own = [a for a, _ in pairs], [b for _, b in pairs]
        other_ifd, other_loss = np.array(r["ifd"])[own], np.array(r["loss"])[own]
        entry = {"examples": len(at),
                 "tunewise_fp32_speed_ratio": speed_ratio(ours, theirs, "seconds"),
                 "tunewise_fp32_cpu_speed_ratio": speed_ratio(ours, theirs, "cpu_seconds"),
                 "spearman_loss": rank_agreement(loss[at], other_loss),
                 "max_abs_diff_loss": float(np.max(np.abs(loss[at] - other_loss)))}
        if engine == "wana":
            other_alone = np.array(r["loss_unconditional"])[own]
            entry.update(
                spearman_ifd_each_own_definition=rank_agreement(ifd[at], other_ifd),
                spearman_ifd_nll_ratio=rank_agreement(loss[at] / loss_alone[at], other_ifd),
                spearman_ifd_ppl_ratio=rank_agreement(ifd[at], np.exp(other_loss - other_alone)),
                spearman_loss_alone=rank_agreement(loss_alone[at], other_alone),
                max_abs_diff_loss_alone=float(np.max(np.abs(loss_alone[at] - other_alone))),
                same_prompt_tokens=reference_tokens(reference, at, "prompt_tokens")
                == [r["prompt_tokens"][k] for k in own],
                same_response_tokens=reference_tokens(reference, at, "response_tokens")
                == [r["response_tokens"][k] for k in own],
            )
        else:
            entry.update(spearman_ifd=rank_agreement(ifd[at], other_ifd),
                         max_abs_diff_ifd=float(np.max(np.abs(ifd[at] - other_ifd))))
        comparison[engine] = entry
    return {"rows": rows, "comparison": comparison}


def reference_tokens(reference: dict, at: list[int], key: str) -> list[int]:
    return [reference[key][i] for i in at]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="GSM8K train examples (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain-n", type=int, default=100, help="the plain loop's share of the sample")
    parser.add_argument("--default-n", type=int, default=50, help="the default indicator set's share")
    parser.add_argument("--alone-n", type=int, default=50, help="examples tunewise bf16 also scores one at a time")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--wana-venv", type=Path, default=Path("bench/out/wana-venv"))
    parser.add_argument("--out-dir", type=Path, default=Path("bench/out/wana_compare"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TUNEWISE_THREADS"] = str(args.threads)
    # The plain loop and the default set run on the head of the sample: a seeded subset itself.
    examples = realdata.gsm8k("train", limit=args.n, seed=args.seed)
    sizes = {"plain-ifd-fp32": args.plain_n, "plain-ifd-bf16": args.plain_n, "tunewise-default-fp32": args.default_n,
             ALONE_ENGINE: args.alone_n}
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    # Rounds: every engine scores chunk k before any scores chunk k + 1, so all engines see the
    # same stretch of machine load, and a run cut short leaves every engine equally far.
    models = Models()
    for first in range(0, args.n, args.chunk):
        for engine in engines:
            subset = examples[: sizes.get(engine, args.n)]
            folder = args.out_dir / engine
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"chunk_{first:05d}.json"
            if first >= len(subset) or target.exists():
                continue
            chunk = subset[first:first + args.chunk]
            if engine == "wana":
                run_wana_chunk(subset, first, args, folder)
            elif engine in PLAIN_ENGINES:
                run_plain_chunk(engine, chunk, first, args, models, target)
            else:
                run_tunewise_chunk(engine, chunk, first, args, models, target)

    results = {e: r for e in ENGINES if (r := load_chunks(args.out_dir / e)) is not None}
    flops = FlopModel(models.get("fp32").model)
    summary = {"n": args.n, "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "load_average": os.getloadavg(), **summarise(results, flops)}
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
