"""One self-contained HTML page that explains a run folder.

:func:`build_report` reads what ``tunewise plan`` (and, when present, ``tunewise sweep`` and
``tunewise tune-weights``) left in a folder and writes ``report.html``: the summary, the per-task
plan and why, the confidence and difficulty of each task, the allocation, the predicted and
measured learning curves, the learned indicator weights, selection against random with confidence
intervals, and the provenance. Plots are inline PNG, the style is inline CSS, and nothing is
fetched from anywhere, so the file opens offline and can be mailed as is. Every piece of text that
comes from the user's data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from tunewise.errors import TunewiseError

REPORT_FILE = "report.html"
PLAN_FILE = "plan.json"
SCORES_FILE = "scores.parquet"
SELECTION_FILE = "selection.jsonl"
WEIGHTS_FILE = "weights.json"
# A sweep run by `tunewise demo` lives in its own folder beside the plan (a sweep folder must be
# new or a sweep's own), so both places are looked at.
SWEEP_FILES = ("sweep.json", "sweep/sweep.json")
# Beyond this many tasks the per-task plots show the tasks with the largest budgets only (T0's 34
# tasks all fit, one row each).
MAX_PLOTTED_TASKS = 40

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430;
       margin: 0; background: #f5f6f8; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 2px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #dde1e7; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.lead { color: #4a5566; margin: 0 0 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 10px 16px; min-width: 120px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { font-size: 12px; color: #5b6678; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; background: #fff; font-size: 13.5px; margin: 6px 0 12px; }
th, td { border: 1px solid #dde1e7; padding: 5px 8px; vertical-align: top; }
th { background: #eef1f5; text-align: left; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.why { min-width: 320px; color: #333c4a; }
.good { color: #1b7a3a; font-weight: 600; }
.bad { color: #b3261e; font-weight: 600; }
.note { background: #fff8e1; border-left: 4px solid #f2b600; padding: 8px 12px; margin: 8px 0; }
.muted { color: #6b7687; }
figure { margin: 10px 0 16px; background: #fff; border: 1px solid #dde1e7; border-radius: 8px;
         padding: 8px; display: inline-block; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #5b6678; padding: 4px 6px 0; max-width: 900px; }
pre { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 10px; font-size: 12.5px;
      overflow-x: auto; }
code { font-size: 13px; }
"""


def build_report(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` for the run folder ``run_dir`` and return its path.

    Needs ``plan.json``; uses ``scores.parquet``, ``selection.jsonl``, ``sweep.json`` (or
    ``sweep/sweep.json``) and ``weights.json`` when they are there. ``output`` defaults to
    ``RUN_DIR/report.html``, which is written as a :class:`~tunewise.io.RunFolder` file (never over a
    report.html tunewise did not write). The file is written atomically.
    """
    run_dir = Path(run_dir)
    plan = _read_json(run_dir / PLAN_FILE, required=True,
                      fix="pass a folder written by `tunewise plan POOL --budget N -o RUN_DIR`")
    scores = _read_scores(run_dir / SCORES_FILE)
    selected_ids = _read_selected_ids(run_dir / SELECTION_FILE)
    sweep = next((_read_json(run_dir / name) for name in SWEEP_FILES if (run_dir / name).is_file()), None)
    weights = _read_json(run_dir / WEIGHTS_FILE)

    sections = [
        _summary(plan, sweep),
        _plan_section(plan),
        _allocation_section(plan),
        _distributions_section(plan, scores, selected_ids),
        _curves_section(plan, sweep),
        _sweep_section(sweep),
        _weights_section(weights, used=plan.get("within") == "weighted_indicators"),
        _provenance_section(plan, sweep, weights),
    ]
    title = f"tunewise plan: {_count(plan['selected'], 'label')} over {_count(plan['pool']['tasks'], 'task')}"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(section for section in sections if section)
        + "\n</main>\n</body>\n</html>\n"
    )
    from tunewise.io import RunFolder, write_bytes

    if output is not None:
        return write_bytes(output, page.encode("utf-8"))
    RunFolder(run_dir).write({REPORT_FILE: page.encode("utf-8")})
    return run_dir / REPORT_FILE


# -- reading ---------------------------------------------------------------------------------------


def _read_json(path: Path, required: bool = False, fix: str = "write it again"):
    if not path.is_file():
        if required:
            raise TunewiseError(f"no {path.name} here", file=path.parent, fix=fix)
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TunewiseError(f"not a readable JSON file ({error})", file=path, fix=fix) from None


def _read_scores(path: Path):
    if not path.is_file():
        return None
    from tunewise.data.table import read_scores

    return read_scores(path)[0]


def _read_selected_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    ids = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise TunewiseError(f"not a selection row ({error})", file=path, line=number,
                                    fix="write the run folder again with `tunewise plan`") from None
    return ids


# -- HTML pieces -----------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _count(amount: int, noun: str) -> str:
    """``1 task``, ``12 tasks``: a number with its noun in the right number."""
    return f"{_number(amount)} {noun}{'' if amount == 1 else 's'}"


def _number(value, digits: int = 3, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if percent:
        return f"{value:.{max(digits - 2, 0)}%}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _table(header: Iterable[str], rows: Iterable[Iterable[tuple[str, str]]]) -> str:
    """``rows`` hold (cell HTML, CSS class) pairs; the HTML must already be escaped."""
    head = "".join(f"<th>{_e(name)}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"{css}\">{cell}</td>" if css else f"<td>{cell}</td>" for cell, css in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figure, caption: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<figure><img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{encoded}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _plain(text: str) -> str:
    """User text as a matplotlib label: a '$' would otherwise start mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def _new_figure(width: float, height: float):
    # A bare Figure, not pyplot: no global state and no GUI backend, whatever MPLBACKEND says.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _horizontal_boxplot_argument() -> dict:
    # Matplotlib 3.10 replaced boxplot's `vert=False` with `orientation="horizontal"` and 3.11
    # warns about the old spelling; tunewise supports both sides of that change.
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _plotted_tasks(plan: dict) -> tuple[list[str], str]:
    """The tasks the per-task plots show, and a note when some were left out."""
    tasks = list(plan["tasks"])
    if len(tasks) <= MAX_PLOTTED_TASKS:
        return tasks, ""
    shown = sorted(tasks, key=lambda task: -plan["tasks"][task]["budget"])[:MAX_PLOTTED_TASKS]
    shown = [task for task in tasks if task in shown]
    return shown, (f"<p class=\"muted\">The plots show the {MAX_PLOTTED_TASKS} tasks with the largest budgets "
                   f"of {len(tasks)}; the table above lists them all.</p>")


# -- sections --------------------------------------------------------------------------------------


def _summary(plan: dict, sweep: dict | None) -> str:
    pool = plan["pool"]
    model = plan.get("provenance", {}).get("model") or plan.get("provenance", {}).get("model_fingerprint") or "–"
    cards = [
        ("examples in the pool", _number(pool["examples"])),
        ("tasks", _number(pool["tasks"])),
        ("budget asked", _number(plan["budget"])),
        ("labels planned", _number(plan["selected"])),
        ("strategy", _e(plan["strategy"])),
        ("model", _e(model)),
    ]
    predicted = [t for t, entry in plan["tasks"].items() if entry.get("predicted_auc") is not None]
    lines = [
        f"{_count(plan['selected'], 'label')} planned over {_count(pool['tasks'], 'task')} from "
        f"{_e(pool.get('source') or 'the pool')} with <b>{_e(plan['strategy'])}</b>"
        + (f" (within each task: {_e(plan['within'])})" if plan.get("within") else "")
        + f", seed {_e(plan['seed'])}."
    ]
    spread = plan.get("task_weight_spread")
    if spread is not None and pool["tasks"] > 1:
        lines.append(f"Task weights run from {spread['min']:.3f} to {spread['max']:.3f} (ratio {spread['ratio']:.2f}; "
                     f"their entropy is {spread['entropy_share']:.0%} of that of equal weights).")
    if pool["labelled"] < pool["examples"]:
        lines.append(f"{_number(pool['examples'] - pool['labelled'])} examples have no label yet: the chosen ones "
                     "are listed, in annotation order, in <code>to_label.jsonl</code>. Every prefix of that list "
                     "keeps the per-task proportions, so annotation can stop at any point.")
    if predicted:
        coverage = "the task" if pool["tasks"] == 1 else f"{len(predicted)} of {pool['tasks']} tasks"
        lines.append(f"Learning curves are predicted for {coverage} from CoS-Low "
                     f"and the coefficients <i>{_e(plan['coefficients']['source'])}</i>.")
    elif plan.get("coefficients") is None:
        lines.append("No learning curve is predicted: there is no calibration for this model (run "
                     "<code>tunewise calibrate</code> or pass <code>--coefficients</code>).")
    if sweep is not None:
        lines.append("A sweep fine-tuned the model on picks of the strategies it compared, random among them, at "
                     "several budgets: its measured curves and the gain over random are below.")
    notes = "".join(f"<div class=\"note\">{_e(note)}</div>" for note in plan.get("notes", []))
    card_html = "".join(f"<div class=\"card\"><div class=\"value\">{value}</div><div class=\"label\">{_e(label)}"
                        "</div></div>" for label, value in cards)
    return (f"<h1>How many labels per task, and which ones</h1><p class=\"lead\">{' '.join(lines)}</p>"
            f"<div class=\"cards\">{card_html}</div>{notes}")


def _plan_section(plan: dict) -> str:
    target = plan.get("target", 0.9)
    header = ["task", "pool", "labelled", "mean confidence", "weight", "budget", "share", "CoS-Low",
              "predicted AUC", f"labels for {target:.0%}", "why"]
    from tunewise.pipeline import split_shared_closing_sentence

    # A closing sentence every reason shares (no calibration, say) is said once, above the table.
    reasons, shared = split_shared_closing_sentence([entry["why"] for entry in plan["tasks"].values()])
    rows = []
    for (task, entry), why in zip(plan["tasks"].items(), reasons):
        rows.append([
            (_e(task), ""),
            (_number(entry["pool"]), "num"),
            (_number(entry["labelled"]), "num"),
            (_number(entry["mean_confidence"]), "num"),
            (_number(entry["weight"]), "num"),
            (f"<b>{_number(entry['budget'])}</b>", "num"),
            (_number(entry["share"], 3, percent=True), "num"),
            (_number(entry["coslow"]), "num"),
            (_number(entry["predicted_auc"]), "num"),
            (_number(entry["labels_needed"]), "num"),
            (_e(why), "why"),
        ])
    return ("<h2>The plan, task by task</h2>"
            f"<p class=\"muted\">Labels needed are for a normalised target of {target:.0%}: that fraction of the way "
            "from the zero-shot score to the ceiling, not a raw accuracy."
            + (f" For every task: {_e(shared)}" if shared else "") + "</p>" + _table(header, rows))


def _allocation_section(plan: dict) -> str:
    tasks, note = _plotted_tasks(plan)
    pools = [plan["tasks"][t]["pool"] for t in tasks]
    budgets = [plan["tasks"][t]["budget"] for t in tasks]
    figure = _new_figure(8, 0.42 * len(tasks) + 1.3)
    axes = figure.subplots()
    positions = list(range(len(tasks)))[::-1]
    axes.barh(positions, pools, color="#d5dbe5", label="pool")
    axes.barh(positions, budgets, color="#2f6fdf", label="labels planned")
    for y, budget in zip(positions, budgets):
        axes.text(budget, y, f" {budget}", va="center", fontsize=9)
    axes.set_yticks(positions, [_plain(task) for task in tasks])
    axes.set_xlabel("examples")
    axes.legend(loc="lower right", fontsize=9)
    axes.set_title("allocation: labels planned per task, against its pool")
    return "<h2>Allocation</h2>" + note + _figure(
        figure, f"Each task's budget (blue) within its pool (grey); {plan['selected']} labels in all.")


def _distributions_section(plan: dict, scores, selected_ids: set[str]) -> str:
    if scores is None:
        return "<h2>Confidence and difficulty</h2><p class=\"muted\">No scores.parquet in this folder.</p>"
    tasks, note = _plotted_tasks(plan)
    columns = [("confidence", "model confidence (mean probability of its own greedy answer)")]
    if "loss" in scores.columns and scores["loss"].notna().any():
        columns.append(("loss", "difficulty: loss of the reference answer (higher is harder)"))
    elif "cot_length" in scores.columns and scores["cot_length"].notna().any():
        columns.append(("cot_length", "difficulty: reasoning steps of the reference answer"))
    columns = [(column, label) for column, label in columns if column in scores.columns]
    if not columns:
        return ("<h2>Confidence and difficulty</h2><p class=\"muted\">The scores hold neither confidence nor "
                "loss.</p>")
    task_column = scores["task"].astype(str)
    chosen = scores["id"].astype(str).isin(selected_ids)
    figure = _new_figure(5.6 * len(columns), 0.42 * len(tasks) + 1.5)
    axes_list = figure.subplots(1, len(columns), squeeze=False)[0]
    positions = list(range(1, len(tasks) + 1))[::-1]
    for axes, (column, label) in zip(axes_list, columns):
        values = [scores.loc[(task_column == task) & scores[column].notna(), column].to_numpy() for task in tasks]
        kept = [(p, v) for p, v in zip(positions, values) if len(v)]
        if kept:
            axes.boxplot([v for _, v in kept], positions=[p for p, _ in kept], **_horizontal_boxplot_argument(),
                         widths=0.6, showfliers=False, patch_artist=True,
                         boxprops={"facecolor": "#e3e8f0", "edgecolor": "#8592a6"},
                         medianprops={"color": "#1d2430"}, whiskerprops={"color": "#8592a6"},
                         capprops={"color": "#8592a6"})
        for position, task in zip(positions, tasks):
            mask = (task_column == task) & chosen & scores[column].notna()
            picked = scores.loc[mask, column].to_numpy()
            axes.scatter(picked, [position] * len(picked), s=12, color="#2f6fdf", alpha=0.7, zorder=3,
                         label="selected" if position == positions[0] else None)
        axes.set_yticks(positions, [_plain(task) for task in tasks])
        axes.set_title(label, fontsize=10)
        if selected_ids:
            # Below the axes: inside, "best" still lands on a box or dot when every corner is taken.
            axes.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=axes.transAxes,
                        borderaxespad=2.6, fontsize=8)
    figure.tight_layout()
    caption = ("Per task: the pool's distribution (box: quartiles, whiskers: 1.5 IQR) and the selected examples "
               "(blue dots).")
    if len(columns) == 1:
        caption += " The pool has no reference answers, so there is no difficulty to show."
    return "<h2>Confidence and difficulty</h2>" + note + _figure(figure, caption)


def _curves_section(plan: dict, sweep: dict | None) -> str:
    import numpy as np

    from tunewise.efficiency.predict import predicted_curve

    predicted = {task: entry for task, entry in plan["tasks"].items() if entry.get("predicted_auc") is not None}
    parts = ["<h2>Learning curves</h2>"]
    if predicted:
        max_budget = plan.get("max_budget", 5000)
        figure = _new_figure(8, 4.6)
        axes = figure.subplots()
        budgets = np.unique(np.round(np.logspace(0, math.log10(max_budget), 200)).astype(int))
        x = np.log2(budgets) / math.log2(max_budget)
        for task in list(predicted)[:MAX_PLOTTED_TASKS]:
            entry = predicted[task]
            (line,) = axes.plot(budgets, predicted_curve(entry["predicted_auc"], x),
                                label=_plain(f"{task} (AUC' {entry['predicted_auc']:.2f})"))
            if entry["budget"] > 0:
                axes.scatter([entry["budget"]], [entry["predicted_at_budget"]], color=line.get_color(), zorder=3)
        axes.axhline(plan["target"], color="grey", linestyle=":", linewidth=1)
        axes.set_xscale("log")
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("labelled examples (log scale)")
        axes.set_ylabel("predicted fraction of the way to the ceiling")
        axes.set_title("predicted learning curves (dots: the planned budget)")
        axes.legend(fontsize=8, loc="upper left")
        parts.append(_figure(figure, f"y = x^p with p = (1 − AUC') / AUC', x = log2(n) / log2({max_budget}); "
                                     f"the dotted line is the target {plan['target']:.0%}. Coefficients: "
                                     f"{plan['coefficients']['source']}."))
    else:
        reason = ("there is no calibration for this model: run tunewise calibrate or pass --coefficients"
                  if plan.get("coefficients") is None else
                  "no task has a CoS-Low value (it needs 32 labelled examples per task and --coslow)")
        parts.append(f"<p class=\"muted\">No predicted curves: {_e(reason)}.</p>")
    if sweep is not None and sweep.get("strategies"):
        parts.append(_measured_curves(sweep))
    elif sweep is None:
        parts.append("<p class=\"muted\">No measured curves: no sweep in this folder "
                     "(<code>tunewise sweep</code> or <code>tunewise demo</code> makes one).</p>")
    return "".join(parts)


def _measured_curves(sweep: dict) -> str:
    strategies = sweep["strategies"]
    tasks = sorted({task for entry in strategies.values() for task in entry.get("task_curves", {})})
    panels = 1 + min(len(tasks), 6)
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure = _new_figure(4.2 * columns, 3.3 * rows)
    grid = figure.subplots(rows, columns, squeeze=False)
    axes_list = [axes for row in grid for axes in row]
    curves = [("all tasks (mean)", {name: entry["curve"] for name, entry in strategies.items()})]
    curves += [(task, {name: entry.get("task_curves", {}).get(task, {}) for name, entry in strategies.items()})
               for task in tasks[: panels - 1]]
    budgets = sorted({int(budget) for _, by_strategy in curves for curve in by_strategy.values() for budget in curve})
    ticks = [max(budget, 1) for budget in budgets]
    every_score = [score for _, by_strategy in curves for curve in by_strategy.values() for score in curve.values()]
    on_unit_scale = all(0 <= score <= 1 for score in every_score)
    for axes, (title, by_strategy) in zip(axes_list, curves):
        if on_unit_scale:
            axes.set_ylim(-0.03, 1.03)
        for name, curve in by_strategy.items():
            points = sorted((int(budget), score) for budget, score in curve.items())
            if not points:
                continue
            auc = strategies[name].get("auc") if title.startswith("all tasks") else None
            label = name + (f" (AUC {auc:.3f})" if auc is not None else "")
            # Budget 0 (zero-shot) sits at x = 1 on the log axis, as in the AUC's own convention.
            axes.plot([max(b, 1) for b, _ in points], [s for _, s in points], marker="o", label=_plain(label))
        axes.set_xscale("log")
        axes.set_xticks(ticks, [str(budget) for budget in budgets])
        axes.minorticks_off()
        axes.set_title(_plain(title), fontsize=10)
        axes.set_xlabel("fine-tuning examples (log scale; 0 = zero-shot)", fontsize=8)
        axes.set_ylabel("test score", fontsize=8)
        axes.tick_params(labelsize=8)
        axes.legend(fontsize=7)
    for axes in axes_list[len(curves):]:
        axes.set_visible(False)
    figure.tight_layout()
    seeds = sweep.get("seeds", [])
    caption = (f"Measured: the model fine-tuned (LoRA) on each strategy's picks and scored on held-out test data; "
               f"mean over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}.")
    if len(tasks) > panels - 1:
        caption += f" Per-task panels for the first {panels - 1} of {len(tasks)} tasks."
    return "<h3>Measured</h3>" + _figure(figure, caption)


def _sweep_section(sweep: dict | None) -> str:
    if sweep is None:
        return ""
    parts = ["<h2>Selection against random</h2>"]
    baseline = sweep.get("baseline")
    if baseline is None:
        return parts[0] + "<p class=\"muted\">The sweep has no random baseline to compare with.</p>"
    level = sweep.get("confidence_level", 0.95)
    rows, plotted = [], []
    for name, entry in sweep["strategies"].items():
        for budget, gain in entry.get("gain_over_random", {}).items():
            mean, low, high = gain["mean"], gain["ci_low"], gain["ci_high"]
            if low is None:
                verdict = ("one seed: no interval", "muted")
            elif low > 0:
                verdict = ("beats random", "good")
            elif high < 0:
                verdict = ("worse than random", "bad")
            else:
                verdict = ("no clear difference", "muted")
            interval = "–" if low is None else f"[{low:+.3f}, {high:+.3f}]"
            rows.append([(_e(name), ""), (_e(budget), "num"), (_number(mean, 3) if mean is None else f"{mean:+.3f}",
                                                              "num"),
                         (interval, "num"), (_e(gain["n_seeds"]), "num"), (verdict[0], verdict[1])])
            plotted.append((name, int(budget), mean, low, high))
    if not rows:
        return parts[0] + "<p class=\"muted\">The sweep ran only the random baseline.</p>"
    parts.append(_table(["strategy", "budget", "gain over random", f"{level:.0%} CI", "seeds", "verdict"], rows))
    figure = _new_figure(7, 0.5 * len(plotted) + 1.4)
    axes = figure.subplots()
    for index, (name, budget, mean, low, high) in enumerate(plotted):
        y = len(plotted) - 1 - index
        if low is not None:
            axes.errorbar([mean], [y], xerr=[[mean - low], [high - mean]], fmt="o", color="#2f6fdf", capsize=4)
        else:
            axes.plot([mean], [y], "o", color="#2f6fdf")
    axes.axvline(0, color="grey", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(plotted))[::-1], [_plain(f"{name} @ {budget}") for name, budget, *_ in plotted])
    axes.set_xlabel("test score minus random's (paired over seeds)")
    axes.set_title(f"gain over random, {level:.0%} confidence intervals")
    parts.append(_figure(figure, f"Mean paired difference with its {level:.0%} Student-t interval over seeds; "
                                 "with one seed there is no interval, only the difference."))
    return "".join(parts)


def _weights_section(weights: dict | None, used: bool) -> str:
    if weights is None:
        return ""
    values = weights.get("weights")
    if not isinstance(values, Mapping) or not values:
        return "<h2>Learned indicator weights</h2><p class=\"muted\">weights.json holds no weights.</p>"
    names = list(values)
    figure = _new_figure(6.5, 0.4 * len(names) + 1.2)
    axes = figure.subplots()
    positions = list(range(len(names)))[::-1]
    axes.barh(positions, [float(values[name]) for name in names], color="#2f6fdf")
    axes.set_yticks(positions, [_plain(name) for name in names])
    axes.set_xlim(0, max(1.0, max(float(v) for v in values.values())))
    axes.set_xlabel("weight (on the simplex)")
    axes.set_title("learned indicator weights")
    orientation = weights.get("orientation") or {}
    rows = [[(_e(name), ""), (_number(float(values[name])), "num"), (_e(orientation.get(name, "–")), "")]
            for name in names]
    facts = [(key, value) for key, value in weights.items()
             if key not in ("weights", "orientation") and isinstance(value, (str, int, float, bool))]
    fact_rows = [[(_e(key), ""), (_e(value), "")] for key, value in facts]
    use = ("The plan orders the examples within each task by these weights." if used else
           "The plan did not use these weights (pass --weights or --dev to <code>tunewise plan</code>).")
    return ("<h2>Learned indicator weights</h2>" + f"<p>{use}</p>"
            + _figure(figure, "Weights over the rank-normalised indicators, learned with the in-context proxy.")
            + _table(["indicator", "weight", "orientation"], rows)
            + (_table(["setting", "value"], fact_rows) if fact_rows else ""))


def _param_text(value) -> str:
    """A strategy parameter as text; a nested strategy ({"strategy": name, ...}) as name(key=value, ...)."""
    if isinstance(value, dict) and "strategy" in value:
        inner = ", ".join(f"{key}={item}" for key, item in value.items() if key != "strategy" and item is not None)
        return f"{value['strategy']}({inner})"
    return str(value)


def _provenance_section(plan: dict, sweep: dict | None, weights: dict | None) -> str:
    scores = plan.get("provenance") or {}
    coefficients = plan.get("coefficients")
    params = ", ".join(f"{key}={_param_text(value)}" for key, value in (plan.get("params") or {}).items()
                       if key != "predicted_auc" and value is not None)
    facts = [
        ("tunewise", plan.get("tunewise_version")),
        ("pool", plan["pool"].get("source")),
        ("model", scores.get("model")),
        ("model fingerprint", scores.get("model_fingerprint")),
        ("indicators (version)", ", ".join(f"{name} ({version})"
                                           for name, version in (scores.get("indicators") or {}).items())),
        ("strategy", f"{plan['strategy']} ({params})" if params else plan["strategy"]),
        ("seed", plan["seed"]),
        ("coefficients", "none" if coefficients is None else
         f"AUC' = {coefficients['slope']:.4g} · CoS-Low + {coefficients['intercept']:.4g} [{coefficients['source']}]"),
    ]
    if sweep is not None and sweep.get("settings"):
        settings = sweep["settings"]
        facts.append(("sweep", f"budgets {sweep.get('budgets')}, seeds {sweep.get('seeds')}, "
                               f"metric {settings.get('metric')}, test examples "
                               f"{(settings.get('test') or {}).get('examples')}"))
        facts.append(("fine-tune", ", ".join(f"{key}={value}"
                                             for key, value in (settings.get("finetune_config") or {}).items())))
    if weights is not None:
        facts.append(("indicator weights", WEIGHTS_FILE))
    rows = [[(_e(name), ""), (_e("–" if value in (None, "") else value), "")] for name, value in facts]
    record = {"plan": {key: value for key, value in plan.items() if key != "tasks"}}
    if sweep is not None:
        record["sweep"] = {key: sweep.get(key) for key in ("settings", "budgets", "seeds", "baseline", "ceiling")}
    text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
    return ("<h2>Provenance</h2>" + _table(["what", "value"], rows)
            + f"<details><summary>the full record</summary><pre>{_e(text)}</pre></details>")


__all__ = ["REPORT_FILE", "build_report"]
