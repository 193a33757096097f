"""Can the in-context proxy tell selections apart? Distinct selections, demonstrations and J over a search.

Study 3's reduced setting (DESIGN.md §4, BENCHMARKS.md study 3): a 100-example GSM8K pool scored with
SmolLM2, 16 anchors chosen among 200 other GSM8K train rows, ρ = 0.3 (30 examples), a 12-trial TPE
search with R = 1 draw of d = 4 demonstrations. Over the search it counts the distinct selections
S(w), the distinct demonstration draws the proxy showed, and the distinct J values; a selection
whose demonstrations equal another's gets the same J, so the search cannot tell them apart.

Beside the search it counts the same without running the proxy: for the 12 weight settings study 3's
search actually tried (``--study-trials``, its logged trials.jsonl), and for 500 seeded random weight
vectors, how many distinct S(w) and how many distinct demonstration draws at (R, d) = (1, 4) and
(3, 8). ``--trials 0`` skips the search.

The script runs on the code it is given (``PYTHONPATH``), so the same command measures a version
before and after a change to the proxy's draw:

    PYTHONPATH=src python bench/proxy_distinct.py --label after --out bench/out/proxy_distinct
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import gsm8k  # noqa: E402

from tunewise.data.table import embedding_matrix  # noqa: E402
from tunewise.indicators.registry import DEFAULT_INDICATORS  # noqa: E402
from tunewise.indicators.score import score_pool  # noqa: E402
from tunewise.model import load_backend  # noqa: E402
from tunewise.weights.proxy import InContextProxy, ProxyModel  # noqa: E402
from tunewise.weights.search import simplex_weights, tune_weights  # noqa: E402

try:  # after the merge of select/features.py into select/weighted.py
    from tunewise.select.weighted import FEATURES, indicator_features, selection_size
except ImportError:
    from tunewise.select.features import FEATURES, indicator_features, selection_size
try:  # after the anchors' rename to what they are
    from tunewise.weights.anchors import embedding_stratified_anchors as anchors_of
except ImportError:
    from tunewise.weights.anchors import choose_anchors as anchors_of


def distinct_counts(selections, proxy_settings, pool, anchor_examples, anchors, model) -> dict:
    """Distinct S(w) and distinct demonstration draws (per proxy setting) over ``selections``."""
    counts = {"selections": len({tuple(sorted(s.tolist())) for s in selections})}
    for repeats, demos in proxy_settings:
        proxy = InContextProxy(model, pool, anchor_examples, anchors, repeats=repeats, demos=demos, seed=0)
        draws = {tuple(tuple(draw) for draw in proxy.demonstrations(s)) for s in selections}
        counts[f"demonstrations_R{repeats}_d{demos}"] = len(draws)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="before / after: names the output file")
    parser.add_argument("--out", type=Path, default=Path("bench/out/proxy_distinct"))
    parser.add_argument("--pool-size", type=int, default=100)
    parser.add_argument("--dev-size", type=int, default=200)
    parser.add_argument("--anchors", type=int, default=16)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--demos", type=int, default=4)
    parser.add_argument("--random-weights", type=int, default=500)
    parser.add_argument("--study-trials", type=Path, default=Path("bench/out/study_weights/search/trials.jsonl"),
                        help="study 3's trial log: the weight settings its search tried")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.perf_counter()
    train = gsm8k("train", limit=args.pool_size + args.dev_size, seed=0)
    pool, dev = train[:args.pool_size], train[args.pool_size:]
    backend = load_backend(args.model)
    scores = score_pool(pool, backend, (*DEFAULT_INDICATORS, "embedding"))
    features = indicator_features(scores, FEATURES)
    anchors = anchors_of(embedding_matrix(score_pool(dev, backend, ["embedding"])), args.anchors, 0)
    anchor_examples = [dev[int(position)] for position in anchors.positions]
    model = ProxyModel(backend)
    size = selection_size(args.fraction, len(pool))

    search = None
    if args.trials:
        run_dir = args.out / f"search_{args.label}"
        tuned = tune_weights(features, pool, anchor_examples, anchors, model, run_dir, fraction=args.fraction,
                             trials=args.trials, repeats=args.repeats, demos=args.demos, seed=0,
                             progress=lambda done, total: print(f"trial {done}/{total}", flush=True))
        trials = tuned.search.trials
        search_selections = [tuned.selection(record.weights) for record in trials]
        search = distinct_counts(search_selections, [(args.repeats, args.demos)], pool, anchor_examples, anchors,
                                 model)
        search["J_values"] = len({round(record.value, 12) for record in trials})
        search["trials"] = len(trials)
        search["J"] = [record.value for record in trials]

    study_trials = None
    if args.study_trials.exists():
        logged = [json.loads(line) for line in args.study_trials.read_text().splitlines() if line.strip()]
        study_trials = distinct_counts([features.top(trial["weights"], size) for trial in logged], [(1, 4), (3, 8)],
                                       pool, anchor_examples, anchors, model)
        study_trials["trials"] = len(logged)
        study_trials["J_values_logged"] = len({round(trial["J"], 12) for trial in logged})

    rng = np.random.default_rng(0)
    random_selections = [
        features.top(simplex_weights(dict(zip(features.names, rng.uniform(1e-9, 1.0, len(features.names))))), size)
        for _ in range(args.random_weights)
    ]
    model_free = distinct_counts(random_selections, [(1, 4), (3, 8)], pool, anchor_examples, anchors, model)
    model_free["weights"] = args.random_weights

    result = {
        "label": args.label,
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)",
        "settings": {key: str(value) if isinstance(value, Path) else value
                     for key, value in vars(args).items() if key not in ("out", "label")},
        "selection_size": size,
        "search": search,
        "study3_trials": study_trials,
        "random_weights": model_free,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("search", "study3_trials", "random_weights", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
