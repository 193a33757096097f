"""Rebuild ``paper_a_curves.json`` from a clone of github.com/r-three/dataefficiency (run by hand).

    git clone https://github.com/r-three/dataefficiency /tmp/dataefficiency
    python tests/data/make_paper_a_curves.py /tmp/dataefficiency > tests/data/paper_a_curves.json

For every task of ``results/auc_res/{llama,mistral,qwen}_auc_logscale_by_task_5000.json`` (100 in
all) it keeps what ``utils/calculate_per_task_auc.py`` reads to compute that task's
``extrapolation_auc``: the score per budget from ``results/finetune_results/{model}_{task}_full_result_v2.json``
(F1 for the generation tasks of l.11, otherwise accuracy, exact match where accuracy is absent:
l.55-67) and the task's human score from ``results/human_eval.json`` (l.86). Every budget of the
file is kept (also the few-shot and above-5000 ones the released code drops), so the test checks
that tunewise drops them too.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

MODELS = ("llama", "mistral", "qwen")
GENERATION_TASKS = {"sciq", "typescript_chunks", "polish_sequence_labeling", "coqa", "qa_wikidata", "squad_v2",
                    "disfl_qa"}


def main(clone: Path) -> None:
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    results = clone / "results"
    human = json.loads((results / "human_eval.json").read_text())
    curves = []
    for model in MODELS:
        published = json.loads((results / "auc_res" / f"{model}_auc_logscale_by_task_5000.json").read_text())
        for task, entry in published.items():
            rows = json.loads((results / "finetune_results" / f"{model}_{task}_full_result_v2.json").read_text())
            points, metrics = {}, set()
            for budget, row in sorted(rows.items(), key=lambda item: int(item[0])):
                metric = "f1" if task in GENERATION_TASKS else (
                    "accuracy" if _present(row.get("accuracy")) else "exact_string_match_accuracy")
                metrics.add(metric)
                points[str(int(budget))] = float(row[metric])
            curves.append({"model": model, "task": task, "metric": "/".join(sorted(metrics)), "points": points,
                           "human_score": human.get(task, {}).get("score"),
                           "published_auc": entry["extrapolation_auc"]})
    lines = ",\n".join("  " + json.dumps(curve) for curve in curves)
    sys.stdout.write(
        "{\"source\": " + json.dumps(f"github.com/r-three/dataefficiency@{commit}: results/finetune_results/*_full_result_v2.json, "
                                     "results/human_eval.json, results/auc_res/*_auc_logscale_by_task_5000.json")
        + ",\n \"made_by\": \"tests/data/make_paper_a_curves.py\",\n \"curves\": [\n" + lines + "\n]}\n")


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
