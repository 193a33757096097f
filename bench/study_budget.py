"""Study 2, reduced for CPU: does splitting the budget across tasks beat random selection?

Superseded for evidence v2 (issue 14) by ``bench/study_budget_v2.py`` (13 T0 tasks' classification
templates plus ARC/BoolQ/OpenBookQA, budgets 64/256, ``choice`` accuracy); kept, with its defaults,
to reproduce BENCHMARKS.md's "Study 2" table, and v2 reads its MMLU/BBH and ``llm_adapters`` loaders.

A multi-task pool (short-answer T0 tasks plus the ARC-Challenge, ARC-Easy, BoolQ and OpenBookQA
train splits) keeps the tasks' natural imbalance: each task contributes the same fraction of its
rows, so BoolQ holds about a third of the pool and random selection spends its budget the same way.
``random``, ``task_diversity`` and ``weighted_task_diversity`` (shares ∝ 1 / mean confidence) pick
from it at each budget and seed; every pick is fine-tuned (LoRA) and evaluated on one test set made
of two parts that are scored apart:

- same-task: held-out examples of every pool task (T0 rows outside the pool, the ARC/BoolQ/OBQA
  test splits), macro-averaged over the tasks;
- held-out benchmarks: a seeded sample of MMLU test questions and of multiple-choice BBH tasks,
  tasks the pool does not hold, macro-averaged over the two.

The runs are one :func:`tunewise.training.sweep.run_sweep` folder, so a rerun of the same command resumes
and more seeds or budgets can be added later. The gain over random is the sweep's paired per-seed
difference with its 95 % t interval (:func:`tunewise.training.sweep.paired_gain`), computed per part.

    .venv/bin/python bench/study_budget.py --out bench/out/study_budget

The ``efficiency`` allocation (DESIGN.md §2) gives each label to the task whose predicted curve
gains most from it. Its per-task AUC' comes from the task's CoS-Low and the coefficients shipped
for SmolLM2 (``tunewise/data/calibration_smollm2.json``, N = 16). Each task's CoS-Low is measured
on that task's rows outside the pool and the test set, the labels a user would pay for before
planning: confidence on a seeded sample of ``--coslow-prompts`` prompts, gradients of the 32 least
confident (``OUT/coslow/<task>.json``, reused on a rerun).

The defaults are a reduced configuration for one shared CPU core: 8 of T0's 34 tasks, 1/80 of
every task's rows (353 pool examples), budgets 8/16/32, 5 test examples per task and 20
MMLU/BBH questions.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import _examples, require_data, t0, with_choices  # noqa: E402
from study_curves import measure_coslow  # noqa: E402

from tunewise.efficiency.predict import coefficients_for, predict_auc  # noqa: E402

from tunewise.io import write_json  # noqa: E402
from tunewise.training.evaluate import CHOICE  # noqa: E402
from tunewise.training.finetune import FinetuneConfig  # noqa: E402
from tunewise.training.sweep import BASELINE, paired_gain, read_runs, run_sweep  # noqa: E402

# T0 tasks whose prompts are short (median under 350 characters) and whose answers are a word or
# a label, so that fine-tuning stays cheap on CPU and exact match is a fair metric.
T0_TASKS = ("ag_news", "commonsense_qa", "glue_qqp", "qasc", "quartz", "rotten_tomatoes", "sciq", "social_i_qa")
# llm_adapters folder → task name; their "answer" field (answer1..4, true/false) is the response.
MULTIPLE_CHOICE_TASKS = {"ARC-Challenge": "arc_challenge", "ARC-Easy": "arc_easy", "boolq": "boolq",
                         "openbookqa": "openbookqa"}
# Multiple-choice BBH tasks with the shortest inputs; targets are "(A)"-style letters.
BBH_TASKS = ("date_understanding", "disambiguation_qa", "geometric_shapes", "hyperbaton", "snarks")
MAX_ANSWER_WORDS = 5
SAME_TASK, BENCHMARKS = "same_task", "benchmarks"
BENCHMARK_TASKS = ("mmlu", "bbh")
EFFICIENCY = "efficiency"
STRATEGIES = ("random", "task_diversity", "weighted_task_diversity", EFFICIENCY)


def llm_adapters_split(folder: str, split: str) -> list[dict]:
    records = json.loads(require_data("llm_adapters", "dataset", folder, f"{split}.json").read_text())
    return [{"prompt": r["instruction"], "completion": r["answer"], "task": MULTIPLE_CHOICE_TASKS[folder]}
            for r in records]


def mmlu_rows() -> list[dict]:
    """Every MMLU test question (all subjects, in file order), answered by letter."""
    rows = []
    for path in sorted(require_data("mmlu", "test").glob("*_test.csv")):
        subject = path.name.removesuffix("_test.csv").replace("_", " ")
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                choices = "\n".join(f"{letter}. {row[f'choice{i}']}" for i, letter in enumerate("ABCD"))
                prompt = (f"The following is a multiple choice question about {subject}.\n\n{row['question']}\n"
                          f"{choices}\nAnswer with the letter of the correct choice.")
                rows.append({"prompt": prompt, "completion": "ABCD"[int(row["answer"])], "task": "mmlu"})
    return rows


def mmlu_sample(size: int, seed: int) -> list[dict]:
    """``size`` MMLU test questions drawn with ``seed`` over all subjects, answered by letter."""
    return random.Random(f"{seed}:mmlu").sample(mmlu_rows(), size)


def bbh_rows() -> list[dict]:
    """Every question of the multiple-choice BBH tasks in ``BBH_TASKS``, in file order."""
    rows = []
    for task in BBH_TASKS:
        data = json.loads(require_data("bbh", "tasks", f"{task}.json").read_text())
        rows.extend({"prompt": e["input"], "completion": e["target"], "task": "bbh"} for e in data["examples"])
    return rows


def bbh_sample(size: int, seed: int) -> list[dict]:
    """``size`` questions drawn with ``seed`` from the multiple-choice BBH tasks in ``BBH_TASKS``."""
    return random.Random(f"{seed}:bbh").sample(bbh_rows(), size)


def build_study_data(pool_fraction: float, test_per_task: int, benchmark_size: int, seed: int):
    """(pool, test, spare): every task's short-answer rows shuffled with ``seed``; the first
    ``test_per_task`` go to the test set (T0) or come from the task's test split (the rest), then
    ``pool_fraction`` of what remains (at least one) goes to the pool, keeping the tasks' imbalance.
    ``spare`` maps each pool task to its training rows in neither the pool nor the test set."""
    by_task: dict[str, list] = {}
    for example in t0(tasks=list(T0_TASKS), seed=seed):
        if len(example.response.split()) <= MAX_ANSWER_WORDS:
            by_task.setdefault(example.task, []).append(example)
    pool, test, spare = [], [], {}
    for task, examples in sorted(by_task.items()):
        test.extend(examples[:test_per_task])
        rest = examples[test_per_task:]
        in_pool = max(1, round(pool_fraction * len(rest)))
        pool.extend(rest[:in_pool])
        spare[task] = rest[in_pool:]
    for folder, task in MULTIPLE_CHOICE_TASKS.items():
        train, held_out = (_examples(llm_adapters_split(folder, split)) for split in ("train", "test"))
        random.Random(f"{seed}:{folder}").shuffle(train)
        random.Random(f"{seed}:{folder}:test").shuffle(held_out)
        in_pool = max(1, round(pool_fraction * len(train)))
        pool.extend(train[:in_pool])
        spare[task] = train[in_pool:]
        test.extend(held_out[:test_per_task])
    half = benchmark_size // 2
    test.extend(_examples(mmlu_sample(half, seed) + bbh_sample(benchmark_size - half, seed)))
    return pool, test, spare


def predicted_aucs(out: Path, spare: dict, model: str, prompts: int, seed: int) -> dict:
    """Task → CoS-Low measured on its spare rows (cached in OUT/coslow) and the AUC' it predicts
    with the model's shipped coefficients; written to OUT/predicted_auc.json."""
    coefficients = coefficients_for(model)
    tasks = {}
    for task, rows in sorted(spare.items()):
        path = out / "coslow" / f"{task}.json"
        if not path.exists():
            print(f"CoS-Low of {task} ({min(prompts, len(rows))} prompts of {len(rows)} spare rows)", flush=True)
            write_json(path, measure_coslow(rows, model, prompts, seed))
        coslow = json.loads(path.read_text())["coslow"]
        tasks[task] = {"coslow": coslow, "predicted_auc": predict_auc(coslow, coefficients)}
    document = {"coefficients": {"slope": coefficients.slope, "intercept": coefficients.intercept,
                                 "max_budget": coefficients.max_budget, "source": coefficients.source},
                "tasks": tasks}
    write_json(out / "predicted_auc.json", document)
    return document


def part_of(task: str) -> str:
    return BENCHMARKS if task in BENCHMARK_TASKS else SAME_TASK


def part_score(task_scores: dict[str, float], part: str) -> float:
    """Macro mean over the tasks of one part of the test set."""
    values = [score for task, score in task_scores.items() if part_of(task) == part]
    return sum(values) / len(values)


def summarise_study(out: Path, pool, test) -> dict:
    """Per part, strategy and budget: mean score over seeds, per-seed scores and the paired gain
    over random with its 95 % t interval; written to OUT/study_budget.json."""
    zero_shot, records = read_runs(out)
    per_seed: dict[str, dict[str, dict[int, dict[int, float]]]] = {}
    allocations: dict[str, dict[int, dict[int, dict[str, int]]]] = {}
    for record in records:
        for part in (SAME_TASK, BENCHMARKS, *BENCHMARK_TASKS):
            score = (record["scores"][part] if part in BENCHMARK_TASKS else part_score(record["scores"], part))
            per_seed.setdefault(part, {}).setdefault(record["strategy"], {}).setdefault(
                record["budget"], {})[record["seed"]] = score
        pool_task = {example.id: example.task for example in pool}
        picked = Counter(pool_task[example_id] for example_id in record["selected_ids"])
        allocations.setdefault(record["strategy"], {}).setdefault(record["budget"], {})[record["seed"]] = dict(
            sorted(picked.items()))

    parts = {}
    for part, strategies in per_seed.items():
        entry = {}
        for strategy in STRATEGIES:
            if strategy not in strategies:
                continue
            entry[strategy] = {}
            for budget, seeds in sorted(strategies[strategy].items()):
                cell = {"mean": sum(seeds.values()) / len(seeds), "per_seed": dict(sorted(seeds.items()))}
                baseline = strategies.get(BASELINE, {}).get(budget)
                if strategy != BASELINE and baseline:
                    cell["gain_over_random"] = paired_gain(seeds, baseline)
                entry[strategy][budget] = cell
        parts[part] = entry
    summary = {
        "pool_tasks": dict(sorted(Counter(example.task for example in pool).items())),
        "test_tasks": dict(sorted(Counter(example.task for example in test).items())),
        "zero_shot": None if zero_shot is None else {
            part: (zero_shot["scores"][part] if part in BENCHMARK_TASKS else part_score(zero_shot["scores"], part))
            for part in (SAME_TASK, BENCHMARKS, *BENCHMARK_TASKS)},
        "parts": parts,
        "allocations": allocations,
        "predicted_auc": (json.loads((out / "predicted_auc.json").read_text())
                          if (out / "predicted_auc.json").exists() else None),
    }
    write_json(out / "study_budget.json", summary)
    return summary


def markdown_table(summary: dict) -> str:
    """One row per budget and strategy: mean score per part, gain over random [95 % CI], seeds."""
    def cell(part: str, strategy: str, budget: int) -> tuple[str, str]:
        entry = summary["parts"][part][strategy][budget]
        gain = entry.get("gain_over_random")
        if gain is None:
            return f"{entry['mean']:.3f}", "—"
        if gain["ci_low"] is None:
            return f"{entry['mean']:.3f}", f"{gain['mean']:+.3f} (one seed)"
        return f"{entry['mean']:.3f}", f"{gain['mean']:+.3f} [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]"

    lines = ["| budget | strategy | same-task score | gain over random [95 % CI] | MMLU/BBH score "
             "| gain over random [95 % CI] | seeds |", "|---:|---|---:|---:|---:|---:|---:|"]
    if summary["zero_shot"] is not None:
        zero = summary["zero_shot"]
        lines.append(f"| 0 | zero-shot | {zero[SAME_TASK]:.3f} | — | {zero[BENCHMARKS]:.3f} | — | — |")
    same = summary["parts"].get(SAME_TASK, {})
    budgets = sorted({budget for strategy in same.values() for budget in strategy})
    for budget in budgets:
        for strategy in STRATEGIES:
            if budget not in same.get(strategy, {}):
                continue
            same_score, same_gain = cell(SAME_TASK, strategy, budget)
            bench_score, bench_gain = cell(BENCHMARKS, strategy, budget)
            seeds = len(same[strategy][budget]["per_seed"])
            lines.append(f"| {budget} | {strategy} | {same_score} | {same_gain} | {bench_score} | {bench_gain} "
                         f"| {seeds} |")
    return "\n".join(lines)


def allocation_table(summary: dict) -> str:
    """Markdown: per budget and strategy, the examples each task got, mean over seeds."""
    tasks = list(summary["pool_tasks"])
    lines = ["| budget | strategy | " + " | ".join(tasks) + " |", "|---:|---|" + "---:|" * len(tasks),
             "| pool | — | " + " | ".join(str(summary["pool_tasks"][task]) for task in tasks) + " |"]
    if summary["predicted_auc"] is not None:
        predicted = summary["predicted_auc"]["tasks"]
        lines += ["| CoS-Low | — | " + " | ".join(f"{predicted[task]['coslow']:.3f}" for task in tasks) + " |",
                  "| predicted AUC' | — | " + " | ".join(f"{predicted[task]['predicted_auc']:.3f}" for task in tasks)
                  + " |"]
    budgets = sorted({budget for strategy in summary["allocations"].values() for budget in strategy})
    for budget in budgets:
        for strategy in STRATEGIES:
            seeds = summary["allocations"].get(strategy, {}).get(budget)
            if not seeds:
                continue
            means = [sum(picks.get(task, 0) for picks in seeds.values()) / len(seeds) for task in tasks]
            lines.append(f"| {budget} | {strategy} | " + " | ".join(f"{mean:.3g}" for mean in means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_budget"))
    parser.add_argument("--budgets", default="8,16,32")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pool-fraction", type=float, default=1 / 80,
                        help="share of every task's rows that goes into the pool")
    parser.add_argument("--test-per-task", type=int, default=5)
    parser.add_argument("--benchmark-size", type=int, default=20, help="MMLU + BBH test questions, half each")
    parser.add_argument("--coslow-prompts", type=int, default=96,
                        help="per task, spare prompts answered to find the 32 least confident for CoS-Low")
    parser.add_argument("--metric", default="auto",
                        help="evaluate's metric; 'choice' scores by log-likelihood over each test question's "
                             "options (or its template's labels) and drops test questions that have neither")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summarise-only", action="store_true", help="only rebuild the summary and table")
    args = parser.parse_args()

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    pool, test, spare = build_study_data(args.pool_fraction, args.test_per_task, args.benchmark_size,
                                         args.split_seed)
    if args.metric == CHOICE:
        kept = [e for e in with_choices(test) if "choices" in e.metadata]
        print(f"choice metric: {len(kept)} of {len(test)} test questions have options or a small label set", flush=True)
        test = kept
    print(f"pool: {len(pool)} examples {dict(Counter(e.task for e in pool))}; test: {len(test)}", flush=True)
    strategies = args.strategies.split(",")
    if not args.summarise_only:
        extra = {}
        if EFFICIENCY in strategies:
            predictions = predicted_aucs(args.out, spare, args.model, args.coslow_prompts, args.split_seed)
            extra[EFFICIENCY] = {"predicted_auc": {task: entry["predicted_auc"]
                                                   for task, entry in predictions["tasks"].items()},
                                 "max_budget": predictions["coefficients"]["max_budget"]}
        run_sweep(pool, test, [int(b) for b in args.budgets.split(",")], strategies,
                  [int(s) for s in args.seeds.split(",")], args.model, args.out, FinetuneConfig(),
                  metric=args.metric, strategy_parameters=extra,
                  progress=lambda done, total, label: print(f"[{done}/{total}] {label}", flush=True))
    summary = summarise_study(args.out, pool, test)
    tables = markdown_table(summary) + "\n\nExamples per task (mean over seeds):\n\n" + allocation_table(summary)
    (args.out / "study_budget.md").write_text(tables + "\n", encoding="utf-8")
    print(tables)


if __name__ == "__main__":
    main()
