"""Study 2 of evidence v2 (issue 14): budget across tasks, paper B's way, on CPU.

Does splitting a labelling budget across tasks (paper B's TaskDiversity and WeightedTaskDiversity)
beat random selection from one imbalanced multi-task pool, measured by ``choice`` accuracy (each
option scored by its log-likelihood after the prompt, nothing generated)? This supersedes
``bench/study_budget.py`` (v1: 8 T0 tasks, budgets 8/16/32, exact match, 80 test questions), whose
defaults and results (BENCHMARKS.md "Study 2") stay reproducible with that script.

**Pool.** Every T0 task of ``t0_train_50k`` that has a classification template (2 to
``MAX_T0_LABELS`` distinct answers among its rows; study 1 reads T0 the same way), all its
classification templates pooled; of the 34 T0 tasks only 13 have one (the others are generation
or extractive tasks, or their 200-row template files hold a single label each: rotten_tomatoes,
imdb, dbpedia_14), and ``OUT/plan.json`` names every task left out and why. Beside them the
``llm_adapters`` train splits of ARC-Challenge, ARC-Easy, BoolQ and OpenBookQA. Examples longer
than the fine-tune's ``max_seq_length`` (prompt + answer, chat template included) are dropped
first (counted per task). Each T0 task's rows are shuffled with ``--split-seed``: the first
``--test-per-task`` (40) are its test items, ``--pool-fraction`` (1/12) of the rest go to the pool;
an ``llm_adapters`` task takes its test items from its own test split and the same fraction of
its train split. Every task keeps the same share of its rows, so the pool keeps the tasks' natural
imbalance (BoolQ about a third).

**Test set, two parts scored apart.** *Same-task*: the held-out items above, the macro mean over
the pool's tasks. *MMLU/BBH*: ``--benchmark-size`` (200) questions, half MMLU test questions over all
subjects, half from five multiple-choice BBH tasks (v1's), drawn with the split seed; the mean of
the two. Choices: a T0 item's template label set, a BBH item's listed letters, MMLU's A-D, and
an ``llm_adapters`` item its own "Answer format: answer1/answer2/..." line (so a four-option ARC
question offers four choices, not the task's five labels). Both ``acc`` (the likeliest choice)
and ``acc_norm`` (likeliest per character) are recorded per run, per task.

**Arms.** ``random``, ``task_diversity`` and ``weighted_task_diversity`` (task shares ∝ 1 / the
model's mean answer-only confidence over the task's pool rows, tunewise's ``confidence``
indicator, version 2, scored once over the pool and cached). ``efficiency`` (predicted-AUC
allocation from each task's CoS-Low and the shipped SmolLM2 calibration) is an option, off by
default: the calibration it reads is the one study 1 is refitting, and until that refit ships the
arm would test the old fit. Budgets 64 and 256 (``--budgets 64,256,1024`` adds 1,024, default off
on the CPU); seeds 0, 1, 2 drive selection and fine-tune.

**Fine-tune.** LoRA with the default ``FinetuneConfig`` (r = 8, learning rate 2e-4, 3 epochs,
effective batch 4), STUDIES.md's profile for this study, in ``--dtype auto`` (bf16 on a CPU with
bf16 instructions).

**Order and resuming.** Every run is a file under ``OUT/sweep/runs/`` (one
:func:`tunewise.training.sweep.run_sweep` folder), written when it finishes and never redone; the
zero-shot evaluation is done once, first. The passes run the most informative cells first:
seed 0 of every arm at 64, then at 256 (then 1,024 if asked), then seeds 1-2 at 64, then at 256;
rerunning the same command resumes. At the end (and with ``--report-only`` at any time, also while
the study runs) ``OUT/report.md``/``report.json`` give, per part, budget and arm, the mean over
seeds with its 95 % t interval and the paired gain over random with its 95 % t interval ("not
enough seeds yet" below two seeds), for ``acc`` and ``acc_norm``; ``OUT/plan.json`` has the pool,
the test set, their token counts and the projected CPU-hours per pass (STUDIES.md's cost model).

    bench/run_study.sh study_budget_v2 COMMIT -- python bench/study_budget_v2.py --out bench/out/study_budget_v2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import _examples, t0, with_choices
from study_budget import (
    MULTIPLE_CHOICE_TASKS,
    bbh_rows,
    llm_adapters_split,
    mmlu_rows,
    predicted_aucs,
)

from tunewise.io import write_json
from tunewise.training.evaluate import CHOICE
from tunewise.training.finetune import FinetuneConfig
from tunewise.training.sweep import (
    BASELINE,
    ZERO_SHOT,
    paired_gain,
    read_runs,
    run_file_name,
)

MAX_T0_LABELS = 10
ARMS = ("random", "task_diversity", "weighted_task_diversity")
EFFICIENCY = "efficiency"
SAME_TASK, MMLU_BBH = "same_task", "mmlu_bbh"
BENCHMARK_TASKS = ("mmlu", "bbh")
PARTS = (SAME_TASK, MMLU_BBH, *BENCHMARK_TASKS)
PART_NAMES = {SAME_TASK: "same-task", MMLU_BBH: "MMLU/BBH", "mmlu": "MMLU", "bbh": "BBH"}
MEASURES = ("acc", "acc_norm")
NOT_ENOUGH = "not enough seeds yet"
CONFIDENCE_LEVEL = 0.95
PLAN_FILE, REPORT_JSON, REPORT_MD, SWEEP_FOLDER = "plan.json", "report.json", "report.md", "sweep"
REPORT_PNG = "report.png"
POOL_TASKS_FILE = "pool_tasks.json"  # pool example id → task, for the report's allocations
# STUDIES.md's cost model (one core): LoRA training and forward (scoring) tokens per second.
COST_MODEL = {"bf16": {"train_tokens_per_s": 165, "forward_tokens_per_s": 460},
              "fp32": {"train_tokens_per_s": 90, "forward_tokens_per_s": 170}}
# Answer-only confidence (one greedy answer per pool prompt, up to 30 tokens), bf16, one thread: this
# script's smoke run answered 106 pool prompts in 36 s of wall time on the 2-core machine at load 5.
CONFIDENCE_SECONDS_PER_PROMPT = 0.34
_ANSWER_FORMAT = re.compile(r"^Answer format:\s*(\S+)\s*$", re.MULTILINE)


# --- the pool and the test set (pure) -----------------------------------------------------------

def classification_templates(examples, max_labels: int = MAX_T0_LABELS) -> tuple[list, dict[str, str]]:
    """The examples of T0 templates with 2 to ``max_labels`` distinct answers (``template``
    field), and, for every task left with none, why."""
    labels: dict[str, set] = {}
    for example in examples:
        labels.setdefault(example.metadata["template"], set()).add(example.response)
    kept = [e for e in examples if 2 <= len(labels[e.metadata["template"]]) <= max_labels]
    kept_tasks = {e.task for e in kept}
    left_out = {}
    for task in sorted({e.task for e in examples} - kept_tasks):
        counts = sorted({len(labels[e.metadata["template"]]) for e in examples if e.task == task})
        left_out[task] = (f"no classification template: its templates' distinct answers number {counts} "
                          f"(needs 2 to {max_labels})")
    return kept, left_out


def answer_format_choices(examples) -> list:
    """``examples`` with a ``choices`` field read from an "Answer format: a/b/c" line of the prompt
    (the ``llm_adapters`` questions) where that line lists the gold answer; the rest unchanged."""
    out = []
    for example in examples:
        match = _ANSWER_FORMAT.search(example.prompt[-1]["content"])
        options = match.group(1).split("/") if match else []
        if len(options) >= 2 and example.response in options and len(set(options)) == len(options):
            example = dataclasses.replace(example, metadata={**example.metadata, "choices": options})
        out.append(example)
    return out


@dataclasses.dataclass
class TaskRows:
    """One task's rows: ``train`` (the pool's source, and the test items' when ``held_out`` is None)
    and its own test split ``held_out``."""

    train: list
    held_out: list | None = None


@dataclasses.dataclass
class Assembly:
    """The study's pool and same-task test set, the unused training rows per task (``spare``, where
    the efficiency arm measures CoS-Low) and the counts per task."""

    pool: list
    test: list
    spare: dict[str, list]
    counts: dict[str, dict[str, int]]


def assemble(tasks: dict[str, TaskRows], test_per_task: int, pool_fraction: float, seed: int) -> Assembly:
    """Split every task the same way: its rows shuffled with ``seed`` (a task's own RNG, so adding
    a task changes no other task's split); ``test_per_task`` test items from its held-out split, or
    else the first of its shuffled rows; ``pool_fraction`` of the remaining rows, at least one, to
    the pool. Tasks in name order."""
    if not 0 < pool_fraction <= 1:
        raise ValueError(f"pool_fraction must be in (0, 1], got {pool_fraction}")
    pool, test, spare, counts = [], [], {}, {}
    for task in sorted(tasks):
        rows = list(tasks[task].train)
        random.Random(f"{seed}:{task}").shuffle(rows)
        if tasks[task].held_out is None:
            held, rest = rows[:test_per_task], rows[test_per_task:]
        else:
            held = list(tasks[task].held_out)
            random.Random(f"{seed}:{task}:test").shuffle(held)
            held, rest = held[:test_per_task], rows
        if not rest:
            raise ValueError(f"task {task}: no rows left for the pool after {len(held)} test items")
        in_pool = max(1, round(pool_fraction * len(rest)))
        pool.extend(rest[:in_pool])
        test.extend(held)
        spare[task] = rest[in_pool:]
        counts[task] = {"pool": in_pool, "test": len(held), "spare": len(rest) - in_pool}
    return Assembly(pool, test, spare, counts)


def study_passes(budgets: list[int], seeds: list[int]) -> list[tuple[str, list[int], list[int]]]:
    """The passes in order, as (label, seeds, budgets): the first seed at each budget ascending,
    then the other seeds at each budget ascending."""
    budgets, seeds = sorted(budgets), sorted(seeds)
    passes = [(f"seed {seeds[0]} at {budget}", seeds[:1], [budget]) for budget in budgets]
    if len(seeds) > 1:
        rest = seeds[1:]
        label = f"seeds {rest[0]}-{rest[-1]}" if len(rest) > 1 else f"seed {rest[0]}"
        passes += [(f"{label} at {budget}", rest, [budget]) for budget in budgets]
    return passes


# --- per-run parts and their aggregation (pure) -------------------------------------------------

def run_parts(results: dict) -> dict[str, dict[str, float | None]]:
    """One run's ``acc`` and ``acc_norm`` per part, from its per-task ``results`` (``choice`` and
    ``acc_norm`` per task, :func:`tunewise.training.evaluate.evaluate`): same-task is the macro mean
    over the tasks other than MMLU and BBH, MMLU/BBH the mean of the two; a part with no task is None."""
    parts: dict[str, dict[str, float | None]] = {}
    for measure in MEASURES:
        key = CHOICE if measure == "acc" else "acc_norm"
        scores = {task: entry[key] for task, entry in results.items()}
        same = [score for task, score in scores.items() if task not in BENCHMARK_TASKS]
        benchmarks = [scores[task] for task in BENCHMARK_TASKS if task in scores]
        values = {SAME_TASK: statistics.fmean(same) if same else None,
                  MMLU_BBH: statistics.fmean(benchmarks) if benchmarks else None,
                  **{task: scores.get(task) for task in BENCHMARK_TASKS}}
        for part, value in values.items():
            parts.setdefault(part, {})[measure] = value
    return parts


def mean_interval(values: list[float]) -> dict:
    """Mean of ``values`` with its 95 % Student-t interval; the interval is None (with the note "not
    enough seeds yet") below two values."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values) if n else None
    if n < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": n, "note": NOT_ENOUGH}
    half = stats.t.ppf((1 + CONFIDENCE_LEVEL) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def aggregate(records: list[dict]) -> dict:
    """Per part, measure, budget and arm: the mean over seeds with its interval, the per-seed
    values and (arms other than random) the paired gain over random over the seeds both have.

    ``records`` are run records (``strategy``, ``budget``, ``seed``, per-task ``results``)."""
    values: dict = {}
    for record in records:
        for part, measures in run_parts(record["results"]).items():
            for measure, value in measures.items():
                if value is not None:
                    values.setdefault(part, {}).setdefault(measure, {}).setdefault(
                        record["budget"], {}).setdefault(record["strategy"], {})[record["seed"]] = value
    table: dict = {}
    for part, measures in values.items():
        for measure, budgets in measures.items():
            for budget, arms in sorted(budgets.items()):
                for arm, seeds in arms.items():
                    cell = {**mean_interval([seeds[s] for s in sorted(seeds)]), "per_seed": dict(sorted(seeds.items()))}
                    if arm != BASELINE and BASELINE in arms:
                        gain = paired_gain(seeds, arms[BASELINE])
                        cell["gain_over_random"] = gain if gain["ci_low"] is not None else {**gain, "note": NOT_ENOUGH}
                    table.setdefault(part, {}).setdefault(measure, {}).setdefault(str(budget), {})[arm] = cell
    return table


# --- cost (pure) --------------------------------------------------------------------------------

def projected_hours(passes, arms: list[str], train_tokens_per_example: float, epochs: int,
                    eval_tokens_per_run: float, rates: dict[str, float]) -> list[dict]:
    """CPU-hours of one core per pass: each (arm, budget, seed) fine-tunes on ``epochs`` × budget
    examples of ``train_tokens_per_example`` tokens and evaluates ``eval_tokens_per_run`` forward
    tokens, at the cost model's ``rates`` (tokens per second)."""
    rows = []
    for label, seeds, budgets in passes:
        runs = len(arms) * len(seeds) * len(budgets)
        train = sum(len(arms) * len(seeds) * epochs * b * train_tokens_per_example for b in budgets)
        train_h = train / rates["train_tokens_per_s"] / 3600
        eval_h = runs * eval_tokens_per_run / rates["forward_tokens_per_s"] / 3600
        rows.append({"pass": label, "runs": runs, "train_h": train_h, "eval_h": eval_h, "total_h": train_h + eval_h})
    return rows


def setup_hours(pool_size: int, eval_tokens_per_run: float, rates: dict[str, float], confidence: bool) -> dict:
    """The CPU-hours before the first fine-tune: the zero-shot evaluation, and with ``confidence``
    (weighted_task_diversity) one answer per pool prompt at ``CONFIDENCE_SECONDS_PER_PROMPT``."""
    eval_h = eval_tokens_per_run / rates["forward_tokens_per_s"] / 3600
    eval_h += pool_size * CONFIDENCE_SECONDS_PER_PROMPT / 3600 if confidence else 0.0
    return {"pass": "setup: zero-shot" + (" + pool confidence" if confidence else ""), "runs": 0,
            "train_h": 0.0, "eval_h": eval_h, "total_h": eval_h}


# --- data and model work ------------------------------------------------------------------------

def load_tasks(names: list[str] | None) -> tuple[dict[str, TaskRows], dict[str, str]]:
    """Every pool task's rows (T0 classification templates; the llm_adapters splits), their choices
    attached (over the task's whole rows, so a template's label set does not depend on the split),
    and the T0 tasks left out with why."""
    kept, left_out = classification_templates(t0())
    by_task: dict[str, list] = {}
    for example in with_choices(kept, MAX_T0_LABELS):
        by_task.setdefault(example.task, []).append(example)
    tasks = {task: TaskRows(rows) for task, rows in by_task.items()}
    for folder, task in MULTIPLE_CHOICE_TASKS.items():
        train, held_out = (answer_format_choices(_examples(llm_adapters_split(folder, split)))
                           for split in ("train", "test"))
        tasks[task] = TaskRows(train, held_out)
    if names is not None:
        unknown = sorted(set(names) - set(tasks))
        if unknown:
            raise SystemExit(f"unknown task(s): {', '.join(unknown)}; known: {', '.join(sorted(tasks))}")
        tasks = {task: rows for task, rows in tasks.items() if task in names}
    return tasks, left_out


def benchmark_rows(size: int, seed: int, fits) -> list:
    """``size`` test questions, half MMLU (all subjects) and half multiple-choice BBH, drawn with
    ``seed`` from those that ``fits``, with their choices."""
    half = size // 2
    drawn = []
    for rows, count, name in ((mmlu_rows(), half, "mmlu"), (bbh_rows(), size - half, "bbh")):
        examples = fits([e for e in with_choices(_examples(rows)) if "choices" in e.metadata])
        drawn.extend(random.Random(f"{seed}:{name}").sample(examples, min(count, len(examples))))
    return drawn


def token_lengths(tokenizer, examples) -> list[tuple[int, int]]:
    """Per example (prompt tokens as the model sees them, answer tokens)."""
    from tunewise.model.chat import encode_prompts, encode_responses

    prompts = encode_prompts(tokenizer, [e.prompt for e in examples])
    answers = encode_responses(tokenizer, [e.response for e in examples])
    return [(len(p), len(a)) for p, a in zip(prompts, answers)]


def choice_tokens(tokenizer, examples) -> list[int]:
    """Per test item the forward tokens ``choice`` scoring runs: the prompt once, every choice beside it."""
    from tunewise.model.chat import encode_prompts, encode_responses

    prompts = encode_prompts(tokenizer, [e.prompt for e in examples])
    texts = sorted({c for e in examples for c in e.metadata["choices"]})
    lengths = dict(zip(texts, (len(ids) for ids in encode_responses(tokenizer, texts))))
    return [len(p) + sum(lengths[c] for c in e.metadata["choices"]) for p, e in zip(prompts, examples)]


def build_plan(args, tokenizer, config: FinetuneConfig) -> tuple[Assembly, list, dict]:
    """The pool, the test set (same-task then MMLU/BBH) and ``plan.json``'s document."""
    tasks, left_out = load_tasks(args.tasks.split(",") if args.tasks else None)
    limit = config.max_seq_length
    dropped: dict[str, int] = {}

    def fits(examples):
        # prompt + answer + the end-of-turn token the fine-tune appends
        kept = []
        for example, (prompt, answer) in zip(examples, token_lengths(tokenizer, examples)):
            if prompt + answer + 1 <= limit:
                kept.append(example)
            else:
                dropped[example.task] = dropped.get(example.task, 0) + 1
        return kept

    tasks = {task: TaskRows(fits(rows.train), None if rows.held_out is None else fits(rows.held_out))
             for task, rows in tasks.items()}
    assembly = assemble(tasks, args.test_per_task, args.pool_fraction, args.split_seed)
    test = assembly.test + benchmark_rows(args.benchmark_size, args.split_seed, fits)
    missing = [e for e in test if "choices" not in e.metadata]
    if missing:
        raise SystemExit(f"{len(missing)} test items have no choices (e.g. task {missing[0].task})")

    pool_lengths = token_lengths(tokenizer, assembly.pool)
    train_tokens = statistics.fmean(p + a + 1 for p, a in pool_lengths)
    eval_tokens = sum(choice_tokens(tokenizer, test))
    dtype = "bf16" if args.dtype in ("auto", "bf16") else "fp32"
    arms = args.arms.split(",")
    passes = study_passes(args.budgets, args.seeds)
    cost = [setup_hours(len(assembly.pool), eval_tokens, COST_MODEL[dtype], "weighted_task_diversity" in arms),
            *projected_hours(passes, arms, train_tokens, config.epochs, eval_tokens, COST_MODEL[dtype])]
    document = {
        "settings": {"model": args.model, "dtype": args.dtype, "metric": CHOICE, "split_seed": args.split_seed,
                     "test_per_task": args.test_per_task, "benchmark_size": args.benchmark_size,
                     "pool_fraction": args.pool_fraction, "tasks": args.tasks,
                     "finetune": {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}},
        "grid": {"arms": arms, "budgets": args.budgets, "seeds": args.seeds,
                 "passes": [{"pass": label, "seeds": seeds, "budgets": budgets} for label, seeds, budgets in passes]},
        "pool": {"examples": len(assembly.pool), "per_task": {t: c["pool"] for t, c in assembly.counts.items()}},
        "test": {"examples": len(test), "per_task": dict(sorted(Counter(e.task for e in test).items()))},
        "t0_left_out": left_out,
        "dropped_over_max_seq_length": dict(sorted(dropped.items())),
        "tokens": {"train_per_example_mean": train_tokens, "eval_forward_per_run": eval_tokens,
                   "test_items": len(test)},
        "cost_model": {"dtype": dtype, **COST_MODEL[dtype], "source": "bench/STUDIES.md, cost model"},
        "projected_cpu_hours": cost,
    }
    return assembly, test, document


def write_plan(out: Path, document: dict, command: str) -> None:
    """``OUT/plan.json``; a folder planned with other settings is refused (use another ``--out``)."""
    path = out / PLAN_FILE
    previous = json.loads(path.read_text()) if path.exists() else None
    if previous is not None and previous["settings"] != document["settings"]:
        raise SystemExit(f"{path} was planned with other settings: {previous['settings']}; use another --out")
    commands = list(dict.fromkeys([*(previous or {}).get("commands", []), command]))
    write_json(path, {**document, "commands": commands})


def efficiency_parameters(args, assembly: Assembly) -> dict:
    """The efficiency arm's predicted AUC per task (CoS-Low on the task's spare rows, the shipped
    calibration: :func:`study_budget.predicted_aucs`, cached in OUT/coslow)."""
    predictions = predicted_aucs(args.out, assembly.spare, args.model, args.coslow_prompts, args.split_seed)
    return {"predicted_auc": {task: entry["predicted_auc"] for task, entry in predictions["tasks"].items()},
            "max_budget": predictions["coefficients"]["max_budget"]}


def run_passes(args, assembly: Assembly, test: list, config: FinetuneConfig, arms: list[str]) -> None:
    from tunewise.training.sweep import run_sweep

    extra = {EFFICIENCY: efficiency_parameters(args, assembly)} if EFFICIENCY in arms else None
    folder = args.out / SWEEP_FOLDER
    for label, seeds, budgets in study_passes(args.budgets, args.seeds):
        names = [run_file_name(arm, budget, seed) for seed in seeds for budget in budgets for arm in arms]
        if (folder / "runs" / f"{ZERO_SHOT}.json").exists() and all(
                (folder / "runs" / name).exists() for name in names):
            print(f"[{label}] done already", flush=True)
            continue
        started = time.perf_counter()
        run_sweep(assembly.pool, test, budgets, arms, seeds, args.model, folder, config, dtype=args.dtype,
                  metric=CHOICE, strategy_parameters=extra,
                  progress=lambda done, total, what, label=label: print(f"  [{label}] {done}/{total}: {what}",
                                                                        flush=True))
        print(f"[{label}] finished in {time.perf_counter() - started:.0f} s", flush=True)


# --- report -------------------------------------------------------------------------------------

def _interval(cell: dict, signed: bool = False) -> str:
    """"mean [low, high]", or "mean (not enough seeds yet)"; a gain with its sign."""
    sign = "+" if signed else ""
    if cell.get("ci_low") is None:
        return f"{cell['mean']:{sign}.3f} ({NOT_ENOUGH})"
    return f"{cell['mean']:{sign}.3f} [{cell['ci_low']:{sign}.3f}, {cell['ci_high']:{sign}.3f}]"


def build_report(out: Path) -> dict:
    """``report.json``'s document from ``OUT/plan.json`` and the finished runs of ``OUT/sweep``."""
    plan = json.loads((out / PLAN_FILE).read_text())
    zero_shot, records = read_runs(out / SWEEP_FOLDER) if (out / SWEEP_FOLDER / "runs").is_dir() else (None, [])
    arms, budgets, seeds = plan["grid"]["arms"], plan["grid"]["budgets"], plan["grid"]["seeds"]
    done = {(r["strategy"], r["budget"], r["seed"]) for r in records}
    pool_tasks = json.loads((out / POOL_TASKS_FILE).read_text()) if (out / POOL_TASKS_FILE).exists() else {}
    passes = [{"pass": p["pass"], "planned": len(arms) * len(p["seeds"]) * len(p["budgets"]),
               "finished": sum((a, b, s) in done for a in arms for s in p["seeds"] for b in p["budgets"])}
              for p in plan["grid"]["passes"]]
    runs = [{"strategy": r["strategy"], "budget": r["budget"], "seed": r["seed"], "parts": run_parts(r["results"]),
             "evaluation_seconds": r.get("evaluation_seconds"),
             "training_seconds": (r.get("training") or {}).get("seconds"),
             "examples_per_task": dict(sorted(Counter(pool_tasks.get(i, "?") for i in r.get("selected_ids", [])).items()))}
            for r in sorted(records, key=lambda r: (r["budget"], r["seed"], r["strategy"]))]
    evaluations = [r["evaluation_seconds"] for r in records if r.get("evaluation_seconds")]
    if zero_shot is not None and zero_shot.get("evaluation_seconds"):
        evaluations.append(zero_shot["evaluation_seconds"])
    measured = None
    if evaluations:
        seconds = statistics.median(evaluations)
        measured = {"evaluation_seconds_median": seconds, "evaluations": len(evaluations),
                    "forward_tokens_per_s": plan["tokens"]["eval_forward_per_run"] / seconds}
    return {"plan": {k: plan[k] for k in ("settings", "grid", "pool", "test", "t0_left_out", "tokens",
                                          "projected_cpu_hours")},
            "passes": passes,
            "zero_shot": None if zero_shot is None else run_parts(zero_shot["results"]),
            "table": aggregate(records), "runs": runs, "measured_evaluation": measured,
            "arms": arms, "budgets": budgets, "seeds": seeds}


def allocation_table(report: dict) -> str:
    """Markdown: the pool's examples per task, then per budget and arm the examples each task got."""
    tasks = list(report["plan"]["pool"]["per_task"])
    lines = ["| budget | arm | " + " | ".join(tasks) + " |", "|---:|---|" + "---:|" * len(tasks),
             "| pool | — | " + " | ".join(str(report["plan"]["pool"]["per_task"][t]) for t in tasks) + " |"]
    for budget in report["budgets"]:
        for arm in report["arms"]:
            picks = [run["examples_per_task"] for run in report["runs"]
                     if run["budget"] == budget and run["strategy"] == arm]
            if picks:
                means = [statistics.fmean(p.get(task, 0) for p in picks) for task in tasks]
                lines.append(f"| {budget} | {arm} | " + " | ".join(f"{m:.3g}" for m in means) + " |")
    return "\n".join(lines)


def report_markdown(report: dict) -> str:
    lines = ["# Study 2 v2: budget across tasks (bench/study_budget_v2.py)", ""]
    lines += ["| pass | finished / planned runs |", "|---|---:|"]
    lines += [f"| {p['pass']} | {p['finished']} / {p['planned']} |" for p in report["passes"]]
    plan = report["plan"]
    lines += ["", (f"Pool {plan['pool']['examples']} examples over {len(plan['pool']['per_task'])} tasks; "
              f"test {plan['test']['examples']} items ({plan['tokens']['eval_forward_per_run']:,} forward tokens "
              "per evaluation). Intervals are 95 % Student-t over seeds; gains are paired per seed.")]
    for part in (SAME_TASK, MMLU_BBH):
        for measure in MEASURES:
            lines += ["", f"## {PART_NAMES[part]}, {measure}", "",
                      "| budget | arm | seeds | mean [95 % CI] | gain over random [95 % CI] |",
                      "|---:|---|---:|---:|---:|"]
            if report["zero_shot"] is not None and report["zero_shot"][part][measure] is not None:
                lines.append(f"| 0 | zero-shot | — | {report['zero_shot'][part][measure]:.3f} | — |")
            cells = report["table"].get(part, {}).get(measure, {})
            for budget in report["budgets"]:
                for arm in report["arms"]:
                    cell = cells.get(str(budget), {}).get(arm)
                    if cell is None:
                        continue
                    gain = cell.get("gain_over_random")
                    gain_text = "—" if gain is None else _interval(gain, signed=True)
                    lines.append(f"| {budget} | {arm} | {cell['n']} | {_interval(cell)} | {gain_text} |")
    lines += ["", "## Examples per task (mean over the seeds done)", "", allocation_table(report)]
    measured = report["measured_evaluation"]
    lines += ["", "## Cost", "", "| pass | runs | training h | evaluation h | CPU-h (projected) |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {c['pass']} | {c['runs']} | {c['train_h']:.2f} | {c['eval_h']:.2f} | {c['total_h']:.2f} |"
              for c in plan["projected_cpu_hours"]]
    if measured is not None:
        lines += ["", (f"Measured: median evaluation {measured['evaluation_seconds_median']:.0f} s over "
                  f"{measured['evaluations']} evaluations ({measured['forward_tokens_per_s']:.0f} forward tokens/s).")]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> None:
    """The study's figure: one panel per test part and measure; each arm's mean over seeds against
    the budget with its 95 % interval (where two seeds or more finished), zero-shot as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [(part, measure) for part in (SAME_TASK, MMLU_BBH) for measure in MEASURES]
    figure, panels = plt.subplots(1, len(views), figsize=(4.5 * len(views), 3.8), squeeze=False)
    for panel, (part, measure) in zip(panels[0], views):
        cells = report["table"].get(part, {}).get(measure, {})
        for offset, arm in enumerate(report["arms"]):
            points = [(budget, cells[str(budget)][arm]) for budget in report["budgets"]
                      if arm in cells.get(str(budget), {})]
            if not points:
                continue
            # Arms side by side at each budget so their intervals do not hide each other.
            xs = [budget * (1 + 0.04 * (offset - len(report["arms"]) / 2)) for budget, _ in points]
            errors = [0.0 if cell.get("ci_low") is None else cell["mean"] - cell["ci_low"] for _, cell in points]
            panel.errorbar(xs, [cell["mean"] for _, cell in points], yerr=errors, marker="o", capsize=3,
                           linestyle="none", label=arm)
        zero = report["zero_shot"] and report["zero_shot"][part][measure]
        if zero is not None:
            panel.axhline(zero, color="grey", linestyle="--", label="zero-shot")
        panel.set_xscale("log")
        panel.set_xticks(report["budgets"], [str(b) for b in report["budgets"]])
        panel.set(title=f"{PART_NAMES[part]}, {measure}", xlabel="labelled examples")
        panel.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(out: Path) -> dict:
    report = build_report(out)
    write_json(out / REPORT_JSON, report)
    (out / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    plot_report(report, out / REPORT_PNG)
    return report


def int_list(text: str) -> list[int]:
    return sorted(int(value) for value in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_budget_v2"))
    parser.add_argument("--budgets", type=int_list, default=[64, 256],
                        help="Budgets (64,256,1024 adds the 1,024 cells: about 4× a 256 cell's training each).")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help=f"Comma-separated arms; add '{EFFICIENCY}' once the refitted calibration ships.")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--test-per-task", type=int, default=40, help="Held-out items per pool task.")
    parser.add_argument("--benchmark-size", type=int, default=200, help="MMLU + BBH questions, half each.")
    parser.add_argument("--pool-fraction", type=float, default=1 / 12,
                        help="Share of every task's remaining rows that goes into the pool.")
    parser.add_argument("--tasks", default=None, help="Only these pool tasks (comma-separated; a smoke test).")
    parser.add_argument("--coslow-prompts", type=int, default=96,
                        help="Efficiency arm: spare prompts per task answered for CoS-Low's least confident 32.")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a CPU with bf16 instructions), fp32, bf16.")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plan-only", action="store_true", help="Write OUT/plan.json (and the cost) and stop.")
    parser.add_argument("--report-only", action="store_true", help="Rebuild OUT/report.md and report.json only.")
    args = parser.parse_args(argv)
    if args.report_only:
        print(report_markdown(write_report(args.out)))
        return
    command = shlex.join(["python", "bench/study_budget_v2.py", *(sys.argv[1:] if argv is None else argv)])

    import torch

    from tunewise.model.load import load_model

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    config = FinetuneConfig()
    arms = args.arms.split(",")
    tokenizer = load_model(args.model, dtype=args.dtype).tokenizer
    assembly, test, document = build_plan(args, tokenizer, config)
    args.out.mkdir(parents=True, exist_ok=True)
    write_plan(args.out, document, command)
    write_json(args.out / POOL_TASKS_FILE, {example.id: example.task for example in assembly.pool})
    print(f"pool {len(assembly.pool)} {document['pool']['per_task']}; test {len(test)}; "
          f"{len(document['t0_left_out'])} T0 tasks left out (plan.json says why)", flush=True)
    for row in document["projected_cpu_hours"]:
        print(f"  {row['pass']}: {row['runs']} runs, projected {row['total_h']:.2f} CPU-h "
              f"({row['train_h']:.2f} training, {row['eval_h']:.2f} evaluation)", flush=True)
    if args.plan_only:
        return
    run_passes(args, assembly, test, config, arms)
    print(report_markdown(write_report(args.out)))


if __name__ == "__main__":
    main()
