"""``tunewise curve``, ``coslow``, ``estimate`` and ``calibrate``: how many labels a task needs."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tunewise.cli.app import command, console, stdout
from tunewise.efficiency.curve import DEFAULT_GRID, DEFAULT_MAX_BUDGET
from tunewise.efficiency.coslow import DEFAULT_DIMENSION as DEFAULT_PROJECTION_DIM
from tunewise.errors import TunewiseError, did_you_mean

_GRID_TEXT = ",".join(map(str, DEFAULT_GRID))
_TARGETS_TEXT = "0.5,0.8,0.9"


@command("curve")
def curve_command(
    curve_file: Path = typer.Argument(..., metavar="CURVE.json",
                                      help='Budgets to scores: {"0": 0.39, "50": 0.41, ...}.'),
    ceiling: Optional[float] = typer.Option(None,
                                            help="Human or target score (the ceiling is at least the best score)."),
    max_budget: int = typer.Option(DEFAULT_MAX_BUDGET, help="N: the largest budget counted."),
    grid: str = typer.Option(_GRID_TEXT, help="Budgets the curve should have been measured at."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (key 'auc') and nothing else."),
    plot: Optional[Path] = typer.Option(None, metavar="PNG", help="Also draw the normalised curve to this file."),
) -> None:
    """Data-efficiency AUC of a measured learning curve (paper A's metric)."""
    from tunewise.efficiency.curve import normalise_curve, parse_grid, plot_curve, read_curve

    points = read_curve(curve_file)
    budgets = parse_grid(grid)
    curve = normalise_curve(points, ceiling=ceiling, max_budget=max_budget, grid=budgets)
    if plot is not None:
        plot_curve(points, plot, ceiling=ceiling, max_budget=max_budget, grid=budgets, title=curve_file.stem)
        console.print(f"plot → {plot}", markup=False, highlight=False)
    if as_json:
        stdout.print_json(json.dumps({
            "auc": curve.auc,
            "floor": curve.floor,
            "ceiling": curve.ceiling,
            "max_budget": max_budget,
            "grid": list(budgets),
            "budgets": list(curve.budgets),
            "envelope": list(curve.envelope),
            "normalised": list(curve.y),
        }))
        return
    table = Table(title=f"{curve_file.name}: floor {curve.floor:.4g}, ceiling {curve.ceiling:.4g}")
    for column in ("budget", "measured", "envelope", "normalised"):
        table.add_column(column, justify="right")
    for budget, value, normalised in zip(curve.budgets, curve.envelope, curve.y):
        measured = points.get(budget)
        table.add_row(str(budget), "-" if measured is None else f"{measured:.4f}", f"{value:.4f}", f"{normalised:.3f}")
    stdout.print(table)
    stdout.print(f"data-efficiency AUC: {curve.auc:.4f}")


@command("coslow")
def coslow_command(
    pool: Path = typer.Argument(..., help="Pool file of the task (unlabelled or labelled)."),
    task: Optional[str] = typer.Option(None, help="Task to measure (needed when the pool has several)."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled), tiny-random, or a model folder."),
    labelled: Optional[Path] = typer.Option(None, metavar="LABELLED.jsonl",
                                            help="to_label.jsonl with responses filled in."),
    seed: int = typer.Option(0, help="Seeds the sample of prompts and the LoRA A matrices."),
    output_dir: Path = typer.Option(Path("."), "-o", "--output-dir",
                                    help="Where to write to_label.jsonl / coslow.json."),
    allow_small_pool: bool = typer.Option(
        False, help="Accept fewer than 320 prompts: sample from the 32 least confident (not the paper's protocol)."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), "
                                           "fp32, bf16. Gradients accumulate in fp32 either way."),
    projection_dim: int = typer.Option(
        DEFAULT_PROJECTION_DIM, min=0, help="Project each gradient to this many numbers (seeded); 0 keeps the full "
                                            "LoRA-B gradient (exact; memory grows with the model)."),
) -> None:
    """CoS-Low of a task: pick the 32 prompts to label, then measure their gradient similarity."""
    from tunewise import __version__
    from tunewise.model import load_backend
    from tunewise.cli.progress import progress_bar
    from tunewise.efficiency.coslow import DEFAULT_K, coslow, lowest_confidence_prompts
    from tunewise.data.pool import read_pool
    from tunewise.indicators.score import score_pool

    if labelled is not None:
        examples = read_pool(labelled).examples
        unanswered = [i for i, e in enumerate(examples, start=1) if e.response is None]
        if unanswered:
            listed = ", ".join(map(str, unanswered[:5])) + (" …" if len(unanswered) > 5 else "")
            raise TunewiseError(f"{len(unanswered)} of {len(examples)} examples have no response yet "
                                f"(examples {listed})",
                                file=labelled, field="response",
                                fix="fill in 'response' on every line, then run this command again")
        task_name = task or examples[0].metadata.get("task") or examples[0].task
        source = {"pool": str(pool), "labelled": str(labelled)}
    else:
        examples, task_name = _task_examples(read_pool(pool, task_field), task, pool)
        source = {"pool": str(pool)}
    console.print(f"loading {model} …", markup=False, highlight=False)
    backend = load_backend(model, device=device, dtype=dtype)
    if not hasattr(backend, "loaded"):
        raise TunewiseError(f"CoS-Low needs the gradients of a real model, and '{model}' has none", field="model",
                            fix="use --model smollm2, tiny-random or a model folder")
    if labelled is None:
        with progress_bar("answering prompts", unit="prompts") as update:
            confidence = score_pool(examples, backend, ["confidence"], progress=update)["confidence"].to_numpy()
        chosen = lowest_confidence_prompts(confidence, k=DEFAULT_K, seed=seed, allow_small_pool=allow_small_pool)
        examples = [examples[i] for i in chosen]
        if any(e.response is None for e in examples):
            path = _write_to_label(output_dir / "to_label.jsonl", examples, confidence[chosen], task_name)
            console.print(
                f"wrote the {len(examples)} least confident prompts of task '{task_name}' → {path}\n"
                "next: write the correct answer in the 'response' field of every line, then run\n"
                f"  tunewise coslow {pool} --labelled {path} --model {model} --seed {seed} -o {output_dir}",
                markup=False,
                highlight=False,
            )
            return
    with progress_bar("gradients") as update:
        result = coslow(backend.loaded.model, backend.loaded.tokenizer, [list(e.prompt) for e in examples],
                        [e.response for e in examples], seed=seed, progress=lambda done: update(done, len(examples)),
                        dimension=projection_dim or None)
    document = {
        "coslow": result["coslow"],
        "k": result["n"],
        "task": task_name,
        "model": model,
        "model_fingerprint": backend.fingerprint,
        "seed": seed,
        "lora_rank": result["rank"],
        "lora_alpha": result["alpha"],
        "dimension": result["dimension"],
        "gradient_dimension": result["gradient_dimension"],
        "projection_std": result["projection_std"],
        "dtype": str(backend.loaded.dtype).removeprefix("torch."),
        "seconds": result["seconds"],
        "peak_memory_bytes": result["peak_memory"],
        "peak_memory_kind": result["peak_memory_kind"],
        "examples": [e.id for e in examples],
        "cosines": result["cosines"],
        **source,
        "tunewise_version": __version__,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "coslow.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    stdout.print(f"CoS-Low of task '{task_name}': {result['coslow']:.4f} (median of {len(result['cosines'])} "
                 f"pairwise cosines over {result['n']} examples, {result['seconds']:.1f} s) → {path}",
                 markup=False, highlight=False)
    console.print(f"next: tunewise estimate --coslow-file {path}", markup=False, highlight=False)


@command("estimate")
def estimate_command(
    coslow_value: Optional[float] = typer.Option(None, "--coslow", help="A CoS-Low value."),
    coslow_file: Optional[Path] = typer.Option(None, help="coslow.json written by `tunewise coslow`."),
    coefficients: Optional[str] = typer.Option(
        None, help="paper:llama-3.1-8b | paper:mistral-7b | paper:qwen2.5-14b, or a calibration file."
    ),
    model: Optional[str] = typer.Option(None, help="Model the CoS-Low was measured with (default: from the file)."),
    targets: str = typer.Option(_TARGETS_TEXT,
                                help="Normalised targets τ: fractions of the way from zero-shot to ceiling."),
    max_budget: Optional[int] = typer.Option(
        None, help="N: the largest budget of the predicted curve (default: the N the coefficients were fitted "
                   f"with; {DEFAULT_MAX_BUDGET} for the paper's)."),
    grid: Optional[str] = typer.Option(None, help="Budgets at which to show the predicted curve (default: the "
                                                  "coefficients' grid)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Predicted AUC, learning curve and labels needed for a task, from its CoS-Low."""
    from tunewise.efficiency.curve import normalised_log_budget, parse_grid
    from tunewise.efficiency.predict import coefficients_for, labels_needed, load_coefficients, predict_auc, predicted_curve

    if (coslow_value is None) == (coslow_file is None):
        raise TunewiseError("give exactly one of --coslow and --coslow-file", field="coslow",
                            fix="e.g. --coslow-file coslow.json")
    if coslow_file is not None:
        measured = _read_coslow_file(coslow_file)
        coslow_value = measured["coslow"]
        model = model or measured.get("model")
    if not math.isfinite(coslow_value) or not -1 <= coslow_value <= 1:
        raise TunewiseError(f"CoS-Low {coslow_value} is not a cosine in [-1, 1]", field="coslow",
                            fix="pass the value printed by `tunewise coslow`")
    if coefficients is not None:
        chosen = load_coefficients(coefficients)
        _note_borrowed_paper_coefficients(coefficients, model)
    elif model is not None:
        chosen = coefficients_for(model)
    else:
        raise TunewiseError("no model to choose coefficients for", field="coefficients",
                            fix="pass --coefficients paper:llama-3.1-8b (or a calibration file), or --model")
    if max_budget is not None and max_budget != chosen.max_budget:
        console.print(f"note: these coefficients were fitted on curves up to N = {chosen.max_budget}; predicting "
                      f"with N = {max_budget} stretches them beyond their calibration", markup=False, highlight=False)
    if chosen.caveat:
        console.print(f"note: {chosen.caveat}", markup=False, highlight=False)
    max_budget = chosen.max_budget if max_budget is None else max_budget
    auc = predict_auc(coslow_value, chosen)
    budgets = chosen.grid if grid is None else parse_grid(grid)
    tau_values = _parse_targets(targets)
    curve = {n: float(predicted_curve(auc, normalised_log_budget(n, max_budget))) for n in budgets if n <= max_budget}
    needed = {tau: labels_needed(auc, tau, max_budget) for tau in tau_values}
    if as_json:
        stdout.print_json(json.dumps({
            "coslow": coslow_value,
            "predicted_auc": auc,
            "coefficients": {"slope": chosen.slope, "intercept": chosen.intercept, "source": chosen.source,
                             "caveat": chosen.caveat},
            "max_budget": max_budget,
            "predicted_curve": {str(n): y for n, y in curve.items()},
            "labels_needed": {str(tau): math.ceil(n) for tau, n in needed.items()},
        }))
        return
    stdout.print(f"coefficients: AUC' = {chosen.slope:g} · CoS-Low + {chosen.intercept:g}   [{chosen.source}]",
                 markup=False, highlight=False)
    stdout.print(f"CoS-Low {coslow_value:.4f} → predicted data-efficiency AUC {auc:.4f}")
    table = Table(title="predicted curve (fraction of the way from zero-shot to ceiling)")
    table.add_column("labels", justify="right")
    table.add_column("predicted", justify="right")
    for n, y in curve.items():
        table.add_row(str(n), f"{y:.3f}")
    stdout.print(table)
    for tau, n in needed.items():
        stdout.print(f"to reach {tau:.0%} of the way to the ceiling: about {math.ceil(n)} labels")


@command("calibrate")
def calibrate_command(
    measured: Path = typer.Argument(..., metavar="MEASURED.json",
                                    help="Per task: {task, coslow, curve: {budget: score}} or {task, coslow, auc}."),
    output: Path = typer.Option(..., "-o", "--output", help="Calibration file to write (JSON)."),
    model: Optional[str] = typer.Option(None, help="Model the curves and CoS-Low belong to (default: from the file)."),
    targets: str = typer.Option(_TARGETS_TEXT, help="Targets τ for the labels-needed comparison."),
    max_budget: int = typer.Option(DEFAULT_MAX_BUDGET, help="N used for the AUC."),
    grid: str = typer.Option(_GRID_TEXT, help="Grid used for the AUC."),
    schedule_start: int = typer.Option(50, min=1, help="First budget of the doubling schedule compared against."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Fit the CoS-Low → AUC coefficients of a model from tasks with measured curves."""
    from tunewise import __version__
    from tunewise.efficiency.curve import parse_grid
    from tunewise.efficiency.predict import (calibrate, doubling_schedule_cost, labels_needed, observed_labels_needed,
                                     write_calibration)

    budgets = parse_grid(grid)
    tau_values = _parse_targets(targets)
    header, tasks = _read_measured(measured, max_budget, budgets)
    calibration = calibrate([(t["task"], t["coslow"], t["auc"]) for t in tasks],
                            source=f"{output} (calibrated on {model or header.get('model') or 'an unnamed model'})",
                            max_budget=max_budget, grid=budgets)
    calibration = replace(calibration, metadata={
        "model": model or header.get("model"),
        "model_fingerprint": header.get("model_fingerprint"),
        "max_budget": max_budget,
        "grid": list(budgets),
        "measured": str(measured),
        "tunewise_version": __version__,
    })
    write_calibration(calibration, output)
    held_out = {fit.task: fit.loto_predicted_auc for fit in calibration.tasks}
    comparisons = []
    for entry in tasks:
        if entry.get("curve") is None:
            continue
        for tau in tau_values:
            observed = observed_labels_needed(entry["curve"], tau, entry.get("ceiling"), max_budget, budgets)
            schedule = doubling_schedule_cost(entry["curve"], tau, schedule_start, entry.get("ceiling"),
                                              max_budget, budgets)
            comparisons.append({
                "task": entry["task"],
                "target": tau,
                "predicted_labels": math.ceil(labels_needed(held_out[entry["task"]], tau, max_budget)),
                "observed_labels": None if observed is None else math.ceil(observed),
                "doubling_schedule_labels": None if schedule is None else schedule.labels,
                "doubling_schedule_rounds": None if schedule is None else schedule.rounds,
                "doubling_schedule_examples_trained": None if schedule is None else schedule.examples_trained,
            })
    summary = {
        "slope": calibration.coefficients.slope,
        "intercept": calibration.coefficients.intercept,
        "tasks": len({fit.task for fit in calibration.tasks}),
        "loto_mae": calibration.loto_mae,
        "loto_relative_error_percent": calibration.loto_relative_error,
        "mean_predictor_mae": calibration.mean_mae,
        "mean_predictor_relative_error_percent": calibration.mean_relative_error,
        "calibration_file": str(output),
        "labels_needed": comparisons,
    }
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    fits = Table(title="leave-one-task-out predictions")
    for column in ("task", "CoS-Low", "measured AUC", "predicted AUC", "mean of others"):
        fits.add_column(column, justify="left" if column == "task" else "right")
    for fit in calibration.tasks:
        fits.add_row(fit.task, f"{fit.coslow:.4f}", f"{fit.measured_auc:.4f}", f"{fit.loto_predicted_auc:.4f}",
                     f"{fit.loto_mean_auc:.4f}")
    stdout.print(fits)
    stdout.print(f"AUC' = {calibration.coefficients.slope:.4f} · CoS-Low + {calibration.coefficients.intercept:.4f}"
                 f"  ({summary['tasks']} tasks) → {output}", markup=False, highlight=False)
    stdout.print(f"leave-one-task-out MAE: {calibration.loto_mae:.4f}{_percent(calibration.loto_relative_error)}"
                 f"   predicting the mean AUC: {calibration.mean_mae:.4f}{_percent(calibration.mean_relative_error)}")
    if comparisons:
        labels = Table(title="labels needed: predicted (held out) vs observed, and a doubling schedule's cost")
        for column in ("task", "target", "predicted", "observed", "doubling schedule"):
            labels.add_column(column, justify="left" if column == "task" else "right")
        for row in comparisons:
            schedule = ("not reached" if row["doubling_schedule_labels"] is None else
                        f"{row['doubling_schedule_labels']} ({row['doubling_schedule_rounds']} rounds)")
            labels.add_row(row["task"], f"{row['target']:.0%}", str(row["predicted_labels"]),
                           "not reached" if row["observed_labels"] is None else str(row["observed_labels"]), schedule)
        stdout.print(labels)


def _note_borrowed_paper_coefficients(spec: str, model: str | None) -> None:
    """Say so when the paper's coefficients for one model are applied to another."""
    from tunewise.efficiency.predict import PAPER_COEFFICIENTS, PAPER_PREFIX

    if not spec.startswith(PAPER_PREFIX) or model is None:
        return
    paper_model = PAPER_COEFFICIENTS.get(spec.removeprefix(PAPER_PREFIX).lower())
    if paper_model is None:
        return
    if paper_model.model_id.lower().split("/")[-1] not in model.lower():
        console.print(f"note: these coefficients were fitted on {paper_model.model_id}, not on {model}; "
                      "calibrate them on your own model for a trustworthy estimate", markup=False, highlight=False)


def _task_examples(pool, task: str | None, path: Path):
    """The examples of one task, and its name."""
    tasks = pool.tasks
    if task is None:
        if len(tasks) > 1:
            listed = ", ".join(tasks[:10]) + (" …" if len(tasks) > 10 else "")
            raise TunewiseError(f"the pool has {len(tasks)} tasks", file=path, field="task",
                                fix=f"pick one with --task ({listed})")
        task = tasks[0]
    elif task not in tasks:
        raise TunewiseError(f"no example has task '{task}'", file=path, field="task", fix=did_you_mean(task, tasks))
    return [e for e in pool.examples if e.task == task], task


def _write_to_label(path: Path, examples, confidences, task: str) -> Path:
    """One JSON line per prompt in the pool-reader's prompt/response shape, ready to fill in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example, confidence in zip(examples, confidences):
            single_user_turn = len(example.prompt) == 1 and example.prompt[0]["role"] == "user"
            record = {
                "prompt": example.prompt[0]["content"] if single_user_turn else list(example.prompt),
                "response": example.response,
                "task": task,
                "pool_id": example.id,
                "confidence": float(confidence),
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _read_json(path: Path, fix: str):
    if not path.is_file():
        raise TunewiseError("no such file", file=path, fix=fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunewiseError(f"malformed JSON ({error.msg})", file=path, line=error.lineno, fix=fix) from None


def _read_coslow_file(path: Path) -> dict:
    document = _read_json(path, "pass the coslow.json written by `tunewise coslow`")
    value = document.get("coslow") if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TunewiseError("no numeric 'coslow' value", file=path, field="coslow",
                            fix="pass the coslow.json written by `tunewise coslow`")
    return document


def _read_measured(path: Path, max_budget: int, grid) -> tuple[dict, list[dict]]:
    """Header fields and per-task entries ``{task, coslow, auc, curve, ceiling}`` with AUCs computed."""
    from tunewise.efficiency.curve import curve_auc, parse_curve

    fix = ('write a list of {"task": ..., "coslow": ..., "curve": {"0": 0.4, "50": 0.5, ...}} '
           '(or "auc" instead of "curve")')
    document = _read_json(path, fix)
    header = document if isinstance(document, dict) else {}
    entries = document.get("tasks") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise TunewiseError("expected a non-empty list of tasks (or an object holding one under 'tasks')",
                            file=path, fix=fix)
    tasks = []
    for number, entry in enumerate(entries, start=1):
        where = f"tasks[{number - 1}]"
        if not isinstance(entry, dict) or "task" not in entry or "coslow" not in entry:
            raise TunewiseError("each task needs 'task' and 'coslow'", file=path, field=where, fix=fix)
        name = str(entry["task"])
        coslow_value = entry["coslow"]
        if isinstance(coslow_value, bool) or not isinstance(coslow_value, (int, float)) or not -1 <= coslow_value <= 1:
            raise TunewiseError(f"CoS-Low {coslow_value!r} is not a cosine in [-1, 1]", file=path,
                                field=f"{where}.coslow", fix=fix)
        ceiling = entry.get("ceiling")
        if ceiling is not None and (isinstance(ceiling, bool) or not isinstance(ceiling, (int, float))):
            raise TunewiseError(f"the ceiling {ceiling!r} is not a number", file=path, field=f"{where}.ceiling",
                                fix=fix)
        try:
            if "curve" in entry:
                curve = parse_curve(entry["curve"])
                auc = curve_auc(curve, ceiling=ceiling, max_budget=max_budget, grid=grid)
            elif "auc" in entry:
                curve, auc = None, entry["auc"]
                if isinstance(auc, bool) or not isinstance(auc, (int, float)) or not 0 <= auc <= 1:
                    raise TunewiseError(f"AUC {auc!r} is not a number in [0, 1]", fix=fix)
            else:
                raise TunewiseError("needs a 'curve' or an 'auc'", fix=fix)
        except TunewiseError as error:
            field = f"{where} ({name})" + (f".{error.field}" if error.field else "")
            raise TunewiseError(error.message, file=path, field=field, fix=error.fix) from None
        tasks.append({"task": name, "coslow": float(coslow_value), "auc": float(auc), "curve": curve,
                      "ceiling": ceiling})
    return header, tasks


def _parse_targets(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TunewiseError(f"the targets '{text}' are not comma-separated numbers", field="targets",
                            fix="write them like 0.5,0.8,0.9") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise TunewiseError(f"the targets '{text}' must be fractions in (0, 1]", field="targets",
                            fix="write them like 0.5,0.8,0.9 (fractions of the way from zero-shot to ceiling)")
    return values


def _percent(value: float | None) -> str:
    return "" if value is None else f" ({value:.1f} %)"
