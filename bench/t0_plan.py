"""All 34 T0 tasks as one unlabelled pool, planned with the bundled model at budget 500.

Builds ``bench/out/t0_plan/pool.jsonl`` (``{prompt, task}`` records, the task from
``../shared/data/t0_train_50k/tasks.tsv``, the completion left out so the pool is unlabelled), then
runs ``tunewise plan POOL --task-field task --budget 500 -o RUN`` under ``/usr/bin/time -v`` with no
other flag, and writes wall time, peak RSS and the plan's summary to ``bench/out/t0_plan/<name>.json``.

The whole pool is 55,185 rows. ``--per-template N`` takes N rows of every template file instead (a
stratified subset, drawn with a fixed seed), for machines where the full run takes too long; the
result records which it was. The score cache is a fresh folder under the run (so every example is
scored, none served from an earlier run); converted models stay in the user cache.

    python bench/t0_plan.py --per-template 30
    python bench/t0_plan.py              # the full pool
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "t0_train_50k"


def build_pool(path: Path, per_template: int | None, seed: int = 0) -> dict:
    """Write the pool; returns its row count, tasks and template files."""
    if not DATA.exists():
        raise SystemExit(f"T0 data not found: {DATA}")
    rows = tasks = files = 0
    seen_tasks = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (DATA / "tasks.tsv").open() as table, path.open("w") as out:
        for entry in csv.DictReader(table, delimiter="\t"):
            if int(entry["rows"]) == 0:
                continue
            lines = [line for line in (DATA / "data_per_template" / entry["file"]).read_text().splitlines()
                     if line.strip()]
            if per_template is not None:
                random.Random(f"{seed}:{entry['file']}").shuffle(lines)
                lines = lines[:per_template]
            for line in lines:
                out.write(json.dumps({"prompt": json.loads(line)["prompt"], "task": entry["task"]},
                                     ensure_ascii=False) + "\n")
            rows += len(lines)
            files += 1
            seen_tasks.add(entry["task"])
    tasks = len(seen_tasks)
    return {"rows": rows, "tasks": tasks, "template_files": files}


def time_v(stderr: str) -> dict:
    """Wall seconds, user/system CPU seconds and peak RSS (MiB) from ``/usr/bin/time -v``."""
    def field(label):
        match = re.search(rf"{re.escape(label)}: (.+)", stderr)
        return match.group(1).strip() if match else None

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(p) for p in wall.split(":")] if wall else []
    seconds = sum(value * 60 ** index for index, value in enumerate(reversed(parts))) if parts else None
    rss = field("Maximum resident set size (kbytes)")
    return {"wall_s": seconds, "user_s": float(field("User time (seconds)") or "nan"),
            "system_s": float(field("System time (seconds)") or "nan"),
            "peak_rss_mib": round(int(rss) / 1024, 1) if rss else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-template", type=int, default=None,
                        help="rows per template file (a stratified subset); default: the full pool")
    parser.add_argument("--name", default=None, help="result name (default: full or perN)")
    parser.add_argument("--budget", type=int, default=500)
    args = parser.parse_args()
    name = args.name or ("full" if args.per_template is None else f"per{args.per_template}")
    folder = ROOT / "bench" / "out" / "t0_plan"
    pool = folder / f"pool-{name}.jsonl"
    run = folder / f"run-{name}"
    built = build_pool(pool, args.per_template)
    print(f"pool: {built['rows']} rows, {built['tasks']} tasks, {built['template_files']} template files → {pool}",
          flush=True)
    shutil.rmtree(run, ignore_errors=True)
    environment = dict(os.environ, TUNEWISE_CACHE=str(folder / f"cache-{name}"),
                       TUNEWISE_MODEL_CACHE=os.environ.get("TUNEWISE_MODEL_CACHE",
                                                           str(Path.home() / ".cache" / "tunewise" / "models")))
    shutil.rmtree(environment["TUNEWISE_CACHE"], ignore_errors=True)
    tunewise = [sys.executable, "-c", "from tunewise.cli import main; main()"]
    command = ["/usr/bin/time", "-v", *tunewise, "plan", str(pool), "--task-field", "task",
               "--budget", str(args.budget), "-o", str(run)]
    finished = subprocess.run(command, env=environment, stderr=subprocess.PIPE, text=True)
    (folder / f"{name}.log").write_text(finished.stderr)
    if finished.returncode != 0:
        sys.stderr.write(finished.stderr[-4000:])
        raise SystemExit(f"plan failed with exit code {finished.returncode}")
    plan = json.loads((run / "plan.json").read_text())
    result = {"command": "tunewise plan POOL --task-field task --budget %d -o RUN" % args.budget,
              "pool": built, "subset": None if args.per_template is None else
              f"{args.per_template} rows per template file (seeded shuffle), of 55,185",
              "threads": os.environ.get("TUNEWISE_THREADS"), **time_v(finished.stderr),
              "tasks_planned": len(plan.get("tasks", plan.get("allocation", {}))),
              "report": str(run / "report.html")}
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
