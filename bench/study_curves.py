"""Study 1, reduced for CPU: measured learning curves and CoS-Low on 20+ short-answer tasks, and
the SmolLM2 calibration fitted from them.

Per task (BBH tasks, single T0 classification templates, BoolQ, ARC-Easy/Challenge, grouped MMLU
subjects) the examples are shuffled with a seed into a held-out test set and a training pool. Then:

1. a sweep (``run_sweep``, strategy ``random``, one seed) measures zero-shot and the fine-tuned
   score at each budget: the learning curve, and its AUC on the study's grid with N = its largest
   budget, normalised by paper A's released human score where it has one
   (``tunewise.efficiency.ceilings``) and by ``--target-ceiling`` (1.0) elsewhere;
2. CoS-Low from the same pool: the model answers a seeded sample of the pool's prompts greedily,
   32 examples are drawn from the least confident (10 % when at least 320 prompts were answered,
   else the 32 least confident), and their gold answers stand in for a person's labels.

When every task is done, ``OUT/measured.json`` ({task, coslow, curve}) goes to
``tunewise calibrate`` (leave-one-task-out error against predicting the mean AUC), and the script
writes ``OUT/calibration.json`` with how it was made, ``OUT/predicted_vs_measured.png`` and
``OUT/table.md``. Rerun the same command to resume: every finished fine-tune, evaluation and
CoS-Low is a file under ``OUT/tasks/<task>/`` and the confidence scores are cached.

    .venv/bin/python bench/study_curves.py --out bench/out/study_curves
    .venv/bin/python bench/study_curves.py --out bench/out/study_curves --ship   # also writes the packaged file
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import require_data, with_choices  # noqa: E402

from tunewise.efficiency.coslow import DEFAULT_FRACTION, DEFAULT_K, coslow, lowest_confidence_prompts, minimum_pool_size  # noqa: E402
from tunewise.efficiency.ceilings import human_ceiling  # noqa: E402
from tunewise.efficiency.curve import curve_auc  # noqa: E402
from tunewise.errors import TunewiseError  # noqa: E402
from tunewise.io import write_json  # noqa: E402
from tunewise.training.evaluate import CHOICE, choice_sets  # noqa: E402
from tunewise.training.finetune import FinetuneConfig  # noqa: E402
from tunewise.model.load import load_model  # noqa: E402
from tunewise.data.pool import parse_record  # noqa: E402
from tunewise.training.sweep import BASELINE, run_sweep  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED_CALIBRATION = REPOSITORY / "src" / "tunewise" / "efficiency" / "calibration_smollm2.json"

# Short inputs and short answers, so that a fine-tune on a shared CPU core takes a minute or two.
BBH_TASKS = ("boolean_expressions", "sports_understanding", "object_counting", "multistep_arithmetic_two",
             "hyperbaton", "web_of_lies", "navigate", "ruin_names", "movie_recommendation", "snarks",
             "dyck_languages")
# One template per T0 task keeps one answer format per task; these have two or more answers in
# the sample (some T0 template files hold a single label only).
T0_TEMPLATES = {"qqp": "glue_qqp_answer", "qasc": "qasc_is_correct_1", "paws": "paws_labeled_final_PAWS_ANLI_GPT3",
                "mrpc": "glue_mrpc_same_thing", "quarel": "quarel_choose_between"}
LONGEST = ("mmlu_math",)
ANSWER_MARGIN = 4
LLM_ADAPTERS = {"boolq": "boolq", "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
MMLU_GROUPS = {"mmlu_social": ("high_school_geography", "high_school_government_and_politics",
                               "high_school_psychology", "sociology"),
               "mmlu_math": ("elementary_mathematics", "high_school_mathematics", "high_school_statistics")}


def _examples(records: list[dict]):
    seen, examples = set(), []
    for record in records:
        example = parse_record(record, "task")
        if example.id not in seen:
            seen.add(example.id)
            examples.append(example)
    return examples


def bbh_task(task: str, bbh_name: str):
    data = json.loads(require_data("bbh", "tasks", f"{bbh_name}.json").read_text())
    return _examples([{"question": e["input"], "answer": e["target"], "task": task} for e in data["examples"]])


def t0_template(task: str, template: str):
    path = require_data("t0_train_50k", "data_per_template", f"{template}.jsonl")
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            completion = record["completion"].replace("<|endoftext|>", "").strip()
            if completion:
                records.append({"prompt": record["prompt"], "completion": completion, "task": task})
    return _examples(records)


def llm_adapters(task: str, folder: str):
    """The training split, answered with the bare label ('true', 'answer2') rather than a sentence."""
    data = json.loads(require_data("llm_adapters", "dataset", folder, "train.json").read_text())
    return _examples([{"instruction": row["instruction"], "input": row["input"], "output": row["answer"], "task": task}
                      for row in data])


def mmlu_group(task: str, subjects: tuple[str, ...]):
    records = []
    for subject in subjects:
        with require_data("mmlu", "test", f"{subject}_test.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                choices = "\n".join(f"({letter}) {row[f'choice{i}']}" for i, letter in enumerate("ABCD"))
                records.append({"question": f"{row['question']}\n{choices}\nAnswer with the letter of the correct choice.",
                                "answer": f"({'ABCD'[int(row['answer'])]})", "task": task})
    return _examples(records)


def task_loaders() -> dict:
    """Task name → a function returning its examples, interleaved by source so that a run cut
    short still covers every kind of task."""
    sources = [
        [(f"bbh_{name}", lambda name=name: bbh_task(f"bbh_{name}", name)) for name in BBH_TASKS],
        [(f"t0_{name}", lambda name=name, template=template: t0_template(f"t0_{name}", template))
         for name, template in T0_TEMPLATES.items()],
        [(name, lambda name=name, folder=folder: llm_adapters(name, folder)) for name, folder in LLM_ADAPTERS.items()]
        + [(name, lambda name=name, subjects=subjects: mmlu_group(name, subjects))
           for name, subjects in MMLU_GROUPS.items()],
    ]
    ordered = []
    while any(sources):
        for source in sources:
            if source:
                ordered.append(source.pop(0))
    # The longest prompts (about 130 tokens, twice the median) cost the most to fine-tune: last.
    ordered.sort(key=lambda item: item[0] in LONGEST)
    return dict(ordered)


def split_task(examples, test_size: int, pool_cap: int, seed: int):
    """Shuffle with ``seed``: the first ``test_size`` are the test set, up to ``pool_cap`` of the
    rest the training pool."""
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    return examples[test_size:test_size + pool_cap], examples[:test_size]


def measure_coslow(pool, model_name: str, prompts: int, seed: int) -> dict:
    """CoS-Low of a labelled pool: confidence on a seeded sample of ``prompts`` of its prompts,
    then the gradient similarity of 32 drawn from the least confident (gold answers as labels)."""
    from tunewise.model.hf import HFBackend
    from tunewise.indicators.score import score_pool

    answered = list(pool)
    random.Random(seed).shuffle(answered)
    answered = answered[:prompts]
    loaded = load_model(model_name, dtype="fp32")
    started = time.perf_counter()
    confidence = score_pool(answered, HFBackend(loaded), ["confidence"])["confidence"].to_numpy()
    scoring_seconds = time.perf_counter() - started
    small = len(answered) < minimum_pool_size()
    chosen = lowest_confidence_prompts(confidence, k=DEFAULT_K, seed=seed, allow_small_pool=small)
    labelled = [answered[i] for i in chosen]
    result = coslow(loaded.model, loaded.tokenizer, [list(e.prompt) for e in labelled],
                    [e.response for e in labelled], seed=seed)
    return {
        "coslow": result["coslow"],
        "k": result["n"],
        "prompts_answered": len(answered),
        "sampled_from": "the 32 least confident" if small else f"the least confident {DEFAULT_FRACTION:.0%}",
        "below_design_pool": small,
        "mean_confidence": float(confidence.mean()),
        "labelled_mean_confidence": float(confidence[chosen].mean()),
        "examples": [e.id for e in labelled],
        "model_fingerprint": loaded.fingerprint,
        "seed": seed,
        "confidence_seconds": scoring_seconds,
        "gradient_seconds": result["seconds"],
    }


def answer_length(examples, tokenizer) -> int:
    """Greedy answers get the task's longest gold answer plus a few tokens: enough for every correct
    answer and its end, and far cheaper on a CPU than the evaluator's default margin of 16."""
    return max(len(tokenizer(e.response, add_special_tokens=False)["input_ids"]) for e in examples) + ANSWER_MARGIN


def study_task(name, load, args, config, tokenizer) -> dict | None:
    """Sweep and CoS-Low of one task (each skipped when already on disk); its measured entry, or
    None for a task the ``choice`` metric cannot score (no option list and too many labels)."""
    folder = args.out / "tasks" / name
    pool, test = split_task(load(), args.test_size, args.pool_cap, args.split_seed)
    if args.metric == CHOICE:
        labelled = with_choices(pool + test)
        pool, test = labelled[:len(pool)], labelled[len(pool):]
        try:
            choice_sets(test)
        except TunewiseError as error:
            print(f"  [{name}] skipped: {error}", flush=True)
            return None
    log = lambda done, total, label: print(f"  [{name} {done}/{total}] {label}", flush=True)  # noqa: E731
    max_new_tokens = args.max_new_tokens or answer_length(pool + test, tokenizer)
    summary = run_sweep(pool, test, args.budgets, [BASELINE], args.seeds, args.model, folder / "sweep", config,
                        metric=args.metric, max_new_tokens=max_new_tokens, progress=log)
    coslow_path = folder / "coslow.json"
    if not coslow_path.exists():
        print(f"  [{name}] CoS-Low", flush=True)
        write_json(coslow_path, measure_coslow(pool, args.model, args.confidence_prompts, args.split_seed))
    measured_coslow = json.loads(coslow_path.read_text())
    # The sweep folder may hold other budgets from earlier runs; the curve is this study's grid.
    # One curve per seed: paper A's AUC takes each seed's envelope before the mean.
    entry = summary["strategies"][BASELINE]
    curve = entry["curve"]
    curve = {"0": summary["zero_shot"]["score"], **{str(b): curve[str(b)] for b in args.budgets}}
    curves = [{"0": summary["zero_shot"]["score"], **{str(b): entry["per_seed"][str(b)][str(seed)] for b in args.budgets}}
              for seed in args.seeds]
    # Paper A normalises by max(human score, best score); a task it has no human score for gets
    # the stated target (every task here has one right answer, so 1.0 is "all right").
    known = human_ceiling(name)
    ceiling, ceiling_source = (known.score, known.describe()) if known else (args.target_ceiling, "stated target")
    try:
        auc = curve_auc([{int(b): s for b, s in seed.items()} for seed in curves], ceiling=ceiling,
                        max_budget=max(args.budgets), grid=args.budgets)
    except Exception as error:  # a flat curve has no AUC; it is listed and left out of the fit
        auc, note = None, str(error)
    else:
        note = None
    return {"task": name, "coslow": measured_coslow["coslow"], "curve": curve, "curves": curves, "auc": auc,
            "ceiling": ceiling, "ceiling_source": ceiling_source, "note": note,
            "pool": len(pool), "test": len(test), "max_new_tokens": max_new_tokens, "coslow_details": {k: v for k, v in measured_coslow.items()
                                                                      if k != "examples"}}


def calibrate_measured(args, entries: list[dict], command: str) -> dict:
    """``tunewise calibrate`` on the tasks with an AUC; the calibration file gains how it was made."""
    fitted = [e for e in entries if e["auc"] is not None]
    measured_path = args.out / "measured.json"
    fingerprints = {e["coslow_details"]["model_fingerprint"] for e in entries}
    write_json(measured_path, {"model": args.model, "model_fingerprint": fingerprints.pop() if len(fingerprints) == 1 else None,
                       "tasks": [{"task": e["task"], "coslow": e["coslow"], "curves": e["curves"],
                                  "ceiling": e["ceiling"]} for e in fitted]})
    calibration_path = args.out / "calibration.json"
    grid = ",".join(map(str, args.budgets))
    calibrate_command = [str(REPOSITORY / ".venv" / "bin" / "tunewise"), "calibrate", str(measured_path),
                         "-o", str(calibration_path), "--max-budget", str(max(args.budgets)), "--grid", grid,
                         "--schedule-start", str(min(args.budgets)), "--json"]
    result = subprocess.run(calibrate_command, check=True, capture_output=True, text=True)
    summary = json.loads(result.stdout)
    calibration = json.loads(calibration_path.read_text())
    calibration["measured_curves"] = {e["task"]: e["curve"] for e in fitted}
    calibration["how_it_was_made"] = {
        "command": command,
        "calibrate_command": shlex.join(["tunewise", *calibrate_command[1:-1]]),
        "study": "bench/study_curves.py (issue 7, study 1), reduced CPU configuration",
        "machine": "2-core CPU, no GPU, shared with parallel jobs; one torch thread",
        "date": datetime.date.today().isoformat(),
        "grid": args.budgets,
        "max_budget": max(args.budgets),
        "seeds": args.seeds,
        "split_seed": args.split_seed,
        "test_size": args.test_size,
        "pool_cap": args.pool_cap,
        "confidence_prompts": args.confidence_prompts,
        "finetune": {k: v for k, v in vars(FinetuneConfig(epochs=args.epochs)).items() if k != "seed"},
        "selection": "random (one seed), exact match / multiple-choice letter on greedy answers",
        "answer_tokens": f"per task: longest gold answer + {ANSWER_MARGIN}",
        "tasks": [e["task"] for e in fitted],
        "tasks_without_auc": [{"task": e["task"], "why": e["note"]} for e in entries if e["auc"] is None],
        "reduced": ("budgets up to N = %d instead of DESIGN's 50..5000; %d test examples per task; CoS-Low's "
                    "confidence on at most %d prompts of each pool (DESIGN: >= 320, lowest 10 %%)"
                    % (max(args.budgets), args.test_size, args.confidence_prompts)),
    }
    write_json(calibration_path, calibration)
    return {"summary": summary, "calibration": calibration}


def robustness(entries: list[dict], min_gain: float) -> dict:
    """How far CoS-Low tracks AUC at all: the rank and linear correlations over the fitted tasks,
    and the same calibration restricted to tasks whose best score beats zero-shot by ``min_gain``
    (a curve that gains one or two test answers is normalised into a full-height step by noise)."""
    from scipy import stats

    from tunewise.efficiency.predict import calibrate

    fitted = [e for e in entries if e["auc"] is not None]
    coslows, aucs = [e["coslow"] for e in fitted], [e["auc"] for e in fitted]
    moving = [e for e in fitted if max(e["curve"].values()) - e["curve"]["0"] >= min_gain]
    result = {"tasks": len(fitted), "pearson": stats.pearsonr(coslows, aucs)[0],
              "spearman": stats.spearmanr(coslows, aucs)[0], "min_gain": min_gain,
              "moving_tasks": [e["task"] for e in moving]}
    if len(moving) >= 3:
        fit = calibrate([(e["task"], e["coslow"], e["auc"]) for e in moving])
        result.update(moving_slope=fit.coefficients.slope, moving_intercept=fit.coefficients.intercept,
                      moving_loto_mae=fit.loto_mae, moving_loto_relative_error_percent=fit.loto_relative_error,
                      moving_mean_predictor_mae=fit.mean_mae,
                      moving_mean_predictor_relative_error_percent=fit.mean_relative_error)
    return result


def plot_predicted_vs_measured(calibration: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = calibration["tasks"]
    measured = [f["measured_auc"] for f in fits]
    predicted = [f["loto_predicted_auc"] for f in fits]
    figure, axes = plt.subplots(figsize=(5.5, 5.2))
    try:
        axes.scatter(measured, predicted, label="CoS-Low fit, task held out")
        axes.scatter(measured, [f["loto_mean_auc"] for f in fits], marker="x", color="grey",
                     label="mean AUC of the other tasks")
        for fit in fits:
            axes.annotate(fit["task"].removeprefix("bbh_"), (fit["measured_auc"], fit["loto_predicted_auc"]),
                          fontsize=6, alpha=0.7)
        low, high = min(measured + predicted) - 0.05, max(measured + predicted) + 0.05
        axes.plot([low, high], [low, high], color="black", linewidth=0.8, label="y = x")
        axes.set_xlabel("measured AUC")
        axes.set_ylabel("predicted AUC (leave-one-task-out)")
        axes.set_title(f"SmolLM2: AUC' = {calibration['slope']:.3f} · CoS-Low + {calibration['intercept']:.3f}\n"
                       f"LOTO MAE {calibration['loto_mae']:.3f}, mean predictor {calibration['mean_predictor_mae']:.3f}",
                       fontsize=9)
        axes.legend(fontsize="small", loc="upper left")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
    return path


def markdown_table(entries: list[dict], calibration: dict | None, budgets: list[int]) -> str:
    predicted = {f["task"]: f["loto_predicted_auc"] for f in calibration["tasks"]} if calibration else {}
    lines = ["| task | pool | CoS-Low (prompts answered) | zero-shot | " + " | ".join(f"n = {b}" for b in budgets)
             + " | measured AUC | LOTO-predicted AUC |",
             "|---|---:|---:|---:|" + "---:|" * len(budgets) + "---:|---:|"]
    for entry in entries:
        details = entry["coslow_details"]
        cells = [entry["task"], str(entry["pool"]), f"{entry['coslow']:.4f} ({details['prompts_answered']})",
                 f"{entry['curve']['0']:.3f}", *(f"{entry['curve'][str(b)]:.3f}" for b in budgets),
                 "flat: none" if entry["auc"] is None else f"{entry['auc']:.3f}",
                 f"{predicted[entry['task']]:.3f}" if entry["task"] in predicted else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_curves"))
    parser.add_argument("--tasks", default=None, help="Comma-separated task names (default: all, in study order).")
    parser.add_argument("--max-tasks", type=int, default=None, help="Only the first this many tasks.")
    parser.add_argument("--budgets", default="2,4,8,16")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--test-size", type=int, default=40)
    parser.add_argument("--pool-cap", type=int, default=400, help="At most this many training examples per task.")
    parser.add_argument("--confidence-prompts", type=int, default=96,
                        help="Pool prompts the model answers for CoS-Low's least-confident sample.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"Evaluation answer length (default: the task's longest gold answer + {ANSWER_MARGIN}).")
    parser.add_argument("--metric", default="auto",
                        help="evaluate's metric; 'choice' scores multiple choice by log-likelihood (tasks it "
                             "cannot score are skipped). The shipped calibration was measured with 'auto'.")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--target-ceiling", type=float, default=1.0,
                        help="Ceiling of a task paper A has no human score for (its stated target).")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-calibrate", action="store_true", help="Measure only; fit nothing.")
    parser.add_argument("--min-gain", type=float, default=0.1,
                        help="The robustness fit keeps tasks whose best score beats zero-shot by this much.")
    parser.add_argument("--ship", action="store_true", help=f"Copy the calibration to {SHIPPED_CALIBRATION}.")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/study_curves.py", *sys.argv[1:]])

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.budgets = sorted(int(b) for b in args.budgets.split(","))
    args.seeds = [int(s) for s in args.seeds.split(",")]
    loaders = task_loaders()
    names = args.tasks.split(",") if args.tasks else list(loaders)
    names = names[:args.max_tasks] if args.max_tasks else names
    config = FinetuneConfig(epochs=args.epochs)
    tokenizer = load_model(args.model).tokenizer

    entries = []
    for number, name in enumerate(names, start=1):
        started = time.perf_counter()
        print(f"[{number}/{len(names)}] {name}", flush=True)
        entry = study_task(name, loaders[name], args, config, tokenizer)
        if entry is None:
            continue
        entries.append(entry)
        print(f"[{number}/{len(names)}] {name}: AUC {entries[-1]['auc']}, CoS-Low {entries[-1]['coslow']:.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    write_json(args.out / "entries.json", entries)

    calibration = None
    if not args.no_calibrate and sum(e["auc"] is not None for e in entries) >= 3:
        made = calibrate_measured(args, entries, command)
        calibration = made["calibration"]
        plot_predicted_vs_measured(calibration, args.out / "predicted_vs_measured.png")
        summary = {k: made["summary"][k] for k in ("slope", "intercept", "tasks", "loto_mae",
                                                   "loto_relative_error_percent", "mean_predictor_mae",
                                                   "mean_predictor_relative_error_percent")}
        summary["robustness"] = robustness(entries, args.min_gain)
        write_json(args.out / "summary.json", summary)
        print(json.dumps(summary, indent=1))
        if args.ship:
            SHIPPED_CALIBRATION.parent.mkdir(parents=True, exist_ok=True)
            shipped = {**calibration, "measured": "bench/out/study_curves/measured.json",
                       "source": "tunewise shipped calibration for smollm2 (bench/study_curves.py)",
                       "caveat": (f"fitted on {summary['tasks']} tasks of a reduced CPU grid (N = {max(args.budgets)}, "
                                  f"{len(args.seeds)} seed(s), {args.test_size} test items); leave-one-task-out "
                                  f"absolute error {100 * summary['loto_mae']:.1f} AUC points against "
                                  f"{100 * summary['mean_predictor_mae']:.1f} for predicting the mean AUC (paper A: "
                                  "8.6 against 12.5); Pearson r(CoS-Low, AUC) = "
                                  f"{summary['robustness']['pearson']:.2f}. Treat its predictions as rough.")}
            SHIPPED_CALIBRATION.write_text(json.dumps(shipped, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(entries, calibration, args.budgets)
    (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
