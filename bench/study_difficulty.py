"""Study 4, reduced for CPU: does the best difficulty window move harder as the budget grows?

SmolLM2 on BBH ``boolean_expressions`` (fine-tuning moves it: about 0.05 zero-shot to 0.6 after a
32-example LoRA), split with a seed into a held-out test set and a training pool. The
``calibrate-difficulty`` grid (budgets × easy/medium/hard loss windows) runs as one resumable sweep,
with ``random`` at the same budgets beside it. Rerun the same command to resume; every finished run
is a file under ``OUT/runs``.

    .venv/bin/python bench/study_difficulty.py --out bench/out/study_difficulty
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import bbh  # noqa: E402

from tunewise.difficulty_calibration import DEFAULT_WINDOWS, calibrate_difficulty  # noqa: E402
from tunewise.finetune import FinetuneConfig  # noqa: E402
from tunewise.sweep import BASELINE, run_sweep  # noqa: E402

TASK = "boolean_expressions"


def split_task(test_size: int, seed: int):
    """The task's examples shuffled with ``seed``: (training pool, held-out test set)."""
    examples = bbh(TASK)
    random.Random(seed).shuffle(examples)
    return examples[test_size:], examples[:test_size]


def accuracy_table(calibration: dict) -> str:
    """Markdown: accuracy per window (and random) and budget, mean over seeds ± the binomial standard
    error of all the test answers pooled over seeds, the per-seed accuracies after it."""
    budgets = [str(budget) for budget in calibration["budgets"]]
    rows = [(f"window {centre}", entry["scores"]) for centre, entry in calibration["grid"].items()]
    if calibration["random"]:
        rows.append(("random", calibration["random"]))
    lines = ["| selection | " + " | ".join(f"budget {b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for label, scores in rows:
        cells = []
        for budget in budgets:
            if budget not in scores:
                cells.append("not run")
                continue
            entry = scores[budget]
            answers = entry["n_test"] * len(entry["per_seed"])
            stderr = math.sqrt(entry["score"] * (1 - entry["score"]) / answers)
            per_seed = " / ".join(f"{score:.3f}" for score in entry["per_seed"].values())
            cells.append(f"{entry['score']:.3f} ± {stderr:.3f} (n = {answers}; {per_seed})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = " | ".join(f"{calibration['best'][b]['best_centre']:.3g}" + (" (tie)" * calibration["best"][b]["tied"])
                      for b in budgets)
    lines.append(f"| best window centre | {best} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_difficulty"))
    parser.add_argument("--budgets", default="8,16,32")
    parser.add_argument("--windows", default=",".join(f"{w:g}" for w in DEFAULT_WINDOWS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--test-size", type=int, default=40)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    windows = [float(w) for w in args.windows.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    pool, test = split_task(args.test_size, args.split_seed)
    config = FinetuneConfig()
    options = dict(metric="exact_match", progress=lambda done, total, label: print(f"[{done}/{total}] {label}",
                                                                                     flush=True))
    # The windows first: they are the study; random at the same budgets is context for it. The
    # second calibration only resumes (every run is on disk) to report random beside the grid.
    calibrate_difficulty(pool, test, budgets, args.model, args.out, windows, seeds, config, **options)
    run_sweep(pool, test, budgets, [BASELINE], seeds, args.model, args.out, config, **options)
    calibration = calibrate_difficulty(pool, test, budgets, args.model, args.out, windows, seeds, config, **options)
    print(json.dumps({key: calibration[key] for key in ("c0", "beta", "n0", "best", "random", "zero_shot")},
                     indent=1))
    print(calibration["select_command"])
    print(accuracy_table(calibration))


if __name__ == "__main__":
    main()
