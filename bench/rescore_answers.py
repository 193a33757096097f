"""Issue 18's evidence: how many verdicts of the existing studies change with the new answer extraction.

The studies kept per-task scores but not their per-sample answers, so this script regenerates the
answers of their BBH and MMLU test sets (greedy, the same prompts, token limits and, for
fine-tuned runs, the same picks and fine-tuning config, seeded), then judges every answer twice:
with the extraction of commit 100c935 (the code the studies ran; read from git, not copied) and
with :mod:`tunewise.training.metrics`. Each regenerated run also recomputes its score the old way
and sets it beside the score the study stored, which shows whether the regeneration reproduced
the study's answers.

    TUNEWISE_THREADS=1 .venv/bin/python bench/rescore_answers.py --out bench/out/rescore_answers \\
        --studies curves,budget --runs zero_shot          # then --runs all to add the fine-tuned runs

Writes ``OUT/<study>/<task or part>/<run>.jsonl`` (one sample per line: prediction, old and new
extraction and verdict) and ``OUT/summary.json``; rerunning skips the runs already written, and
``--rejudge`` judges the stored answers again with the current extraction without generating.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tunewise.io import write_json  # noqa: E402
from tunewise.training.evaluate import evaluate  # noqa: E402
from tunewise.training.finetune import FinetuneConfig, finetune  # noqa: E402
from tunewise.training.metrics import detect_metric, extract_answer, is_correct  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
OLD_COMMIT = "100c935"  # the evaluator every existing study ran with
STUDY_CURVES_TASKS = ("bbh_boolean_expressions", "bbh_sports_understanding", "bbh_object_counting",
                      "bbh_multistep_arithmetic_two", "bbh_hyperbaton", "bbh_web_of_lies", "bbh_navigate",
                      "bbh_ruin_names", "bbh_movie_recommendation", "bbh_snarks", "bbh_dyck_languages",
                      "mmlu_social", "mmlu_math")


def old_metrics() -> dict:
    """``detect_metric`` and ``is_correct`` as commit 100c935 defined them, executed from its source."""
    source = subprocess.run(["git", "-C", str(REPOSITORY), "show", f"{OLD_COMMIT}:src/tunewise/evaluate.py"],
                            check=True, capture_output=True, text=True).stdout
    start, end = source.index("METRICS = ("), source.index("def stop_token_ids")
    namespace: dict = {}
    exec("import re\nfrom decimal import Decimal, InvalidOperation\nfrom typing import Sequence\n"  # noqa: S102
         "from tunewise.errors import TunewiseError\n" + source[start:end], namespace)
    return {"detect_metric": namespace["detect_metric"], "is_correct": namespace["is_correct"],
            "extract_answer": namespace["extract_answer"]}


def rescore(loaded, model, examples, max_new_tokens, old) -> tuple[list[dict], dict]:
    """Generate answers with the current evaluator, then judge each the old and the new way."""
    started = time.perf_counter()
    results = evaluate(model, loaded.tokenizer, examples, metric="auto", max_new_tokens=max_new_tokens)
    old_metric = {task: old["detect_metric"]([e.response for e in examples if e.task == task])
                  for task in {e.task for e in examples}}
    samples = []
    for example, sample in zip(examples, results["samples"]):
        metric = old_metric[example.task]
        samples.append({
            "id": example.id, "task": example.task, "target": example.response, "prediction": sample["prediction"],
            "old_metric": metric, "old_extracted": old["extract_answer"](metric, sample["prediction"]),
            "old_correct": bool(old["is_correct"](metric, sample["prediction"], example.response)),
            "new_metric": results["config"]["metrics"][example.task], "new_extracted": sample["extracted"],
            "new_correct": bool(sample["correct"]),
            "new_extraction_old_metric_correct": bool(is_correct(metric, sample["prediction"], example.response)),
        })
    return samples, {"seconds": round(time.perf_counter() - started, 1)}


def summarise(samples: list[dict], header: dict) -> dict:
    """``header`` with the run's old and new scores and how many verdicts changed, each way."""
    return {**header, "n": len(samples), "old_scores": run_scores(samples, "old_correct"),
            "new_scores": run_scores(samples, "new_correct"),
            "changed": sum(s["old_correct"] != s["new_correct"] for s in samples),
            "wrong_to_right": sum(s["new_correct"] and not s["old_correct"] for s in samples),
            "right_to_wrong": sum(s["old_correct"] and not s["new_correct"] for s in samples)}


def rejudge(out: Path) -> None:
    """Judge the stored answers again with the current extraction (no generation)."""
    for path in sorted(out.rglob("*.jsonl")):
        samples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        metrics = {task: detect_metric([s["target"] for s in samples if s["task"] == task])
                   for task in {s["task"] for s in samples}}
        for sample in samples:
            metric = metrics[sample["task"]]
            sample.update(new_metric=metric,
                          new_extracted=extract_answer(metric, sample["prediction"], sample["target"]),
                          new_correct=is_correct(metric, sample["prediction"], sample["target"]),
                          new_extraction_old_metric_correct=is_correct(sample["old_metric"], sample["prediction"],
                                                                       sample["target"]))
        path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
        summary_path = path.with_suffix(".summary.json")
        summary_path.write_text(json.dumps(summarise(samples, json.loads(summary_path.read_text())), indent=1) + "\n")


def run_scores(samples: list[dict], key: str) -> dict[str, float]:
    """Per task, the mean of the samples' ``key`` verdicts."""
    tasks = dict.fromkeys(s["task"] for s in samples)
    return {task: sum(s[key] for s in samples if s["task"] == task) / sum(s["task"] == task for s in samples)
            for task in tasks}


def study_curves_runs(study: Path, runs: str):
    """(task, run name, test examples, max_new_tokens, stored run file, pool) of study 1's BBH/MMLU tasks."""
    import study_curves

    loaders = study_curves.task_loaders()
    for task in STUDY_CURVES_TASKS:
        pool, test = study_curves.split_task(loaders[task](), 40, 400, 0)
        sweep = study / "tasks" / task / "sweep"
        settings = json.loads((sweep / "sweep_config.json").read_text())
        names = ["zero_shot"] + ([p.stem for p in sorted((sweep / "runs").glob("random__*.json"))] if runs == "all"
                                 else [])
        for name in names:
            yield task, name, test, settings["max_new_tokens"], sweep / "runs" / f"{name}.json", pool, settings


def study_budget_runs(study: Path, runs: str):
    """The same for study 2's 20 MMLU/BBH questions (its T0 same-task part is not re-scored)."""
    import study_budget

    pool, test, _ = study_budget.build_study_data(1 / 80, 5, 20, 0)
    benchmark = [e for e in test if e.task in study_budget.BENCHMARK_TASKS]
    settings = json.loads((study / "sweep_config.json").read_text())
    names = ["zero_shot"] + ([p.stem for p in sorted((study / "runs").glob("*__b*__s*.json"))] if runs == "all"
                             else [])
    for name in names:
        yield "mmlu+bbh", name, benchmark, None, study / "runs" / f"{name}.json", pool, settings


def markdown_table(summaries: list[dict]) -> str:
    """Per study and task: runs re-scored, whether they reproduced the stored scores, answers
    judged, verdicts changed each way, and the mean score the old and the new way."""
    lines = ["| study | task | runs | reproduced | answers | changed | wrong → right | right → wrong "
             "| old mean | new mean |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for summary in summaries:
        groups.setdefault((summary["study"], summary["task"]), []).append(summary)
    for (study, task), runs in groups.items():
        reproduced = sum(all(abs(run["old_scores"][t] - run["stored_scores"][t]) < 1e-9 for t in run["old_scores"])
                         for run in runs)
        answers = sum(run["n"] for run in runs)

        def mean(key: str) -> float:
            return sum(run[key][t] * run["n"] / len(run[key]) for run in runs for t in run[key]) / answers

        lines.append(f"| {study} | {task} | {len(runs)} | {reproduced} | {answers} "
                     f"| {sum(run['changed'] for run in runs)} | {sum(run['wrong_to_right'] for run in runs)} "
                     f"| {sum(run['right_to_wrong'] for run in runs)} | {mean('old_scores'):.3f} "
                     f"| {mean('new_scores'):.3f} |")
    return "\n".join(lines) + "\n"


def study_difficulty_runs(study: Path, runs: str):
    """The same for study 4's BBH boolean_expressions grid (its GSM8K grid scored log-likelihood)."""
    import study_difficulty

    pool, test = study_difficulty.study_data("boolean_expressions", 300, 40, 0)
    settings = json.loads((study / "sweep_config.json").read_text())
    names = ["zero_shot"] + ([p.stem for p in sorted((study / "runs").glob("*__b*__s*.json"))] if runs == "all"
                             else [])
    for name in names:
        yield "bbh_boolean_expressions", name, test, None, study / "runs" / f"{name}.json", pool, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/rescore_answers"))
    parser.add_argument("--studies", default="curves,budget,difficulty")
    parser.add_argument("--runs", choices=("zero_shot", "all"), default="zero_shot")
    parser.add_argument("--rejudge", action="store_true",
                        help="Only judge the stored answers again with the current extraction.")
    args = parser.parse_args()
    if args.rejudge:
        rejudge(args.out)
        summaries = [json.loads(p.read_text()) for p in sorted(args.out.rglob("*.summary.json"))]
        write_json(args.out / "summary.json", summaries)
        (args.out / "table.md").write_text(markdown_table(summaries), encoding="utf-8")
        print(markdown_table(summaries))
        return

    from tunewise.model.load import load_model

    old = old_metrics()
    loaded = load_model("smollm2", dtype="fp32")
    sources = {"curves": (REPOSITORY / "bench/out/study_curves", study_curves_runs),
               "budget": (REPOSITORY / "bench/out/study_budget", study_budget_runs),
               "difficulty": (REPOSITORY / "bench/out/study_difficulty", study_difficulty_runs)}
    for study_name in args.studies.split(","):
        study, runs = sources[study_name]
        for task, name, test, max_new_tokens, stored_path, pool, settings in runs(study, args.runs):
            target = args.out / study_name / task.replace("+", "_") / f"{name}.jsonl"
            if target.exists():
                continue
            stored = json.loads(stored_path.read_text())
            model = loaded.model
            if name != "zero_shot":
                by_id = {e.id: e for e in pool}
                picks = [by_id[i] for i in stored["selected_ids"]]
                # The studies' trainer cut long examples silently; --truncate does the same, counted.
                config = FinetuneConfig(**settings["finetune_config"], seed=stored["seed"], truncate=True)
                model = finetune(loaded, picks, config).model
            samples, info = rescore(loaded, model, test, max_new_tokens, old)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
            stored_scores = {t: stored["scores"][t] for t in dict.fromkeys(s["task"] for s in samples)}
            header = {"study": study_name, "task": task, "run": name, "stored_scores": stored_scores, **info}
            header = summarise(samples, header)
            target.with_suffix(".summary.json").write_text(json.dumps(header, indent=1) + "\n")
            print(json.dumps(header), flush=True)
    summaries = [json.loads(p.read_text()) for p in sorted(args.out.rglob("*.summary.json"))]
    write_json(args.out / "summary.json", summaries)


if __name__ == "__main__":
    main()
