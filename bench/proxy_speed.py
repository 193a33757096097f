"""In-context proxy speed: the shared-prefix KV cache against the naive proxy, same run, same values.

J(w) scores every anchor's gold answer after the same demonstrations (DESIGN.md §4 step 4). The
cached proxy runs the demonstrations once per repeat and shares their KV cache across the
anchors; the naive proxy runs every anchor's full conversation. Both project onto the vocabulary
only at the answer positions, so the measured gain is the prefix cache alone. Demonstrations are
GSM8K train items drawn from a selection, anchors are GSM8K test items (equal weights).

    python bench/proxy_speed.py --demos 8 --anchors 64 --threads 1 --out bench/out/proxy_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

import realdata
from tunewise.weights.anchors import Anchors
from tunewise.model import load_backend
from tunewise.model.packed import shared_prefix_length
from tunewise.weights.proxy import InContextProxy, ProxyModel


def timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--demos", type=int, default=8, help="d: demonstrations per repeat")
    parser.add_argument("--anchors", type=int, default=64, help="m: anchor items")
    parser.add_argument("--repeats", type=int, default=1, help="R: demonstration draws per J")
    parser.add_argument("--pool", type=int, default=200, help="GSM8K train items the selection is taken from")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating cached/naive timings (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pool = realdata.gsm8k("train", limit=args.pool, seed=args.seed)
    anchor_examples = realdata.gsm8k("test", limit=args.anchors, seed=args.seed)
    count = len(anchor_examples)
    anchors = Anchors(positions=np.arange(count), cluster_sizes=np.ones(count, dtype=np.int64))
    selection = np.arange(round(args.fraction * len(pool)))
    model = ProxyModel(load_backend(args.model, device="cpu", dtype="fp32"), args.batch_tokens)

    def proxy(naive: bool) -> InContextProxy:
        return InContextProxy(model, pool, anchor_examples, anchors, repeats=args.repeats, demos=args.demos,
                              seed=args.seed, naive=naive)

    draws = proxy(naive=False).demonstrations(selection)
    contexts = [model.context_ids([pool[p] for p in draw], [a.prompt for a in anchor_examples]) for draw in draws]
    answers = model.answer_ids([a.response for a in anchor_examples])
    prefix = [shared_prefix_length(c) for c in contexts]
    naive_tokens = sum(len(c) + len(a) for context in contexts for c, a in zip(context, answers))
    cached_tokens = sum(p + sum(len(c) - p + len(a) for c, a in zip(context, answers))
                        for p, context in zip(prefix, contexts))

    # Warm-up outside the timings: first-call allocations and lazy initialisation.
    model.answer_logliks([pool[0]], anchor_examples[:2])
    load_before = os.getloadavg()
    cached_times, naive_times = [], []
    # Alternating rounds, each on fresh proxies (they memoise), so that a change in the load of
    # a shared machine hits both sides alike.
    for _ in range(args.rounds):
        cached, naive = proxy(naive=False), proxy(naive=True)
        cached_value, seconds = timed(lambda: cached(selection))
        cached_times.append(seconds)
        naive_value, seconds = timed(lambda: naive(selection))
        naive_times.append(seconds)
    load_after = os.getloadavg()
    per_anchor_diff = max(float(np.max(np.abs(cached.anchor_scores(d) - naive.anchor_scores(d)))) for d in draws)
    cached_seconds, naive_seconds = float(np.median(cached_times)), float(np.median(naive_times))

    figures = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "model": model.fingerprint,
        "demos": args.demos,
        "anchors": len(anchor_examples),
        "repeats": args.repeats,
        "batch_tokens": model.max_batch_tokens,
        "shared_prefix_tokens": prefix,
        "tokens_run_naive": naive_tokens,
        "tokens_run_cached": cached_tokens,
        "rounds": args.rounds,
        "cached_seconds_per_round": [round(t, 2) for t in cached_times],
        "naive_seconds_per_round": [round(t, 2) for t in naive_times],
        "cached_seconds": round(cached_seconds, 2),
        "naive_seconds": round(naive_seconds, 2),
        "speedup": round(naive_seconds / cached_seconds, 2),
        "J_cached": cached_value,
        "J_naive": naive_value,
        "J_abs_diff": abs(cached_value - naive_value),
        "max_abs_diff_per_anchor": per_anchor_diff,
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
