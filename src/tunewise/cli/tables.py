"""Tables the commands print: the plan, learning curves and gains over random (Rich renderables)."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import console, stdout


def plan_table(document: dict) -> Table:
    """The per-task plan: pool, labelled, confidence, weight, budget, prediction."""
    target = document["target"]
    # A light box keeps the nine columns within an 80-character terminal.
    table = Table(title=f"Plan: {document['selected']} labels, {document['strategy']}, seed {document['seed']}",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"conf.: mean confidence; AUC': predicted; need: labels to reach {target:.0%} of the way "
                          "to the ceiling")
    table.add_column("task", no_wrap=True)
    for name in ("pool", "labelled", "conf.", "weight", "budget", "share", "AUC'", "need"):
        table.add_column(name, justify="right")

    def cell(value, spec=".3f") -> str:
        return "-" if value is None else format(value, spec)

    for task, entry in document["tasks"].items():
        table.add_row(escape(task), str(entry["pool"]), str(entry["labelled"]), cell(entry["mean_confidence"]),
                      cell(entry["weight"]), str(entry["budget"]), cell(entry["share"], ".1%"),
                      cell(entry["predicted_auc"]), cell(entry["labels_needed"], "d"))
    return table


def print_plan(document: dict) -> None:
    """The plan table, then each task's reason, then the notes.

    When every task's reason ends with the same sentence (all lack a prediction for the same
    cause), that sentence is printed once after them instead of once per task.
    """
    from tunewise.pipeline import split_shared_closing_sentence

    stdout.print(plan_table(document))
    spread = document.get("task_weight_spread")
    if spread is not None and len(document["tasks"]) > 1:
        stdout.print(f"task weights from {spread['min']:.3f} to {spread['max']:.3f} (ratio {spread['ratio']:.2f}, "
                     f"entropy {spread['entropy_share']:.1%} of equal weights)", highlight=False)
    reasons, shared = split_shared_closing_sentence([entry["why"] for entry in document["tasks"].values()])
    for task, why in zip(document["tasks"], reasons):
        stdout.print(f"[bold]{escape(task)}[/]: {escape(why)}", highlight=False)
    if shared:
        stdout.print(f"[bold]every task[/]: {escape(shared)}", highlight=False)
    caveat = (document.get("coefficients") or {}).get("caveat")
    predicted = any(entry["labels_needed"] is not None for entry in document["tasks"].values())
    for note in document["notes"]:
        if predicted and caveat and note.endswith(caveat):
            # The caveat qualifies the labels-needed figures just printed: it goes beside them on
            # stdout, so that -q (which silences stderr) or a redirect never drops it.
            stdout.print(f"[yellow]caveat:[/] {escape(note)}", highlight=False)
        else:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
def curves_table(summary: dict) -> Table:
    """Mean score per budget (budget 0 = zero-shot) and the AUC, one row per strategy."""
    budgets = ["0", *map(str, summary["budgets"])]
    table = Table(title="Learning curves (mean score over seeds)")
    table.add_column("strategy")
    for budget in budgets:
        table.add_column("zero-shot" if budget == "0" else budget, justify="right")
    table.add_column("AUC", justify="right")
    for strategy, entry in summary["strategies"].items():
        cells = [f"{entry['curve'][b]:.4f}" if b in entry["curve"] else "-" for b in budgets]
        table.add_row(escape(strategy), *cells, "-" if entry["auc"] is None else f"{entry['auc']:.4f}")
    return table


def gains_table(summary: dict) -> Table:
    """Per strategy and budget: mean paired gain over random, its 95 % CI, and the seeds used."""
    table = Table(title="Gain over random (paired over seeds, 95 % t interval)")
    for name in ("strategy", "budget", "gain", "95 % CI", "seeds"):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for strategy, entry in summary["strategies"].items():
        for budget, gain in entry.get("gain_over_random", {}).items():
            interval = "-" if gain["ci_low"] is None else f"[{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]"
            table.add_row(escape(strategy), budget, f"{gain['mean']:+.4f}", interval, str(gain["n_seeds"]))
    return table
