"""Refit the shipped SmolLM2 CoS-Low calibration from study 1 v2's finished curves (issue 14).

Reads ``OUT/report.json`` (``bench/study_curves_report.py``: zero-shot and fine-tuned ``choice``
accuracy, per-task ceilings, the predictors), picks the AUC axis with the most tasks among
paper A's way of comparing (every task on one grid; ``--axis`` forces one), writes the tasks of
that axis as ``OUT/measured-<axis>.json`` (one curve per seed, the ceiling, CoS-Low and the other
predictors), runs ``tunewise calibrate`` on it, and writes the result to
``src/tunewise/efficiency/calibration_smollm2.json`` with ``how_it_was_made`` (commands, study
commit, date, settings, tasks) and a ``caveat`` that states the leave-one-task-out error against
predicting the mean and r(CoS-Low, AUC), whatever they are. A calibration no better than the
mean says so in its caveat; it is shipped all the same, as issue 14 asks.

    .venv/bin/python bench/study_curves_report.py bench/out/study_curves_v2
    .venv/bin/python bench/ship_smollm2_calibration.py bench/out/study_curves_v2
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from tunewise.io import write_json

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "src" / "tunewise" / "efficiency" / "calibration_smollm2.json"


def axes(report: dict) -> dict[str, dict]:
    """AUC axis name → {budgets, tasks}: each planned grid's complete tasks, and the common
    first-budget axis every task has."""
    rows = [row for row in report["tasks"] if row["coslow"] is not None]
    first = report["first_budget"]
    found = {f"auc@{first}": {"budgets": [first], "rows": [r for r in rows if r["auc_first"] is not None]}}
    for grid in sorted({tuple(r["budgets"]) for r in rows}):
        found[f"auc@{grid[-1]}"] = {"budgets": list(grid), "rows": [r for r in rows if tuple(r["budgets"]) == grid
                                                                     and r["auc"] is not None]}
    return found


def chosen_axis(found: dict, forced: str | None, min_tasks: int) -> str:
    """``forced``, else the axis with the largest N among those with at least ``min_tasks`` tasks."""
    if forced:
        if forced not in found:
            raise SystemExit(f"no axis {forced!r}; the report has {', '.join(found)}")
        return forced
    usable = [name for name, axis in found.items() if len(axis["rows"]) >= min_tasks]
    if not usable:
        raise SystemExit(f"no AUC axis has {min_tasks} tasks yet: " +
                         ", ".join(f"{n} {len(a['rows'])}" for n, a in found.items()))
    return max(usable, key=lambda name: (found[name]["budgets"][-1], len(found[name]["rows"])))


def measured_document(report: dict, study: Path, axis: dict) -> dict:
    """``tunewise calibrate``'s input: per task one curve per seed over the axis's budgets."""
    plan = json.loads((study / "plan.json").read_text())["tasks"]
    tasks = []
    for row in axis["rows"]:
        runs = study / "tasks" / row["task"] / "sweep" / "runs"
        zero_shot = json.loads((runs / "zero_shot.json").read_text())["score"]
        curves = []
        for seed in plan[row["task"]]["seeds"]:
            files = [runs / f"random__b{b}__s{seed}.json" for b in axis["budgets"]]
            if all(f.exists() for f in files):
                curves.append({"0": zero_shot, **{str(b): json.loads(f.read_text())["score"]
                                                  for b, f in zip(axis["budgets"], files)}})
        tasks.append({"task": row["task"], "ceiling": row["ceiling"], "ceiling_source": row["ceiling_source"],
                      "curves": curves, "coslow": row["coslow"], "coslow_random": row["coslow_random"],
                      "grad_norm": row["grad_norm"], "mean_confidence": row["mean_confidence"]})
    return {"model": "smollm2", "tasks": tasks}


def caveat(fit: dict, n_tasks: int, axis_name: str, budgets: list[int]) -> str:
    loto, mean = 100 * fit["loto_mae"], 100 * fit["mean_predictor_mae"]
    pearson = next((p["pearson"] for p in fit.get("predictors", []) if p.get("predictor") == "coslow"), None)
    verdict = ("better than predicting the mean" if loto < mean else
               "no better than predicting the mean: CoS-Low does not predict this model's AUC on this grid")
    if fit["slope"] < 0:
        # Paper A's slopes are positive (0.53-0.80) with r = 0.675: a higher CoS-Low, a faster curve.
        verdict += "; the slope is negative, against paper A's positive slopes: do not read it as paper A's effect"
    r = f"; Pearson r(CoS-Low, AUC) = {pearson:.2f}" if pearson is not None else ""
    verdict += (f"; its axis ends at N = {budgets[-1]} labels, so no labels-needed figure it gives goes beyond "
                f"{budgets[-1]}" + (" and its predicted curve has one point" if len(budgets) == 1 else ""))
    return (f"fitted on {n_tasks} tasks of study 1 v2 (SmolLM2-135M, LoRA on CPU, choice accuracy on 200 test "
            f"items, budgets {'/'.join(map(str, budgets))}, N = {budgets[-1]}, one seed on most tasks): "
            f"leave-one-task-out absolute error {loto:.1f} AUC points against {mean:.1f} for predicting the mean "
            f"AUC (paper A: 8.6 against 12.5){r}; {verdict}.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="study 1 v2's folder (bench/study_curves.py --out)")
    parser.add_argument("--axis", help="auc@16, auc@32, auc@256, ... (default: the largest N with enough tasks)")
    parser.add_argument("--min-tasks", type=int, default=6)
    parser.add_argument("--output", type=Path, default=SHIPPED)
    parser.add_argument("--study-command", help="the study's launch line, where OUT/runs.jsonl has none (a run "
                                                "killed with its session before run_study.sh recorded starts)")
    args = parser.parse_args(argv)
    report = json.loads((args.study / "report.json").read_text())
    found = axes(report)
    name = chosen_axis(found, args.axis, args.min_tasks)
    axis = found[name]
    measured = args.study / f"measured-{name.replace('@', '')}.json"
    write_json(measured, measured_document(report, args.study, axis))
    fitted = args.study / f"calibration-{name.replace('@', '')}.json"
    budgets = axis["budgets"]
    command = ["tunewise", "calibrate", str(measured), "-o", str(fitted), "--max-budget", str(budgets[-1]),
               "--grid", ",".join(map(str, budgets)), "--schedule-start", str(budgets[0]), "--json"]
    done = subprocess.run([str(Path(sys.executable).parent / "tunewise"), *command[1:]], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"tunewise calibrate failed:\n{done.stderr}")
    document = json.loads(fitted.read_text())
    summary = json.loads(done.stdout)
    document.pop("superseded", None)
    document.pop("superseded_reason", None)
    document["model"] = "smollm2"
    fingerprints = {json.loads((args.study / "tasks" / row["task"] / "coslow.json").read_text()).get(
        "model_fingerprint") for row in axis["rows"]}
    if len(fingerprints) != 1:
        raise SystemExit(f"the tasks' CoS-Low were measured on different models: {sorted(map(str, fingerprints))}")
    document["model_fingerprint"] = fingerprints.pop()
    document["source"] = "tunewise shipped calibration for smollm2 (study 1 v2, bench/study_curves.py)"
    runs = args.study / "runs.jsonl"
    recorded = [json.loads(line)["command"] for line in runs.read_text().splitlines()] if runs.exists() else []
    if not (recorded or args.study_command):
        raise SystemExit(f"{runs} records no run: pass the launch line with --study-command")
    document["how_it_was_made"] = {
        "command": args.study_command or recorded[0],
        "study": "bench/study_curves.py (issue 14, study 1 v2), run through bench/run_study.sh",
        "study_commit": report.get("commit"),
        "study_settings": report["settings"],
        "report_command": f".venv/bin/python bench/study_curves_report.py {args.study}",
        "ship_command": f".venv/bin/python bench/ship_smollm2_calibration.py {args.study}"
                        + (f" --axis {args.axis}" if args.axis else ""),
        "calibrate_command": " ".join(command),
        "axis": name,
        "tasks": [row["task"] for row in axis["rows"]],
        "machine": "2-core CPU (AMD EPYC, avx512_bf16), no GPU, shared; one torch thread per run",
        "date": datetime.date.today().isoformat(),
    }
    document["caveat"] = caveat({**document, **summary}, len(axis["rows"]), name, budgets)
    write_json(args.output, document)
    print(f"{name}: {len(axis['rows'])} tasks → {args.output}\ncaveat: {document['caveat']}")


if __name__ == "__main__":
    main()
