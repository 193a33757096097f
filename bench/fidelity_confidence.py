"""Fidelity check (issue 13): mean confidence per task of study 2's pool, before and after the fix.

Before: tunewise's confidence up to v1, the mean probability of every greedy token up to and
including the stop token, at most 32 tokens. After (v2): paper A's, the mean over the answer
tokens only (no stop, end-of-turn, padding or bare-newline token), at most 30 tokens
(r-three/dataefficiency utils/calculate_coslow.py:39, :52-69, :149-153).

One greedy pass of 32 tokens per prompt gives both: greedy decoding is deterministic, so its first
30 tokens are the 30-token answer. The script prints and writes, per task, both mean confidences
and the weighted_task_diversity shares they lead to (w ∝ 1 / mean confidence, paper B).

    TUNEWISE_THREADS=1 nice -n 5 .venv/bin/python bench/fidelity_confidence.py --out bench/out/fidelity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_budget import build_study_data  # noqa: E402

from tunewise.model import load_backend  # noqa: E402
from tunewise.model.base import CONFIDENCE_NEW_TOKENS, answer_confidence  # noqa: E402
from tunewise.model.load import describe_model  # noqa: E402
from tunewise.select.allocation import inverse_confidence_weights  # noqa: E402
from tunewise.io import write_json  # noqa: E402

OLD_NEW_TOKENS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/fidelity"))
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()

    # Study 2's defaults (bench/study_budget.py): 1/80 of every task's rows, 5 test rows per task.
    pool, _, _ = build_study_data(1 / 80, 5, 20, args.split_seed)
    backend = load_backend(args.model, device="cpu", dtype="fp32")
    started = time.perf_counter()
    generations = backend.generate([e.prompt for e in pool], OLD_NEW_TOKENS)
    seconds = time.perf_counter() - started

    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"before": [], "after": []})
    no_answer = 0
    lengths, stopped, masked_share = [], [], []
    for example, generation in zip(pool, generations):
        # Why the two definitions differ: how long answers are, how many end on a stop token, and
        # which share of the tokens the old mean averaged are stop or newline tokens.
        lengths.append(len(generation.token_ids))
        stopped.append(len(generation.token_ids) < OLD_NEW_TOKENS or bool(np.isin(generation.token_ids[-1:],
                                                                                   list(backend._stop_ids.tolist())).any()))
        masked_share.append(float(np.isin(generation.token_ids, list(generation.not_answer_ids)).mean()))
        before = float(generation.token_probabilities.mean())
        after, _ = answer_confidence(generation.token_ids[:CONFIDENCE_NEW_TOKENS],
                                     generation.token_probabilities[:CONFIDENCE_NEW_TOKENS], generation.not_answer_ids)
        per_task[example.task]["before"].append(before)
        # An answer with no answer token has confidence 0 and counts so in the task mean.
        per_task[example.task]["after"].append(after)
        no_answer += after == 0
    tasks = sorted(per_task)
    result = {"model": args.model, "model_description": describe_model(args.model), "pool": len(pool),
              "examples_without_answer_tokens": no_answer, "generation_seconds": round(seconds, 1),
              "answer_tokens_mean": float(np.mean(lengths)), "answer_tokens_median": float(np.median(lengths)),
              "answers_ending_on_a_stop_token": float(np.mean(stopped)),
              "answers_at_the_32_token_cap": float(np.mean(np.array(lengths) == OLD_NEW_TOKENS)),
              "non_answer_token_share_of_old_mean": float(np.mean(masked_share)), "tasks": {}}
    for label in ("before", "after"):
        means = {task: float(np.mean(per_task[task][label])) for task in tasks}
        weights = inverse_confidence_weights(means)
        total = sum(weights.values())
        for task in tasks:
            entry = result["tasks"].setdefault(task, {"examples": len(per_task[task]["before"])})
            entry[f"mean_confidence_{label}"] = means[task]
            entry[f"share_{label}"] = weights[task] / total
        values = np.array(list(means.values()))
        shares = np.array([weights[t] / total for t in tasks])
        result[label] = {"mean_confidence_min": float(values.min()), "mean_confidence_max": float(values.max()),
                         "mean_confidence_spread": float(values.max() - values.min()),
                         "share_min": float(shares.min()), "share_max": float(shares.max()),
                         "share_max_over_min": float(shares.max() / shares.min())}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "confidence_spread.json", result)
    print(f"{'task':<22}{'n':>4}{'conf before':>13}{'conf after':>12}{'share before':>14}{'share after':>13}")
    for task in tasks:
        entry = result["tasks"][task]
        print(f"{task:<22}{entry['examples']:>4}{entry['mean_confidence_before']:>13.3f}"
              f"{entry['mean_confidence_after']:>12.3f}{entry['share_before']:>14.3f}{entry['share_after']:>13.3f}")
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}, indent=2))


if __name__ == "__main__":
    main()
