"""Report of study 1 (bench/study_curves.py): whatever of its grid has finished, said plainly.

Reads ``OUT/plan.json`` (every planned cell), ``OUT/tasks/<task>/coslow.json`` (the predictors) and
``OUT/tasks/<task>/sweep/runs/*.json`` (zero-shot and fine-tuned ``choice`` accuracy) and writes
``OUT/report.json`` and ``OUT/report.md``:

- how many cells finished, of how many planned (zero-shot evaluations, predictor measurements,
  fine-tunes);
- per task: zero-shot and per-budget accuracy (mean over the seeds done), chance, the predictors
  (CoS-Low, CoS-Rand, gradient norm, mean confidence) and the AUC (paper A's normalisation,
  :func:`tunewise.efficiency.curve.curve_auc`, ceiling from :mod:`tunewise.efficiency.ceilings` or the
  stated target in the plan) on two axes:
  * ``AUC@N0``: zero-shot to the smallest budget N0 (16) for every task that has both, a common
    axis the first pass of the study fills;
  * ``AUC``: the task's whole planned grid, N = its largest budget (256 on the large tasks, 32 on
    BBH: paper A's axis ends at the largest budget kept, auc.py:133-135), complete curves only,
    compared among the tasks planned on the same grid;
- per axis, once at least ``--min-tasks`` (4) tasks have an AUC and the predictors: the
  leave-one-task-out absolute error (AUC points) of each predictor against predicting the other
  tasks' mean AUC, and each predictor's Pearson and Spearman correlation with the AUC, from
  :class:`tunewise.efficiency.predict.CurvePredictor` (paper A's ``run_leave_one_out``).

It also draws ``OUT/report.png``: each task's learning curve (zero-shot at 0), one panel per planned
grid, and CoS-Low against the AUC on every compared axis with the fitted line. No model runs; it
takes a second and may run while the study does.

    python bench/study_curves_report.py bench/out/study_curves_v2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tunewise.efficiency.curve import curve_auc
from tunewise.efficiency.predict import PREDICTORS, CurvePredictor, calibration_summary
from tunewise.errors import TunewiseError
from tunewise.io import write_json
from tunewise.training.sweep import BASELINE, RUNS_FOLDER, ZERO_SHOT, run_file_name

PLAN_FILE = "plan.json"
PREDICTORS_FILE = "coslow.json"
PREDICTOR_NAMES = {"coslow": "CoS-Low", "coslow_random": "CoS-Rand", "grad_norm": "gradient norm",
                   "mean_confidence": "mean confidence"}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def load_task(out: Path, planned: dict) -> dict:
    """One task's finished cells: zero-shot record, fine-tune records by (budget, seed), predictors."""
    folder = out / "tasks" / planned["task"]
    runs = folder / "sweep" / RUNS_FOLDER
    finetunes = {}
    for budget in planned["budgets"]:
        for seed in planned["seeds"]:
            record = _read(runs / run_file_name(BASELINE, budget, seed))
            if record is not None:
                finetunes[(budget, seed)] = record
    return {"plan": planned, "zero_shot": _read(runs / f"{ZERO_SHOT}.json"), "finetunes": finetunes,
            "predictors": _read(folder / PREDICTORS_FILE)}


def seed_curves(task: dict, budgets: list[int]) -> list[dict[int, float]] | None:
    """One curve per seed whose cells over ``budgets`` have all finished, {0: zero-shot, budget:
    accuracy}; None if no seed's curve is complete yet (a task planned on more seeds is compared on
    the seeds done so far, and the report says how many)."""
    if task["zero_shot"] is None:
        return None
    curves = [{0: task["zero_shot"]["score"],
               **{budget: task["finetunes"][(budget, seed)]["score"] for budget in budgets}}
              for seed in task["plan"]["seeds"]
              if all((budget, seed) in task["finetunes"] for budget in budgets)]
    return curves or None


def auc_or_note(curves, ceiling: float, budgets: list[int]) -> tuple[float | None, str | None]:
    try:
        return curve_auc(curves, ceiling=ceiling, max_budget=max(budgets), grid=budgets), None
    except TunewiseError as error:
        return None, error.message if hasattr(error, "message") else str(error)


def task_row(task: dict, first_budget: int) -> dict:
    """Scores, predictors and AUCs of one task (None where not finished)."""
    planned = task["plan"]
    name, zero_shot = planned["task"], task["zero_shot"]
    row = {"task": name, "test": planned["test"], "pool": planned["pool"], "budgets": planned["budgets"],
           "ceiling": planned["ceiling"], "ceiling_source": planned["ceiling_source"],
           "zero_shot": None if zero_shot is None else zero_shot["score"],
           "chance": None if zero_shot is None else zero_shot["results"][name].get("chance"),
           "scores": {}, "seeds_done": {}}
    for budget in planned["budgets"]:
        done = [task["finetunes"][(budget, seed)]["score"] for seed in planned["seeds"]
                if (budget, seed) in task["finetunes"]]
        row["scores"][budget] = statistics.fmean(done) if done else None
        row["seeds_done"][budget] = len(done)
    predictors = task["predictors"] or {}
    row.update({name_: predictors.get(name_) for name_ in PREDICTORS})
    row["auc_first"] = row["auc_first_note"] = None
    if first_budget in planned["budgets"]:
        curves = seed_curves(task, [first_budget])
        if curves is not None:
            row["auc_first"], row["auc_first_note"] = auc_or_note(curves, planned["ceiling"], [first_budget])
    row["auc"] = row["auc_note"] = None
    curves = seed_curves(task, planned["budgets"])
    row["auc_seeds"], row["auc_per_seed"] = 0, []
    if curves is not None:
        row["auc"], row["auc_note"] = auc_or_note(curves, planned["ceiling"], planned["budgets"])
        row["auc_seeds"] = len(curves)
        if len(curves) > 1:
            row["auc_per_seed"] = [auc_or_note([curve], planned["ceiling"], planned["budgets"])[0]
                                   for curve in curves]
    return row


def compare(rows: list[dict], key: str, max_budget: int, grid: list[int], min_tasks: int) -> dict:
    """Leave-one-task-out errors and correlations of every predictor against the AUC in ``key``,
    over the tasks that have it and every predictor; a note instead below ``min_tasks`` tasks."""
    usable = [row for row in rows if row[key] is not None and all(row[p] is not None for p in PREDICTORS)]
    result = {"tasks": [row["task"] for row in usable], "max_budget": max_budget, "grid": grid}
    if len(usable) < min_tasks:
        result["note"] = f"{len(usable)} task(s) with this AUC and every predictor; {min_tasks} needed"
        return result
    points = [{"task": row["task"], "auc": row[key], **{p: row[p] for p in PREDICTORS}} for row in usable]
    try:
        predictor = CurvePredictor(max_budget=max_budget, grid=grid, source="bench/study_curves.py").fit(points)
    except TunewiseError as error:
        result["note"] = str(error)
        return result
    result["fit"] = calibration_summary(predictor.calibration_)
    result["loto"] = [{"task": fit.task, "measured_auc": fit.measured_auc, "predicted_auc": fit.loto_predicted_auc,
                       "mean_of_others": fit.loto_mean_auc} for fit in predictor.calibration_.tasks]
    return result


def cell_counts(tasks: list[dict]) -> dict:
    planned = {"zero_shot": len(tasks), "predictors": len(tasks),
               "finetunes": sum(len(t["plan"]["budgets"]) * len(t["plan"]["seeds"]) for t in tasks)}
    finished = {"zero_shot": sum(t["zero_shot"] is not None for t in tasks),
                "predictors": sum(t["predictors"] is not None for t in tasks),
                "finetunes": sum(len(t["finetunes"]) for t in tasks)}
    return {"planned": planned, "finished": finished,
            "planned_total": sum(planned.values()), "finished_total": sum(finished.values())}


def costs(tasks: list[dict]) -> dict:
    """Median seconds of each kind of finished cell (the cost model of STUDIES.md, measured)."""
    training = [r["training"]["seconds"] for t in tasks for r in t["finetunes"].values() if "training" in r]
    evaluation = [r["evaluation_seconds"] for t in tasks for r in t["finetunes"].values()]
    zero_shot = [t["zero_shot"]["evaluation_seconds"] for t in tasks if t["zero_shot"] is not None]
    predictors = [t["predictors"]["confidence_seconds"] + t["predictors"]["gradient_seconds"]
                  for t in tasks if t["predictors"] is not None]
    best = [r["training"].get("best_step") for t in tasks for r in t["finetunes"].values() if "training" in r]

    def median(values):
        return statistics.median(values) if values else None

    return {"finetune_training_seconds": median(training), "finetune_evaluation_seconds": median(evaluation),
            "zero_shot_seconds": median(zero_shot), "predictor_seconds": median(predictors),
            "best_steps": best}


def build_report(out: Path, min_tasks: int = 4) -> dict:
    plan = _read(out / PLAN_FILE)
    if plan is None:
        raise SystemExit(f"{out / PLAN_FILE} does not exist: run bench/study_curves.py --out {out} first")
    order = plan.get("order", list(plan["tasks"]))
    tasks = [load_task(out, plan["tasks"][name]) for name in order]
    first_budget = min(min(t["plan"]["budgets"]) for t in tasks)
    rows = [task_row(task, first_budget) for task in tasks]
    # Paper A compares AUCs on one grid: tasks are grouped by their planned grid (the large tasks'
    # 16/64/256, BBH's 16/32), each group compared on its own.
    grids = sorted({tuple(row["budgets"]) for row in rows}, key=lambda grid: (-len(grid), grid))
    by_grid = {
        f"auc@{grid[-1]} ({'/'.join(map(str, grid))})": compare(
            [row for row in rows if tuple(row["budgets"]) == grid], "auc", grid[-1], list(grid), min_tasks)
        for grid in grids
    }
    return {
        "out": str(out),
        "commit": (out / "commit").read_text().strip() if (out / "commit").exists() else None,
        "settings": plan["settings"],
        "skipped": plan["skipped"],
        "cells": cell_counts(tasks),
        "costs": costs(tasks),
        "first_budget": first_budget,
        "tasks": rows,
        "comparisons": {
            f"auc@{first_budget}": compare(rows, "auc_first", first_budget, [first_budget], min_tasks),
            **by_grid,
        },
    }


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    cells = report["cells"]
    done, planned = cells["finished"], cells["planned"]
    lines = [(f"**{cells['finished_total']} of {cells['planned_total']} cells finished**: "
             f"{done['zero_shot']}/{planned['zero_shot']} zero-shot evaluations, "
             f"{done['predictors']}/{planned['predictors']} predictor measurements, "
             f"{done['finetunes']}/{planned['finetunes']} fine-tunes"
             f" (study commit {(report['commit'] or 'unknown')[:12]})."), ""]
    budgets = sorted({b for row in report["tasks"] for b in row["budgets"]})
    first = report["first_budget"]
    lines.append("| task | test | ceiling | chance | zero-shot | " + " | ".join(f"n = {b}" for b in budgets)
                 + f" | AUC@{first} | AUC (N) | CoS-Low | CoS-Rand | grad norm | mean conf. |")
    lines.append("|---|---:|---:|---:|---:|" + "---:|" * len(budgets) + "---:|---:|---:|---:|---:|---:|")
    for row in report["tasks"]:
        scores = [("" if b not in row["budgets"] else _number(row["scores"][b])) for b in budgets]
        auc = (_number(row["auc"]) + f" ({max(row['budgets'])}"
               + (f", {row['auc_seeds']} seeds" if row["auc_seeds"] > 1 else "") + ")"
               if row["auc"] is not None else "–")
        lines.append("| " + " | ".join([
            row["task"], str(row["test"]), _number(row["ceiling"]), _number(row["chance"]), _number(row["zero_shot"]),
            *scores, _number(row["auc_first"]), auc, _number(row["coslow"], 4), _number(row["coslow_random"], 4),
            _number(row["grad_norm"], 2), _number(row["mean_confidence"])]) + " |")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{task} ({why.splitlines()[0][:90]})"
                                              for task, why in report["skipped"].items())]
    for axis, comparison in report["comparisons"].items():
        lines += ["", (f"**Predictors against {axis}** ({len(comparison['tasks'])} tasks"
                  f"{': ' + ', '.join(comparison['tasks']) if comparison['tasks'] else ''})")]
        if "fit" not in comparison:
            lines.append(f"not compared: {comparison['note']}.")
            continue
        fit = comparison["fit"]
        lines += [f"CoS-Low fit AUC' = {fit['slope']:.3f} · CoS-Low + {fit['intercept']:.3f}.", "",
                  "| predictor | LOTO abs. error (AUC points) | mean predictor's error | Pearson r (p) | Spearman ρ (p) |",
                  "|---|---:|---:|---:|---:|"]
        for entry in fit["predictors"]:
            lines.append(f"| {PREDICTOR_NAMES.get(entry['predictor'], entry['predictor'])} | "
                         f"{_number(None if entry['loto_mae'] is None else 100 * entry['loto_mae'], 1)} | "
                         f"{_number(None if entry['mean_mae'] is None else 100 * entry['mean_mae'], 1)} | "
                         f"{_number(entry['pearson'], 2)} ({_number(entry['pearson_p'], 2)}) | "
                         f"{_number(entry['spearman'], 2)} ({_number(entry['spearman_p'], 2)}) |")
    spread = [row for row in report["tasks"] if len(row["auc_per_seed"]) > 1
              and None not in row["auc_per_seed"]]
    if spread:
        lines += ["", "**The AUC's seed-to-seed spread** (tasks with more than one finished seed; the AUC above "
                  "is the AUC of the seeds' mean curve):", "",
                  "| task | seeds | AUC per seed | standard deviation (AUC points) |", "|---|---:|---|---:|"]
        for row in spread:
            lines.append(f"| {row['task']} | {len(row['auc_per_seed'])} | "
                         + ", ".join(_number(value) for value in row["auc_per_seed"])
                         + f" | {100 * statistics.stdev(row['auc_per_seed']):.1f} |")
    spent = report["costs"]
    lines += ["", "Median seconds per cell: fine-tune training " + _number(spent["finetune_training_seconds"], 0)
              + ", its evaluation " + _number(spent["finetune_evaluation_seconds"], 0)
              + ", zero-shot evaluation " + _number(spent["zero_shot_seconds"], 0)
              + ", predictors " + _number(spent["predictor_seconds"], 0) + "."]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Write the study's figure: learning curves per grid (top row), CoS-Low against AUC per axis
    with its fitted line (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = sorted({tuple(row["budgets"]) for row in report["tasks"]}, key=lambda grid: (-len(grid), grid))
    axes_compared = [(name, c) for name, c in report["comparisons"].items() if "fit" in c]
    columns = max(len(grids), len(axes_compared), 1)
    figure, panels = plt.subplots(2, columns, figsize=(5 * columns, 8), squeeze=False)
    for panel, grid in zip(panels[0], grids):
        for row in (r for r in report["tasks"] if tuple(r["budgets"]) == grid):
            points = [(0, row["zero_shot"])] + [(b, row["scores"][b]) for b in grid if row["scores"][b] is not None]
            panel.plot([b for b, _ in points], [s for _, s in points], marker="o", label=row["task"])
        panel.set_xscale("symlog", linthresh=16)
        panel.set_xticks([0, *grid], [str(b) for b in (0, *grid)])
        panel.set(title=f"learning curves, grid {'/'.join(map(str, grid))}", xlabel="labelled examples",
                  ylabel="choice accuracy")
        panel.legend(fontsize=6)
    for panel, (name, comparison) in zip(panels[1], axes_compared):
        key = "auc_first" if name == f"auc@{report['first_budget']}" else "auc"
        rows = [r for r in report["tasks"] if r["task"] in comparison["tasks"]]
        xs, ys = [r["coslow"] for r in rows], [r[key] for r in rows]
        panel.scatter(xs, ys)
        for row, x, y in zip(rows, xs, ys):
            panel.annotate(row["task"], (x, y), fontsize=6)
        fit = comparison["fit"]
        line = [min(xs), max(xs)]
        panel.plot(line, [fit["slope"] * x + fit["intercept"] for x in line], color="grey",
                   label=f"AUC' = {fit['slope']:.3f} · CoS-Low + {fit['intercept']:.3f}")
        panel.set(title=f"CoS-Low against {name}", xlabel="CoS-Low", ylabel="AUC (ceiling-normalised)")
        panel.legend(fontsize=7)
    for panel in [*panels[0][len(grids):], *panels[1][len(axes_compared):]]:
        panel.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="The study folder (bench/study_curves.py --out).")
    parser.add_argument("--min-tasks", type=int, default=4,
                        help="Compare the predictors once this many tasks have an AUC and every predictor.")
    args = parser.parse_args(argv)
    report = build_report(args.out, args.min_tasks)
    text = markdown(report)
    write_json(args.out / "report.json", report)
    (args.out / "report.md").write_text(text + "\n", encoding="utf-8")
    plot(report, args.out / "report.png")
    print(text)
    return report


if __name__ == "__main__":
    main()
