"""Study 1 of evidence v2 (issue 14): learning curves and CoS-Low, paper A's way, on CPU.

Per task (8 BBH tasks, 4 T0 tasks over all their classification templates, BoolQ, ARC-Easy,
ARC-Challenge, two grouped MMLU subjects; BBH object_counting, multistep_arithmetic_two and
dyck_languages and T0 quarel have no option list and too many labels, and are skipped with a
message) the examples are shuffled with ``--split-seed`` into a held-out test set
(``--test-size``, 200; a task with fewer rows keeps ``--min-pool`` of them for training: BBH has
250 rows, so 200 test / 50 pool, snarks 128 / 50) and a training pool (at most ``--pool-cap``).
Then, per task:

- **zero-shot** and the **fine-tuned** ``choice`` accuracy (each choice scored by its
  log-likelihood after the prompt, nothing generated) at every budget the pool allows: ``--budgets``
  (16, 64, 256) on tasks whose pool holds the largest budget and its validation split, else
  ``--small-budgets`` (16, 32) or what fits (``run_sweep``, strategy ``random``, ``--seeds``);
- the **predictors** paper A compares, from the same pool: the model answers ``--confidence-prompts``
  (320) of its prompts greedily; CoS-Low on 32 drawn from the least confident 10 %, CoS-Rand on 32
  drawn at random, the mean gradient norm of the low-confidence sample, and the mean confidence.

Fine-tuning is paper A's recipe (``FinetuneConfig.from_profile("paper-a")``: fixed steps at every
budget, cosine decay after 10 % warmup, validation loss on a held-out split of the pool's unselected
examples capped at 20 % of the budget, early stopping, best checkpoint restored), scaled to a CPU as
STUDIES.md plans it: 64 steps of 4 examples (paper A: 500 of 32), validation every 16 steps
(paper A: every 4) and patience 2 (10). Two departures, both forced: LoRA (rank 8, learning rate
2e-4) instead of full fine-tuning at 1e-5, because ``--dtype auto`` holds the weights in bf16 on this
CPU and an Adam step of 1e-5 is below half a bf16 step for every weight above 0.004 in size (it
rounds away), whereas a LoRA adapter is float32; and the smaller step count.

Order: the run is cut off long before the grid ends, so the most informative cells come first:
pass 1 gives every task its zero-shot score, its predictors and the smallest budget (one point of
the curve, enough for a first AUC on a common axis N = 16); pass 2 adds the second budget to every
task, pass 3 the third. Every finished evaluation, fine-tune and predictor measurement is a file
under ``OUT/tasks/<task>/`` and is never redone, so rerunning the same command resumes.
``OUT/plan.json`` lists every planned cell; ``bench/study_curves_report.py OUT`` reports whatever
has finished (curves, AUCs, the leave-one-task-out errors of each predictor).

    bench/run_study.sh study_curves_v2 COMMIT -- python bench/study_curves.py --out bench/out/study_curves_v2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import random
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import _examples, require_data, t0, with_choices

from tunewise.efficiency.ceilings import human_ceiling
from tunewise.efficiency.coslow import (
    DEFAULT_FRACTION,
    DEFAULT_K,
    coslow,
    lowest_confidence_prompts,
    minimum_pool_size,
    random_prompts,
)
from tunewise.errors import TunewiseError
from tunewise.io import write_json
from tunewise.model.load import load_model
from tunewise.training.evaluate import CHOICE, choice_sets
from tunewise.training.finetune import FinetuneConfig
from tunewise.training.sweep import (
    BASELINE,
    RUNS_FOLDER,
    ZERO_SHOT,
    run_file_name,
    run_sweep,
)

# Short inputs and short answers, so that a fine-tune on a shared CPU core takes a few minutes.
BBH_TASKS = ("boolean_expressions", "sports_understanding", "object_counting", "multistep_arithmetic_two",
             "hyperbaton", "web_of_lies", "navigate", "ruin_names", "movie_recommendation", "snarks",
             "dyck_languages")
# T0 task → its name in t0_train_50k/tasks.tsv; every classification template of it is pooled.
T0_TASKS = {"qqp": "glue_qqp", "qasc": "qasc", "paws": "paws_labeled_final", "mrpc": "glue_mrpc",
            "quarel": "quarel"}
MAX_T0_LABELS = 10
LONGEST = ("mmlu_math",)
LLM_ADAPTERS = {"boolq": "boolq", "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
MMLU_GROUPS = {"mmlu_social": ("high_school_geography", "high_school_government_and_politics",
                               "high_school_psychology", "sociology"),
               "mmlu_math": ("elementary_mathematics", "high_school_mathematics", "high_school_statistics")}

# Paper A's profile scaled to a CPU (see the module docstring for the two departures and why).
PROFILE = "paper-a"
CPU_PROFILE = {"method": "lora", "learning_rate": 2e-4, "max_steps": 64, "batch_size": 2,
               "gradient_accumulation_steps": 2, "eval_steps": 16, "early_stopping_patience": 2}
PLAN_FILE = "plan.json"
PREDICTORS_FILE = "coslow.json"


def bbh_task(task: str, bbh_name: str):
    data = json.loads(require_data("bbh", "tasks", f"{bbh_name}.json").read_text())
    return _examples([{"question": e["input"], "answer": e["target"], "task": task} for e in data["examples"]])


def t0_task(task: str, t0_name: str):
    """Every classification template of a T0 task (2 to ``MAX_T0_LABELS`` distinct answers in its
    file), pooled: 200 rows per template, so 1,200 for qqp and mrpc, 2,200 for paws, 400 for qasc.
    Free-text templates (a generated paraphrase, an answer spelled out) have no label set the
    ``choice`` metric can score and are left out; each kept example keeps its ``template``, whose
    label set ``with_choices`` gives it."""
    examples = t0(tasks=[t0_name])
    labels: dict[str, set] = {}
    for example in examples:
        labels.setdefault(example.metadata["template"], set()).add(example.response)
    kept = {template for template, answers in labels.items() if 2 <= len(answers) <= MAX_T0_LABELS}
    return [dataclasses.replace(e, task=task) for e in examples if e.metadata["template"] in kept]


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
        [(f"t0_{name}", lambda name=name, t0_name=t0_name: t0_task(f"t0_{name}", t0_name))
         for name, t0_name in T0_TASKS.items()],
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


def measure_coslow(pool, model_name: str, prompts: int, seed: int, *, dtype: str = "fp32", loaded=None,
                   random_sample: bool = False) -> dict:
    """CoS-Low of a labelled pool, and with ``random_sample`` the other predictors paper A compares
    (as ``tunewise coslow`` writes them): confidence on a seeded sample of ``prompts`` of the pool's
    prompts; CoS-Low on 32 drawn from the least confident (10 % when at least 320 were answered, else
    the 32 least confident) with the gold answers as labels; CoS-Rand on 32 drawn at random from the
    same prompts; ``grad_norm`` (the low-confidence sample's mean gradient norm) and
    ``mean_confidence``. ``loaded`` reuses a loaded model (else ``model_name`` is loaded in ``dtype``)."""
    import numpy as np

    from tunewise.indicators.score import score_pool
    from tunewise.model.hf import HFBackend

    answered = list(pool)
    random.Random(seed).shuffle(answered)
    answered = answered[:prompts]
    loaded = loaded or load_model(model_name, dtype=dtype)
    started = time.perf_counter()
    confidence = score_pool(answered, HFBackend(loaded), ["confidence"])["confidence"].to_numpy(dtype=np.float64)
    scoring_seconds = time.perf_counter() - started
    small = len(answered) < minimum_pool_size()
    samples = {"low": lowest_confidence_prompts(confidence, k=DEFAULT_K, seed=seed, allow_small_pool=small)}
    if random_sample:
        samples["random"] = random_prompts(len(answered), k=DEFAULT_K, seed=seed)
    results = {}
    for name, positions in samples.items():
        labelled = [answered[i] for i in positions]
        results[name] = coslow(loaded.model, loaded.tokenizer, [list(e.prompt) for e in labelled],
                               [e.response for e in labelled], seed=seed)
    low = samples["low"]
    finite = confidence[np.isfinite(confidence)]
    document = {
        "coslow": results["low"]["coslow"],
        "k": results["low"]["n"],
        "prompts_answered": len(answered),
        "sampled_from": "the 32 least confident" if small else f"the least confident {DEFAULT_FRACTION:.0%}",
        "below_design_pool": small,
        "mean_confidence": float(finite.mean()) if finite.size else None,
        "labelled_mean_confidence": float(confidence[low].mean()),
        "examples": [answered[i].id for i in low],
        "model_fingerprint": loaded.fingerprint,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "seed": seed,
        "confidence_seconds": scoring_seconds,
        "gradient_seconds": sum(result["seconds"] for result in results.values()),
    }
    if random_sample:
        document.update(coslow_random=results["random"]["coslow"], grad_norm=results["low"]["grad_norm"],
                        grad_norm_random=results["random"]["grad_norm"],
                        examples_random=[answered[i].id for i in samples["random"]])
    return document


@dataclasses.dataclass
class TaskPlan:
    """One task's split and planned cells (budgets ascending; seeds)."""

    name: str
    pool: list
    test: list
    budgets: list[int]
    seeds: list[int]
    ceiling: float
    ceiling_source: str
    choices: str

    def describe(self) -> dict:
        return {"task": self.name, "pool": len(self.pool), "test": len(self.test), "budgets": self.budgets,
                "seeds": self.seeds, "ceiling": self.ceiling, "ceiling_source": self.ceiling_source,
                "choices": self.choices}


def validation_size(budget: int, config: FinetuneConfig) -> int:
    """How many of the pool's unselected examples a run at ``budget`` holds out (run_sweep's cap)."""
    return max(1, int(config.validation_fraction * budget))


def task_budgets(pool_size: int, budgets: list[int], small_budgets: list[int], config: FinetuneConfig) -> list[int]:
    """The grid the pool allows: ``budgets`` when their largest and its validation split fit, else
    every budget of ``small_budgets`` and ``budgets`` that fits (BBH's 50-row pools: 16 and 32)."""
    def fits(budget: int) -> bool:
        return budget + validation_size(budget, config) <= pool_size

    if fits(max(budgets)):
        return list(budgets)
    return sorted({budget for budget in (*small_budgets, *budgets) if fits(budget)})


def plan_task(name: str, load, args, config: FinetuneConfig) -> TaskPlan | str:
    """The task's split and grid, or why it is skipped."""
    examples = load()
    if not examples:
        return "no examples (a T0 task keeps only its classification templates, with 2 to 10 answers)"
    if len(examples) < args.min_pool + 2:
        return f"{len(examples)} rows, too few for a test set and a pool of {args.min_pool}"
    test_size = min(args.test_size, len(examples) - args.min_pool)
    pool, test = split_task(examples, test_size, args.pool_cap, args.split_seed)
    if args.metric == CHOICE:
        labelled = with_choices(pool + test)
        pool, test = labelled[:len(pool)], labelled[len(pool):]
        try:
            _, sources = choice_sets(test)
        except TunewiseError as error:
            return str(error)
        choices = sources[name]
    else:
        choices = args.metric
    budgets = task_budgets(len(pool), args.budgets, args.small_budgets, config)
    if not budgets:
        return f"a pool of {len(pool)} holds no budget of {args.small_budgets} with its validation split"
    # Paper A normalises by max(human score, best score); a task it has no human score for gets
    # the stated target (every task here has one right answer, so 1.0 is "all right").
    known = human_ceiling(name)
    ceiling, source = (known.score, known.describe()) if known else (args.target_ceiling, "stated target")
    return TaskPlan(name, pool, test, budgets, args.seeds, ceiling, source, choices)


def missing_runs(plan: TaskPlan, budgets: list[int], folder: Path) -> list[str]:
    runs = folder / "sweep" / RUNS_FOLDER
    names = [f"{ZERO_SHOT}.json"] + [run_file_name(BASELINE, b, s) for s in plan.seeds for b in budgets]
    return [name for name in names if not (runs / name).exists()]


def run_pass(number: int, plans: list[TaskPlan], args, config: FinetuneConfig, loaded) -> None:
    """Pass ``number`` (0-based): every task's first ``number + 1`` budgets (and, in the first pass,
    its predictors), tasks in study order; what is on disk is skipped."""
    for plan in plans:
        if number >= len(plan.budgets):
            continue
        folder = args.out / "tasks" / plan.name
        started = time.perf_counter()
        if number == 0 and not (folder / PREDICTORS_FILE).exists():
            print(f"[pass {number + 1}] {plan.name}: predictors (confidence on {args.confidence_prompts} prompts, "
                  "CoS-Low, CoS-Rand)", flush=True)
            write_json(folder / PREDICTORS_FILE,
                       measure_coslow(plan.pool, args.model, args.confidence_prompts, args.split_seed,
                                      loaded=loaded, random_sample=True))
        budgets = plan.budgets[:number + 1]
        if missing_runs(plan, budgets, folder):
            def log(done, total, label, task=plan.name):
                print(f"  [pass {number + 1}] {task} {done}/{total}: {label}", flush=True)

            run_sweep(plan.pool, plan.test, budgets, [BASELINE], plan.seeds, args.model, folder / "sweep", config,
                      dtype=args.dtype, metric=args.metric, progress=log)
        print(f"[pass {number + 1}] {plan.name}: budgets {budgets} done ({time.perf_counter() - started:.0f} s)",
              flush=True)


def write_plan(args, plans: list[TaskPlan], skipped: dict[str, str], config: FinetuneConfig, command: str) -> None:
    """``OUT/plan.json``: every planned cell (merged with the tasks earlier invocations planned), the
    skipped tasks and the settings; refuses settings that differ from the folder's."""
    settings = {"model": args.model, "metric": args.metric, "dtype": args.dtype, "split_seed": args.split_seed,
                "test_size": args.test_size, "min_pool": args.min_pool, "pool_cap": args.pool_cap,
                "confidence_prompts": args.confidence_prompts, "target_ceiling": args.target_ceiling,
                "profile": PROFILE, "profile_overrides": CPU_PROFILE,
                "finetune": {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}}
    path = args.out / PLAN_FILE
    document = json.loads(path.read_text()) if path.exists() else {"tasks": {}, "skipped": {}, "commands": []}
    if document.get("settings", settings) != settings:
        raise SystemExit(f"{path} was planned with other settings: {document['settings']}; use another --out")
    document["settings"] = settings
    document["tasks"].update({plan.name: plan.describe() for plan in plans})
    document["skipped"].update(skipped)
    document["order"] = list(dict.fromkeys([*document.get("order", []), *(plan.name for plan in plans)]))
    if command not in document["commands"]:
        document["commands"].append(command)
    write_json(path, document)


def int_list(text: str) -> list[int]:
    return sorted(int(value) for value in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/study_curves_v2"))
    parser.add_argument("--tasks", default=None, help="Comma-separated task names (default: all, in study order).")
    parser.add_argument("--max-tasks", type=int, default=None, help="Only the first this many tasks.")
    parser.add_argument("--budgets", type=int_list, default=[16, 64, 256],
                        help="Budgets of a task whose pool holds the largest one and its validation split.")
    parser.add_argument("--small-budgets", type=int_list, default=[16, 32],
                        help="Budgets of a task with a smaller pool (those that fit).")
    parser.add_argument("--seeds", type=int_list, default=[0])
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--min-pool", type=int, default=50,
                        help="A task with fewer than test-size + this many rows keeps this many for its pool.")
    parser.add_argument("--pool-cap", type=int, default=400, help="At most this many training examples per task.")
    parser.add_argument("--confidence-prompts", type=int, default=minimum_pool_size(),
                        help="Pool prompts the model answers for CoS-Low's least-confident sample.")
    parser.add_argument("--max-steps", type=int, default=CPU_PROFILE["max_steps"],
                        help="Optimizer steps of every fine-tune (paper A: 500; a smoke test: a few).")
    parser.add_argument("--metric", default=CHOICE,
                        help="evaluate's metric; 'choice' scores multiple choice by log-likelihood (tasks it "
                             "cannot score are skipped).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a CPU with bf16 instructions), fp32, bf16.")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--target-ceiling", type=float, default=1.0,
                        help="Ceiling of a task paper A has no human score for (its stated target).")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-report", action="store_true", help="Skip the report at the end.")
    parser.add_argument("--plan-only", action="store_true", help="Write OUT/plan.json and stop (no model work).")
    args = parser.parse_args()
    command = shlex.join(["python", "bench/study_curves.py", *sys.argv[1:]])

    import torch

    # On a shared 2-core machine one thread is several times faster than two.
    torch.set_num_threads(args.threads)
    config = FinetuneConfig.from_profile(PROFILE, **{**CPU_PROFILE, "max_steps": args.max_steps,
                                                     "eval_steps": min(CPU_PROFILE["eval_steps"], args.max_steps)})
    loaders = task_loaders()
    names = args.tasks.split(",") if args.tasks else list(loaders)
    names = names[:args.max_tasks] if args.max_tasks else names
    unknown = [name for name in names if name not in loaders]
    if unknown:
        raise SystemExit(f"unknown task(s): {', '.join(unknown)}; known: {', '.join(loaders)}")
    plans, skipped = [], {}
    for name in names:
        planned = plan_task(name, loaders[name], args, config)
        if isinstance(planned, str):
            print(f"{name}: skipped: {planned}", flush=True)
            skipped[name] = planned
        else:
            plans.append(planned)
            print(f"{name}: {len(planned.test)} test, pool {len(planned.pool)}, budgets {planned.budgets}, "
                  f"choices from the {planned.choices}, ceiling {planned.ceiling} ({planned.ceiling_source})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_plan(args, plans, skipped, config, command)
    if args.plan_only:
        return

    loaded = load_model(args.model, dtype=args.dtype)
    for number in range(max((len(plan.budgets) for plan in plans), default=0)):
        run_pass(number, plans, args, config, loaded)
    if not args.no_report:
        import study_curves_report

        study_curves_report.main([str(args.out)])


if __name__ == "__main__":
    main()
