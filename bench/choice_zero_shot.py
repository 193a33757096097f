"""Zero-shot ``choice`` accuracy of the bundled model on a few study-1 tasks: does it sit at or
above chance (where generated exact match gave 0 on half the tasks)?

    python bench/choice_zero_shot.py --items 100 --out bench/out/choice_zero_shot/summary.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import study_curves
from realdata import with_choices
from tunewise.model.load import load_model
from tunewise.training.evaluate import CHOICE, evaluate

TASKS = ("boolq", "bbh_sports_understanding", "mmlu_social", "t0_qqp", "arc_easy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out/choice_zero_shot/summary.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2", dtype="fp32")
    loaders = study_curves.task_loaders()
    summary = {}
    for task in args.tasks.split(","):
        # The same shuffled split as study 1: its test items come first.
        _, test = study_curves.split_task(loaders[task](), args.items, 0, 0)
        test = with_choices(test)
        cpu, wall = time.process_time(), time.perf_counter()
        results = evaluate(loaded, None, test, metric=CHOICE)
        entry = results["results"][task]
        summary[task] = {key: entry[key] for key in ("n", CHOICE, "acc_norm", "chance")}
        summary[task].update(cpu_seconds=time.process_time() - cpu, wall_seconds=time.perf_counter() - wall,
                             choices=results["config"]["choices"][task])
        print(task, json.dumps(summary[task]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
