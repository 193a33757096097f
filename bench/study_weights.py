"""Study 3, reduced for CPU: do learned indicator weights pick a better 30 % of GSM8K than random?

The recipe of DESIGN.md §4 on a seeded GSM8K sample:

1. score the pool with SmolLM2 (every indicator ``tune-weights`` weighs);
2. choose m anchors of a dev set (GSM8K train rows outside the pool) by k-means on embeddings;
3. search the weights with Optuna, each trial's J the in-context proxy on the anchors;
4. fine-tune (LoRA) on three arms, each over several seeds: the tuned weights' top 30 %, a seeded
   random 30 %, and the whole pool; evaluate each on held-out GSM8K test questions;
5. check the proxy: fine-tune on the selections of K trials spread over J and correlate J with the
   test score (Spearman, Kendall).

SmolLM2-135M answers almost no GSM8K question right at these budgets, so the test score is the
mean log-likelihood per gold-solution token (``evaluate --metric log_likelihood``, higher is
better). The tuned selection is the same for every seed; the seed drives the random draw and the
fine-tune. Every finished fine-tune is a file under ``OUT/runs`` and the search is the resumable
``tune-weights`` study under ``OUT/search``, so a rerun of the same command resumes.

    .venv/bin/python bench/study_weights.py --out bench/out/study_weights
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import gsm8k  # noqa: E402

from tunewise.weights.anchors import embedding_stratified_anchors  # noqa: E402
from tunewise.model import load_backend  # noqa: E402
from tunewise.io import write_json  # noqa: E402
from tunewise.training.evaluate import LOG_LIKELIHOOD, evaluate  # noqa: E402
from tunewise.select.weighted import FEATURES, indicator_features  # noqa: E402
from tunewise.indicators.registry import DEFAULT_INDICATORS  # noqa: E402
from tunewise.training.finetune import FinetuneConfig, finetune  # noqa: E402
from tunewise.weights.proxy import ProxyModel  # noqa: E402
from tunewise.data.table import embedding_matrix  # noqa: E402
from tunewise.indicators.score import score_pool  # noqa: E402
from tunewise.training.sweep import paired_gain  # noqa: E402
from tunewise.weights.search import rank_correlation, spread_trials, tune_weights  # noqa: E402

TUNED, RANDOM, ALL = "tuned", "random", "all"
ARMS = (TUNED, RANDOM, ALL)


def study_data(pool_size: int, dev_size: int, test_size: int, seed: int):
    """(pool, dev, test): disjoint GSM8K train rows for the pool and the dev set, test rows apart."""
    train = gsm8k("train", limit=pool_size + dev_size, seed=seed)
    return train[:pool_size], train[pool_size:], gsm8k("test", limit=test_size, seed=seed)


def fine_tune_run(path: Path, loaded, selected, test, seed: int, extra: dict) -> dict:
    """Fine-tune on ``selected``, score ``test``, write the run to ``path``; a finished run is read back."""
    if path.exists():
        return json.loads(path.read_text())
    with finetune(loaded, selected, FinetuneConfig(seed=seed)) as adapted:
        results = evaluate(adapted.model, loaded.tokenizer, test, metric=LOG_LIKELIHOOD)
    (entry,) = results["results"].values()
    record = {**extra, "seed": seed, "examples": len(selected), "score": results["average"],
              "stderr": entry[f"{LOG_LIKELIHOOD}_stderr"], "n_test": entry["n"],
              "selected_ids": [example.id for example in selected],
              "finetune_seconds": round(adapted.log.seconds, 1), "final_loss": adapted.log.final_loss}
    write_json(path, record)
    return record


def summarise(out: Path, arms: dict, zero_shot: float, proxy_points: list[dict], tuned_document: dict) -> dict:
    per_seed = {arm: {record["seed"]: record["score"] for record in records} for arm, records in arms.items()}
    summary = {
        "metric": LOG_LIKELIHOOD,
        "zero_shot": zero_shot,
        "arms": {arm: {"mean": sum(scores.values()) / len(scores), "per_seed": scores,
                       "examples": arms[arm][0]["examples"]} for arm, scores in per_seed.items() if scores},
        "gains": {
            f"{left} - {right}": paired_gain(per_seed[left], per_seed[right])
            for left, right in ((TUNED, RANDOM), (ALL, RANDOM), (TUNED, ALL))
            if per_seed.get(left) and per_seed.get(right)
        },
        "weights": tuned_document,
        "proxy_check": {**rank_correlation([p["J"] for p in proxy_points], [p["score"] for p in proxy_points]),
                        "fine_tunes": proxy_points},
    }
    write_json(out / "study_weights.json", summary)
    return summary


def markdown(summary: dict) -> str:
    lines = ["| arm | examples | mean test log-likelihood per token | per seed |", "|---|---:|---:|---|",
             f"| zero-shot | 0 | {summary['zero_shot']:.4f} | — |"]
    for arm, entry in summary["arms"].items():
        per_seed = " / ".join(f"{value:.4f}" for value in entry["per_seed"].values())
        lines.append(f"| {arm} | {entry['examples']} | {entry['mean']:.4f} | {per_seed} |")
    lines += ["", "| difference | mean | 95 % CI | seeds |", "|---|---:|---:|---:|"]
    for name, gain in summary["gains"].items():
        interval = "—" if gain["ci_low"] is None else f"[{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]"
        lines.append(f"| {name} | {gain['mean']:+.4f} | {interval} | {gain['n_seeds']} |")
    weights = ", ".join(f"{name} {value:.2f}" for name, value in
                        sorted(summary["weights"]["weights"].items(), key=lambda item: -item[1]))
    lines += ["", f"Learned weights (best J {summary['weights']['J']:.4f} of {summary['weights']['trials']} "
                  f"trials): {weights}.", "",
              "| trial | J | test log-likelihood after fine-tuning |", "|---:|---:|---:|"]
    for point in summary["proxy_check"]["fine_tunes"]:
        lines.append(f"| {point['trial']} | {point['J']:.4f} | {point['score']:.4f} |")
    lines += ["", f"Proxy check: {summary['proxy_check']['verdict']}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_weights"))
    parser.add_argument("--pool-size", type=int, default=100)
    parser.add_argument("--dev-size", type=int, default=200, help="GSM8K train rows the anchors are chosen from")
    parser.add_argument("--test-size", type=int, default=40)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--anchors", type=int, default=16)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--demos", type=int, default=4)
    parser.add_argument("--proxy-checks", type=int, default=5, help="K trials spread over J to fine-tune on")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    pool, dev, test = study_data(args.pool_size, args.dev_size, args.test_size, args.split_seed)
    runs = args.out / "runs"
    print(f"GSM8K: pool {len(pool)}, dev {len(dev)}, test {len(test)}", flush=True)

    backend = load_backend(args.model)
    scores = score_pool(pool, backend, (*DEFAULT_INDICATORS, "embedding"),
                        progress=lambda done, total: print(f"scoring the pool {done}/{total}", flush=True))
    features = indicator_features(scores, FEATURES)
    dev_scores = score_pool(dev, backend, ["embedding"])
    anchors = embedding_stratified_anchors(embedding_matrix(dev_scores), args.anchors, args.split_seed)
    anchor_examples = [dev[int(position)] for position in anchors.positions]
    tuned = tune_weights(features, pool, anchor_examples, anchors, ProxyModel(backend), args.out / "search",
                         fraction=args.fraction, trials=args.trials, repeats=args.repeats, demos=args.demos,
                         seed=args.split_seed,
                         progress=lambda done, total: print(f"weight search: trial {done}/{total}", flush=True))
    best = tuned.best
    print(f"best J {best.value:.4f}: {best.weights}", flush=True)

    loaded = backend.loaded
    zero_shot_path = runs / "zero_shot.json"
    if not zero_shot_path.exists():
        write_json(zero_shot_path, {"score": evaluate(loaded, None, test, metric=LOG_LIKELIHOOD)["average"]})
    zero_shot = json.loads(zero_shot_path.read_text())["score"]

    size = tuned.selection_size
    tuned_selection = [pool[int(position)] for position in tuned.selection(best.weights)]
    arms: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        selections = {TUNED: tuned_selection, RANDOM: random.Random(f"{seed}:random").sample(pool, size), ALL: pool}
        for arm in ARMS:
            print(f"seed {seed}: fine-tuning on {arm} ({len(selections[arm])} examples)", flush=True)
            arms[arm].append(fine_tune_run(runs / f"{arm}__s{seed}.json", loaded, selections[arm], test, seed,
                                           {"arm": arm}))

    proxy_points = []
    for record in spread_trials(tuned.search.trials, args.proxy_checks, tuned.selection):
        print(f"proxy check: trial {record.index} (J {record.value:.4f})", flush=True)
        selected = [pool[int(position)] for position in tuned.selection(record.weights)]
        run = fine_tune_run(runs / f"proxy_trial{record.index}__s0.json", loaded, selected, test, 0,
                            {"trial": record.index, "J": record.value, "weights": record.weights})
        proxy_points.append({"trial": record.index, "J": record.value, "score": run["score"]})

    document = tuned.document()
    summary = summarise(args.out, arms, zero_shot, proxy_points,
                        {"weights": document["weights"], "orientation": document["orientation"],
                         "J": document["J"], "trials": len(document["trials"]), "proxy": document["proxy"],
                         "selection_size": size, "pool_size": len(pool)})
    table = markdown(summary)
    (args.out / "study_weights.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
