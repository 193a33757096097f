"""Study 4, reduced for CPU: does the best difficulty window move harder as the budget grows?

Two settings, each split with a seed into a training pool and a held-out test set:

- ``--task gsm8k`` (the issue's setting): SmolLM2 answers almost no GSM8K question right at any
  budget a CPU can afford, so accuracy cannot rank the windows. The score is the test set's mean
  log-likelihood per gold-solution token (``evaluate --metric log_likelihood``, higher is better):
  how much closer fine-tuning brought the model to writing the reference solutions.
- ``--task boolean_expressions`` (BBH): fine-tuning moves exact match (about 0.05 zero-shot to 0.6
  after a 32-example LoRA), so accuracy is the score.

The ``calibrate-difficulty`` grid (budgets × easy/medium/hard windows of ``--difficulty``: response
tokens by default, paper C's measure; the study in BENCHMARKS.md ran with ``--difficulty loss``,
the default of its day) and ``random`` at the
same budgets run seed by seed into one resumable sweep folder: every finished run is a file under
``OUT/runs`` and a rerun of the same command picks up where it stopped. The summary reports each
window's mean score, its paired gain over random per budget with a 95 % t interval over seeds,
and the best window per budget.

    .venv/bin/python bench/study_difficulty.py --task gsm8k --pool-size 300 --test-size 40 \\
        --seeds 0,1,2 --out bench/out/study_difficulty_gsm8k
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import bbh, gsm8k  # noqa: E402

from tunewise.training.difficulty import DEFAULT_WINDOWS, calibrate_difficulty  # noqa: E402
from tunewise.io import write_json  # noqa: E402
from tunewise.training.evaluate import LOG_LIKELIHOOD  # noqa: E402
from tunewise.training.finetune import FinetuneConfig  # noqa: E402
from tunewise.training.sweep import BASELINE, paired_gain, run_sweep  # noqa: E402

GSM8K = "gsm8k"


def study_data(task: str, pool_size: int | None, test_size: int, seed: int):
    """(training pool, held-out test set) of ``task``, drawn with ``seed``."""
    if task == GSM8K:
        pool = gsm8k("train", limit=pool_size, seed=seed)
        return pool, gsm8k("test", limit=test_size, seed=seed)
    examples = bbh(task)
    random.Random(seed).shuffle(examples)
    pool = examples[test_size:]
    return (pool[:pool_size] if pool_size else pool), examples[:test_size]


def gains_over_random(calibration: dict) -> dict:
    """window centre → budget → paired gain over random (mean and 95 % t interval over seeds)."""
    gains = {}
    for centre, entry in calibration["grid"].items():
        gains[centre] = {}
        for budget, scores in entry["scores"].items():
            baseline = (calibration["random"] or {}).get(budget)
            if baseline:
                gains[centre][budget] = paired_gain({int(s): v for s, v in scores["per_seed"].items()},
                                                    {int(s): v for s, v in baseline["per_seed"].items()})
    return gains


def score_table(calibration: dict, gains: dict) -> str:
    """Markdown: per window (and random) and budget, the mean score over seeds, its gain over random
    [95 % CI], the per-seed scores; the best window centre per budget last."""
    budgets = [str(budget) for budget in calibration["budgets"]]
    rows = [(f"window {centre}", entry["scores"], gains.get(centre, {})) for centre, entry in calibration["grid"].items()]
    if calibration["random"]:
        rows.append(("random", calibration["random"], {}))
    lines = ["| selection | " + " | ".join(f"budget {b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for label, scores, row_gains in rows:
        cells = []
        for budget in budgets:
            if budget not in scores:
                cells.append("not run")
                continue
            per_seed = " / ".join(f"{score:.3f}" for score in scores[budget]["per_seed"].values())
            cell = f"{scores[budget]['score']:.3f} ({per_seed})"
            gain = row_gains.get(budget)
            if gain and gain["ci_low"] is not None:
                cell += f"; {gain['mean']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best = " | ".join(f"{calibration['best'][b]['best_centre']:.3g}" + (" (tie)" * calibration["best"][b]["tied"])
                      for b in budgets)
    lines.append(f"| best window centre | {best} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=GSM8K, help="gsm8k or a BBH task name, e.g. boolean_expressions")
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_difficulty_gsm8k"))
    parser.add_argument("--budgets", default="8,16,32")
    parser.add_argument("--windows", default=",".join(f"{w:g}" for w in DEFAULT_WINDOWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pool-size", type=int, default=300, help="training pool size (BBH: at most the rest)")
    parser.add_argument("--test-size", type=int, default=40)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--difficulty", default="length", help="length (paper C), cot_length or loss")
    parser.add_argument("--metric", default=None, help=f"default: {LOG_LIKELIHOOD} for gsm8k, exact_match for BBH")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    windows = [float(w) for w in args.windows.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    metric = args.metric or (LOG_LIKELIHOOD if args.task == GSM8K else "exact_match")
    pool, test = study_data(args.task, args.pool_size, args.test_size, args.split_seed)
    print(f"{args.task}: pool {len(pool)}, test {len(test)}, metric {metric}", flush=True)
    config = FinetuneConfig()
    options = dict(metric=metric, difficulty=args.difficulty,
                   progress=lambda done, total, label: print(f"[{done}/{total}] {label}", flush=True))
    # Seed by seed, windows then random, so that a stopped run leaves whole seeds behind it.
    for seed in seeds:
        calibrate_difficulty(pool, test, budgets, args.model, args.out, windows, [seed], config, **options)
        run_sweep(pool, test, budgets, [BASELINE], [seed], args.model, args.out, config,
                  **{key: value for key, value in options.items() if key != "difficulty"})
    calibration = calibrate_difficulty(pool, test, budgets, args.model, args.out, windows, seeds, config, **options)
    gains = gains_over_random(calibration)
    write_json(args.out / "study_difficulty.json", {"task": args.task, "metric": metric, "pool": len(pool), "test": len(test),
                       "calibration": calibration, "gain_over_random": gains})
    table = score_table(calibration, gains)
    (args.out / "study_difficulty.md").write_text(table + "\n", encoding="utf-8")
    print(json.dumps({key: calibration[key] for key in ("c0", "beta", "n0", "zero_shot")}, indent=1))
    print(calibration["select_command"])
    print(table)


if __name__ == "__main__":
    main()
