"""``tunewise curve``, ``coslow``, ``estimate`` and ``calibrate``: how many labels a task needs."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.cli.app import JSON_HELP, command, console, print_json, stdout
from tunewise.training.finetune import MAX_SEED
from tunewise.efficiency.curve import DEFAULT_GRID, DEFAULT_MAX_BUDGET
from tunewise.efficiency.coslow import DEFAULT_DIMENSION as DEFAULT_PROJECTION_DIM
from tunewise.cli.options import flag_name, with_pool_options
from tunewise.data.pool import PoolReading, SourcePath
from tunewise.errors import TunewiseError, did_you_mean
from tunewise.io import encode_json, encode_jsonl

TO_LABEL_FILE, COSLOW_FILE = "to_label.jsonl", "coslow.json"
_GRID_TEXT = ",".join(map(str, DEFAULT_GRID))
NO_CEILING = "best measured score (no human or target ceiling)"
_TARGETS_TEXT = "0.5,0.8,0.9"
_OUTPUT_HELP = "Also write the result as JSON (what --json prints) to this file."


@command("curve")
def curve_command(
    curve_file: Path = typer.Argument(..., metavar="CURVE.json",
                                      help='Budgets to scores, {"0": 0.39, "50": 0.41, ...}, or a list of them, '
                                           "one per seed."),
    ceiling: Optional[float] = typer.Option(None,
                                            help="Human or target score (the ceiling is at least the best score)."),
    task: Optional[str] = typer.Option(None, help="Task name: without --ceiling, paper A's released human score "
                                                  "for it is the ceiling when tunewise ships one."),
    max_budget: int = typer.Option(DEFAULT_MAX_BUDGET, help="N: the largest budget counted."),
    grid: str = typer.Option(_GRID_TEXT, help="Budgets the curve should have been measured at."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (key 'auc') and nothing else."),
    plot: Optional[Path] = typer.Option(None, metavar="PNG", help="Also draw the normalised curve to this file."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """Data-efficiency AUC of a measured learning curve (paper A's metric).

    With several seeds, each seed's monotone envelope is taken, then their mean. The budget axis
    ends at the largest budget kept.
    """
    from tunewise.efficiency.curve import normalise_curve, parse_grid, plot_curve, read_curve

    if plot is not None:
        from tunewise.io import check_output_file, refuse_overwriting_inputs

        refuse_overwriting_inputs({"--plot": plot}, {"the curve file": curve_file})
        check_output_file(plot, field="plot", example="--plot curve.png")
    _check_json_output(output, {"the curve file": curve_file, "--plot": plot})
    points = read_curve(curve_file)
    budgets = parse_grid(grid)
    ceiling, ceiling_source = _resolve_ceiling(ceiling, task)
    curve = normalise_curve(points, ceiling=ceiling, max_budget=max_budget, grid=budgets)
    if ceiling is None:
        unknown = f" and tunewise ships no human score for task '{task}'" if task is not None else ""
        _warn_no_ceiling(f"{curve_file.name}: no --ceiling given{unknown}, so the curve is normalised by its best "
                         f"measured score ({curve.ceiling:.4g})")
    if plot is not None:
        plot_curve(points, plot, ceiling=ceiling, max_budget=max_budget, grid=budgets, title=curve_file.stem)
        console.print(f"plot → {plot}", markup=False, highlight=False)
    result = {
            "auc": curve.auc,
            "floor": curve.floor,
            "ceiling": curve.ceiling,
            "ceiling_source": ceiling_source,
            "seeds": curve.seeds,
            "max_budget": max_budget,
            "axis_end": curve.axis_end,
            "grid": list(budgets),
            "budgets": list(curve.budgets),
            "envelope": list(curve.envelope),
            "normalised": list(curve.y),
    }
    _write_json_output(output, result)
    if as_json:
        stdout.print_json(json.dumps(result))
        return
    seeds = [points] if isinstance(points, dict) else points
    table = Table(title=f"{escape(curve_file.name)}: floor {curve.floor:.4g}, ceiling {curve.ceiling:.4g} ({ceiling_source})"
                        + (f", {curve.seeds} seeds" if curve.seeds > 1 else ""))
    for column in ("budget", "measured", "envelope", "normalised"):
        table.add_column(column, justify="right")
    for budget, value, normalised in zip(curve.budgets, curve.envelope, curve.y):
        measured = [seed[budget] for seed in seeds if budget in seed]
        shown = "-" if not measured else " / ".join(f"{score:.4f}" for score in measured)
        table.add_row(str(budget), shown, f"{value:.4f}", f"{normalised:.3f}")
    stdout.print(table)
    if curve.axis_end != max_budget:
        stdout.print(f"the budget axis ends at {curve.axis_end}, the largest budget kept (N = {max_budget} is "
                     "neither measured nor on the grid)")
    stdout.print(f"data-efficiency AUC: {curve.auc:.4f}")


@command("coslow")
@with_pool_options()
def coslow_command(
    pool: Path = typer.Argument(..., parser=SourcePath, help="Pool file of the task (unlabelled or labelled)."),
    task: Optional[str] = typer.Option(None, help="Task to measure (needed when the pool has several)."),
    task_field: Optional[str] = typer.Option(None, help="Record field holding the task name."),
    model: str = typer.Option("smollm2", help="smollm2 (bundled SmolLM2-135M-Instruct Q4_1), tiny-random, or a "
                                              "model folder."),
    labelled: Optional[Path] = typer.Option(None, metavar="LABELLED.jsonl",
                                            help="to_label.jsonl with responses filled in."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seeds the samples of prompts and the LoRA A matrices."),
    output_dir: Path = typer.Option(Path("."), "-o", "--output", "--output-dir",
                                    help="Where to write to_label.jsonl / coslow.json."),
    allow_small_pool: bool = typer.Option(
        False, help="Accept fewer than 320 prompts: sample from the 32 least confident (not the paper's protocol)."
    ),
    confidence_metric: str = typer.Option(
        "confidence", help="How the least confident prompts are found: confidence (lowest mean probability of the "
                           "answer tokens) or confidence_ppl (highest perplexity of the answer); paper A offers both."),
    include_eos: bool = typer.Option(False, help="Keep the end-of-turn token in the gradient's loss (paper A "
                                                 "leaves it out)."),
    random_sample: bool = typer.Option(True, "--random/--no-random",
                                       help="Also measure CoS-Rand, the same on 32 random prompts (paper A's control; "
                                            "an unlabelled pool then needs those labelled too)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), "
                                           "fp32, bf16. Gradients accumulate in fp32 either way."),
    projection_dim: int = typer.Option(
        DEFAULT_PROJECTION_DIM, min=0, help="Project each gradient to this many numbers (seeded); 0 keeps the full "
                                            "LoRA-B gradient (exact; memory grows with the model)."),
    gradient_batch_tokens: int = typer.Option(
        0, min=0, help="Tokens per shared forward/backward pass of the gradients (0: 512 on a CPU, 2048 on a GPU, "
                       "fewer where the activations would outweigh 1/8 of the weights); "
                       "more is faster until memory runs out, the values do not change."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    reading: PoolReading = None,
) -> None:
    """CoS-Low of a task: pick the 32 prompts to label, then measure their gradient similarity.

    coslow.json also holds CoS-Rand (``coslow_random``), the mean gradient norm (``grad_norm``) and
    the pool's mean confidence (``mean_confidence``): the predictors paper A compares CoS-Low with.
    """
    import numpy as np

    from tunewise import __version__
    from tunewise.model import load_backend
    from tunewise.model.load import describe_model
    from tunewise.cli.progress import progress_bar
    from tunewise.efficiency.coslow import (CONFIDENCE_METRICS, DEFAULT_K, coslow, lowest_confidence_prompts,
                                            random_prompts)
    from tunewise.indicators.score import score
    from tunewise.io import RunFolder

    folder = RunFolder(output_dir)
    # The first step writes to_label.jsonl; the second reads it back filled in and writes coslow.json.
    folder.check([COSLOW_FILE] if labelled is not None else [TO_LABEL_FILE, COSLOW_FILE],
                 inputs={"the pool": pool, "--labelled": labelled})
    if confidence_metric not in CONFIDENCE_METRICS:
        raise TunewiseError(f"unknown confidence metric '{confidence_metric}'", field="confidence_metric",
                            fix=did_you_mean(confidence_metric, CONFIDENCE_METRICS))
    pool_examples, task_name = _task_examples(reading.read(pool, task_field), task, pool)
    source = {"pool": str(pool)}
    if labelled is not None:
        samples = _read_labelled_samples(labelled)
        task_name = task or samples["low_confidence"][0].metadata.get("task") or task_name
        source["labelled"] = str(labelled)
    console.print(f"loading {describe_model(model)} …", markup=False, highlight=False)
    backend = load_backend(model, device=device, dtype=dtype)
    if not hasattr(backend, "loaded"):
        raise TunewiseError(f"CoS-Low needs the gradients of a real model, and '{model}' has none", field="model",
                            fix="use --model smollm2, tiny-random or a model folder")
    indicators = sorted({"confidence", confidence_metric})
    with progress_bar("answering prompts", unit="prompts") as update:
        table = score(pool_examples, backend, indicators, progress=update)
    confidence = table.scores["confidence"].to_numpy(dtype=np.float64)
    ranking = table.scores[confidence_metric].to_numpy(dtype=np.float64)
    if labelled is None:
        low = lowest_confidence_prompts(ranking, k=DEFAULT_K, seed=seed, allow_small_pool=allow_small_pool,
                                        metric=confidence_metric)
        rand = random_prompts(len(pool_examples), k=DEFAULT_K, seed=seed) if random_sample else []
        samples = {"low_confidence": list(table.take(low).examples), "random": list(table.take(rand).examples)}
        if any(e.response is None for group in samples.values() for e in group):
            path = output_dir / TO_LABEL_FILE
            folder.write({TO_LABEL_FILE: _to_label_records(table, confidence_metric, low, rand, task_name)})
            field_flags = "".join(f" {flag_name(name)}" + ("" if value is True else f" {shlex.quote(value)}")
                                  for name, value in reading.used().items())
            console.print(
                f"wrote the prompts to label for task '{task_name}' → {path}\n"
                "next: write the correct answer in the 'response' field of every line, then run\n"
                f"  tunewise coslow {pool}{f' --task-field {task_field}' if task_field else ''}{field_flags}"
                f"{f' --task {task}' if task else ''} --labelled {path} --model {model} --seed {seed} -o {output_dir}",
                markup=False,
                highlight=False,
            )
            return
    results = {}
    for name, group in samples.items():
        if not group or (name == "random" and not random_sample):
            continue
        with progress_bar(f"gradients ({name.replace('_', ' ')})") as update:
            results[name] = coslow(backend.loaded.model, backend.loaded.tokenizer, [list(e.prompt) for e in group],
                                   [e.response for e in group], seed=seed, include_eos=include_eos,
                                   dimension=projection_dim or None, max_batch_tokens=gradient_batch_tokens or None,
                                   progress=lambda done, total=len(group): update(done, total))
    for result in results.values():
        if not all(math.isfinite(value) for value in [result["coslow"], *result["cosines"]]):
            raise TunewiseError("some gradient cosines are not finite numbers (a gradient was zero or overflowed), "
                                "so there is no CoS-Low to report", field="coslow",
                                fix="check the labelled answers (an empty or one-token answer has almost no gradient)")
    result = results["low_confidence"]
    finite = confidence[np.isfinite(confidence)]
    document = {
        "coslow": result["coslow"],
        "coslow_random": results["random"]["coslow"] if "random" in results else None,
        "grad_norm": result["grad_norm"],
        "grad_norm_random": results["random"]["grad_norm"] if "random" in results else None,
        "mean_confidence": float(finite.mean()) if finite.size else None,
        "k": result["n"],
        "task": task_name,
        "model": model,
        "model_description": describe_model(model),
        "model_fingerprint": backend.fingerprint,
        "seed": seed,
        "confidence_metric": confidence_metric,
        "include_eos": include_eos,
        "lora_rank": result["rank"],
        "lora_alpha": result["alpha"],
        "lora_target_modules": result["target_modules"],
        "dimension": result["dimension"],
        "gradient_dimension": result["gradient_dimension"],
        "projection_std": result["projection_std"],
        "dtype": str(backend.loaded.dtype).removeprefix("torch."),
        "seconds": sum(r["seconds"] for r in results.values()),
        "peak_memory_bytes": max(r["peak_memory"] for r in results.values()),
        "peak_memory_kind": result["peak_memory_kind"],
        "examples": [e.id for e in samples["low_confidence"]],
        "examples_random": [e.id for e in samples.get("random", [])] if "random" in results else None,
        "cosines": result["cosines"],
        **source,
        **reading.provenance(),
        "tunewise_version": __version__,
    }
    path = output_dir / COSLOW_FILE
    folder.write({COSLOW_FILE: encode_json(document)})
    if as_json:
        print_json({**document, "output": str(path)})
        return
    line = (f"CoS-Low of task '{task_name}': {result['coslow']:.4f} (median of {len(result['cosines'])} pairwise "
            f"cosines over {result['n']} examples")
    if "random" in results:
        line += f"; CoS-Rand {results['random']['coslow']:.4f}"
    stdout.print(f"{line}; {document['seconds']:.1f} s) → {path}", markup=False, highlight=False)
    console.print(f"next: tunewise estimate --coslow-file {path}", markup=False, highlight=False)


@command("estimate")
def estimate_command(
    coslow_value: Optional[float] = typer.Option(None, "--coslow", help="A CoS-Low value."),
    coslow_file: Optional[Path] = typer.Option(None, help="coslow.json written by `tunewise coslow`."),
    coefficients: Optional[str] = typer.Option(
        None, help="paper:llama-3.1-8b | paper:mistral-7b | paper:qwen2.5-14b, or a calibration file."
    ),
    model: Optional[str] = typer.Option(None, help="Model the CoS-Low was measured with (default: from the file)."),
    targets: Optional[str] = typer.Option(
        None, help=f"Normalised targets τ: fractions of the way from zero-shot to ceiling (default {_TARGETS_TEXT})."),
    target_accuracy: Optional[str] = typer.Option(
        None, help="Raw target score(s) instead of τ, e.g. 0.8 (needs --zero-shot and --ceiling): "
                   "τ = (target − zero-shot) / (ceiling − zero-shot)."),
    zero_shot: Optional[float] = typer.Option(None, help="The task's zero-shot score (for --target-accuracy)."),
    ceiling: Optional[float] = typer.Option(None, help="The task's ceiling, the human or target score (for "
                                                       "--target-accuracy); paper A uses max(human, best measured)."),
    max_budget: Optional[int] = typer.Option(
        None, help="N: the largest budget of the predicted curve (default: the N the coefficients were fitted "
                   f"with; {DEFAULT_MAX_BUDGET} for the paper's)."),
    grid: Optional[str] = typer.Option(None, help="Budgets at which to show the predicted curve (default: the "
                                                  "coefficients' grid)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=_OUTPUT_HELP),
) -> None:
    """Predicted AUC, learning curve and labels needed for a task, from its CoS-Low."""
    from tunewise.efficiency.curve import normalised_log_budget, parse_grid
    from tunewise.efficiency.predict import (coefficients_for, labels_needed, load_coefficients, normalised_target,
                                             predict_auc, predicted_curve)

    if (coslow_value is None) == (coslow_file is None):
        raise TunewiseError("give exactly one of --coslow and --coslow-file", field="coslow",
                            fix="e.g. --coslow-file coslow.json")
    _check_json_output(output, {"--coslow-file": coslow_file, "--coefficients": coefficients})
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
    max_budget = chosen.max_budget if max_budget is None else max_budget
    auc = predict_auc(coslow_value, chosen)
    budgets = chosen.grid if grid is None else parse_grid(grid)
    raw_targets = None
    if target_accuracy is not None:
        if targets is not None:
            raise TunewiseError("give either --targets (fractions of the way to the ceiling) or --target-accuracy "
                                "(raw scores), not both", field="targets", fix="drop one of them")
        if zero_shot is None or ceiling is None:
            raise TunewiseError("--target-accuracy needs the task's --zero-shot score and its --ceiling",
                                field="target_accuracy", fix="e.g. --target-accuracy 0.8 --zero-shot 0.4 --ceiling 0.92")
        raw_targets = _parse_numbers(target_accuracy, "target_accuracy")
        tau_values = [normalised_target(target, zero_shot, ceiling) for target in raw_targets]
    else:
        if zero_shot is not None or ceiling is not None:
            raise TunewiseError("--zero-shot and --ceiling only convert --target-accuracy", field="target_accuracy",
                                fix="add --target-accuracy, or drop --zero-shot / --ceiling")
        tau_values = _parse_targets(targets or _TARGETS_TEXT)
    curve = {n: float(predicted_curve(auc, normalised_log_budget(n, max_budget))) for n in budgets if n <= max_budget}
    needed = {tau: labels_needed(auc, tau, max_budget) for tau in tau_values}
    result = {
            "coslow": coslow_value,
            "predicted_auc": auc,
            "coefficients": {"slope": chosen.slope, "intercept": chosen.intercept, "source": chosen.source,
                             "caveat": chosen.caveat},
            "max_budget": max_budget,
            "predicted_curve": {str(n): y for n, y in curve.items()},
            "labels_needed": {str(tau): math.ceil(n) for tau, n in needed.items()},
            **({} if raw_targets is None else {"target_accuracy": {
                str(raw): {"tau": tau, "labels_needed": math.ceil(needed[tau])}
                for raw, tau in zip(raw_targets, tau_values)}, "zero_shot": zero_shot, "ceiling": ceiling}),
    }
    _write_json_output(output, result)
    if as_json:
        stdout.print_json(json.dumps(result))
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
    if raw_targets is not None:
        for raw, tau in zip(raw_targets, tau_values):
            stdout.print(f"to reach a score of {raw:g} ({tau:.0%} of the way from zero-shot {zero_shot:g} to ceiling "
                         f"{ceiling:g}): about {math.ceil(needed[tau])} labels")
    else:
        for tau, n in needed.items():
            stdout.print(f"to reach {tau:.0%} of the way to the ceiling: about {math.ceil(n)} labels")
    if chosen.caveat:
        # Beside the numbers it qualifies, on the same stream, so that -q (which silences stderr) or
        # a redirect never leaves a labels-needed figure without it.
        stdout.print(f"caveat: {chosen.caveat}", markup=False, highlight=False)


@command("calibrate")
def calibrate_command(
    measured: Path = typer.Argument(..., metavar="MEASURED.json",
                                    help="Per task: {task, coslow, ceiling, curve: {budget: score}} (or 'curves': one "
                                         "per seed, or 'auc'); optional coslow_random, grad_norm, mean_confidence."),
    output: Path = typer.Option(..., "-o", "--output", help="Calibration file to write (JSON)."),
    model: Optional[str] = typer.Option(None, help="Model the curves and CoS-Low belong to (default: from the file)."),
    targets: str = typer.Option(_TARGETS_TEXT, help="Targets τ for the labels-needed comparison."),
    max_budget: int = typer.Option(DEFAULT_MAX_BUDGET, help="N used for the AUC."),
    grid: str = typer.Option(_GRID_TEXT, help="Grid used for the AUC."),
    schedule_start: int = typer.Option(50, min=1, help="First budget of the doubling schedule compared against."),
    paper_ceilings: bool = typer.Option(True, "--paper-ceilings/--no-paper-ceilings",
                                        help="A task without a 'ceiling' gets paper A's released human score when "
                                             "tunewise ships one for its exact name."),
    allow_no_ceiling: bool = typer.Option(False, "--allow-no-ceiling",
                                          help="Fit tasks with no ceiling anyway, normalised by their best measured "
                                               "score (not paper A's scale; warns)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Fit the CoS-Low → AUC coefficients of a model from tasks with measured curves.

    Reports the leave-one-task-out absolute error in AUC points first (the unit of paper A's 8.6
    for CoS-Low and 12.5 for predicting the mean), the relative error second, the correlation of
    every predictor column with the AUC, and the spread of the coefficients over the folds.
    """
    from tunewise import __version__
    from tunewise.efficiency.curve import parse_grid
    from tunewise.efficiency.predict import (calibrate, calibration_summary, doubling_schedule_cost, labels_needed,
                                             observed_labels_needed, predict_auc, write_calibration)
    from tunewise.io import check_output_file, refuse_overwriting_inputs

    refuse_overwriting_inputs({"-o": output}, {"the measured file": measured})
    check_output_file(output, example="-o calibration.json")

    budgets = parse_grid(grid)
    tau_values = _parse_targets(targets)
    header, tasks = _read_measured(measured, max_budget, budgets, paper_ceilings)
    without = list(dict.fromkeys(t["task"] for t in tasks if t["ceiling"] is None))
    if without and not allow_no_ceiling:
        listed = ", ".join(without[:8]) + (" …" if len(without) > 8 else "")
        raise TunewiseError(
            f"{len(without)} of {len({t['task'] for t in tasks})} tasks have no human or target ceiling ({listed}); "
            "paper A normalises every curve by max(human score, best measured score), and the best measured score "
            "alone inflates early gains", file=measured, field="ceiling",
            fix='add "ceiling": SCORE (the human or target score, e.g. 1.0 where a perfect score is the aim) to each '
                "of these tasks, or pass --allow-no-ceiling to normalise them by their best measured score")
    if without:
        _warn_no_ceiling(f"{len(without)} task(s) have no human or target ceiling ({', '.join(without)}); "
                         "--allow-no-ceiling normalises them by their best measured score",
                         fix='give each a "ceiling" in the measured file')
    calibration = calibrate(tasks,
                            source=f"{output} (calibrated on {model or header.get('model') or 'an unnamed model'})",
                            max_budget=max_budget, grid=budgets)
    ceilings = {t["task"]: {"ceiling": t["ceiling"], "source": t["ceiling_source"]} for t in tasks}
    calibration = replace(calibration, metadata={
        "model": model or header.get("model"),
        "model_fingerprint": header.get("model_fingerprint"),
        "max_budget": max_budget,
        "grid": list(budgets),
        "measured": str(measured),
        "ceilings": ceilings,
        "tasks_without_ceiling": without,
        "tunewise_version": __version__,
    })
    write_calibration(calibration, output)
    held_out = {fit.task: predict_auc(fit.coslow, (fit.loto_slope, fit.loto_intercept)) for fit in calibration.tasks}
    comparisons = []
    for entry in tasks:
        if entry.get("curve") is None:
            continue
        for tau in tau_values:
            observed = observed_labels_needed(entry["curve"], tau, entry["ceiling"], max_budget, budgets)
            schedule = doubling_schedule_cost(entry["curve"], tau, schedule_start, entry["ceiling"], max_budget, budgets)
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
        **calibration_summary(calibration),
        "tasks": len({fit.task for fit in calibration.tasks}),
        "ceilings": ceilings,
        "tasks_without_ceiling": without,
        "calibration_file": str(output),
        "labels_needed": comparisons,
    }
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    fits = Table(title="leave-one-task-out predictions")
    for column in ("task", "CoS-Low", "measured AUC", "predicted AUC", "mean of others", "ceiling"):
        fits.add_column(column, justify="left" if column in ("task", "ceiling") else "right")
    for fit in calibration.tasks:
        entry = ceilings[fit.task]
        fits.add_row(escape(fit.task), f"{fit.coslow:.4f}", f"{fit.measured_auc:.4f}", f"{fit.loto_predicted_auc:.4f}",
                     f"{fit.loto_mean_auc:.4f}",
                     "none" if entry["ceiling"] is None else f"{entry['ceiling']:g} ({entry['source']})")
    stdout.print(fits)
    stdout.print(f"AUC' = {calibration.coefficients.slope:.4f} · CoS-Low + {calibration.coefficients.intercept:.4f}"
                 f"  ({summary['tasks']} tasks) → {output}", markup=False, highlight=False)
    stdout.print(f"leave-one-task-out absolute error: {summary['loto_mae_points']:.1f} AUC points; predicting the mean "
                 f"AUC: {summary['mean_predictor_mae_points']:.1f} (the unit of paper A's 8.6 against 12.5)",
                 markup=False, highlight=False)
    stdout.print(f"relative error (|error| / AUC, not comparable with paper A's figures): "
                 f"{_percent_or_undefined(calibration.loto_relative_error)}; predicting the mean AUC: "
                 f"{_percent_or_undefined(calibration.mean_relative_error)}", markup=False, highlight=False)
    predictors = Table(title="predictors against the measured AUC (leave-one-task-out errors in AUC points)")
    for column in ("predictor", "tasks", "Pearson r", "Spearman ρ", "LOTO error", "mean predictor"):
        predictors.add_column(column, justify="left" if column == "predictor" else "right")
    for report in calibration.predictors:
        predictors.add_row(report.predictor, str(report.tasks), _number(report.pearson, "+.3f"),
                           _number(report.spearman, "+.3f"), _number(report.loto_mae, ".1f", 100),
                           _number(report.mean_mae, ".1f", 100))
    stdout.print(predictors)
    if calibration.slope_spread is not None:
        stdout.print(f"coefficients over the {summary['tasks']} leave-one-task-out folds: "
                     + "; ".join(f"{name} {entry['min']:.4f} … {entry['max']:.4f} (std {_number(entry['std'], '.4f')})"
                                 for name, entry in summary['coefficient_spread'].items()), markup=False, highlight=False)
    if comparisons:
        labels = Table(title="labels needed: predicted (held out) vs observed, and a doubling schedule's cost")
        for column in ("task", "target", "predicted", "observed", "doubling schedule"):
            labels.add_column(column, justify="left" if column == "task" else "right")
        for row in comparisons:
            schedule = ("not reached" if row["doubling_schedule_labels"] is None else
                        f"{row['doubling_schedule_labels']} ({row['doubling_schedule_rounds']} rounds)")
            labels.add_row(escape(row["task"]), f"{row['target']:.0%}", str(row["predicted_labels"]),
                           "not reached" if row["observed_labels"] is None else str(row["observed_labels"]), schedule)
        stdout.print(labels)


def _check_json_output(output: Path | None, inputs: dict) -> None:
    """Before any work: ``-o`` ends in .json, can be written, and is none of the ``inputs``."""
    if output is None:
        return
    from tunewise.io import check_output_file, refuse_overwriting_inputs

    if output.suffix.lower() != ".json":
        raise TunewiseError(f"-o writes the result as JSON, and '{output.name}' does not end in .json",
                            file=str(output), field="output", fix=f"pass -o {output.with_suffix('.json')}")
    refuse_overwriting_inputs({"-o": output}, {name: path for name, path in inputs.items()
                                               if path is not None and Path(path).exists()})
    check_output_file(output, example="-o result.json")


def _write_json_output(output: Path | None, result: dict) -> None:
    """Write ``result`` atomically to ``-o`` when one was given (the one JSON that ``--json`` prints)."""
    if output is None:
        return
    from tunewise.io import write_json

    write_json(output, result)
    console.print(f"result → {output}", markup=False, highlight=False)


def _resolve_ceiling(ceiling: float | None, task: str | None) -> tuple[float | None, str]:
    """The ceiling to normalise by and where it comes from: the user's, paper A's human score for
    ``task``, or none (the best measured score then stands in)."""
    if ceiling is not None:
        return ceiling, "given"
    if task is not None:
        from tunewise.efficiency.ceilings import human_ceiling

        known = human_ceiling(task)
        if known is not None:
            return known.score, known.describe()
    return None, NO_CEILING


def _warn_no_ceiling(what: str, fix: str = "pass the human or target score with --ceiling") -> None:
    console.print(f"[bold yellow]WARNING:[/] {escape(what)}. That is not paper A's normalisation (it used human "
                  f"scores), inflates early gains, and the AUC cannot be set beside the paper's; {escape(fix)}.",
                  highlight=False, soft_wrap=True)


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


def _to_label_records(table, metric: str, low, rand, task: str) -> bytes:
    """One JSON line per prompt to label (rows of the scored ``table``): the to-label record of
    :func:`tunewise.data.label.to_label_records` (prompt, task, the pool's content id, the user's
    own id and fields), the response where the pool had one, ``sample`` (the low-confidence sample
    first, then the random one; ``both`` for a prompt in both) and its ``metric`` score."""
    from tunewise.data.label import to_label_records

    membership = {position: "low_confidence" for position in low}
    for position in rand:
        membership[position] = "both" if position in membership else "random"
    examples = [table.examples[position] for position in membership]
    records = []
    for record, example, (position, sample) in zip(to_label_records(examples), examples, membership.items()):
        value = float(table.scores[metric].iloc[position])
        records.append({**record, "response": example.response, "sample": sample,
                        # NaN (no answer could be scored) is not JSON: written as null.
                        metric: value if math.isfinite(value) else None})
    return encode_jsonl(records)


def _read_labelled_samples(path: Path) -> dict[str, list]:
    """The labelled file's examples split into the low-confidence and the random sample.

    A line without ``sample`` (files written before CoS-Rand) belongs to the low-confidence one.
    """
    from tunewise.data.pool import read_pool

    examples = read_pool(path).examples
    unanswered = [i for i, e in enumerate(examples, start=1) if e.response is None]
    if unanswered:
        listed = ", ".join(map(str, unanswered[:5])) + (" …" if len(unanswered) > 5 else "")
        raise TunewiseError(f"{len(unanswered)} of {len(examples)} examples have no response yet "
                            f"(examples {listed})",
                            file=path, field="response",
                            fix="fill in 'response' on every line, then run this command again")
    samples: dict[str, list] = {"low_confidence": [], "random": []}
    for line, example in enumerate(examples, start=1):
        sample = example.metadata.get("sample", "low_confidence")
        if sample not in ("low_confidence", "random", "both"):
            raise TunewiseError(f"unknown sample {sample!r}", file=path, line=line, field="sample",
                                fix="use the to_label.jsonl written by `tunewise coslow` unchanged but for the answers")
        if sample in ("low_confidence", "both"):
            samples["low_confidence"].append(example)
        if sample in ("random", "both"):
            samples["random"].append(example)
    if len(samples["low_confidence"]) < 2:
        raise TunewiseError("fewer than 2 low-confidence examples", file=path, field="sample",
                            fix="use the to_label.jsonl written by `tunewise coslow`")
    return samples


def _read_json(path: Path, fix: str):
    if not path.is_file():
        raise TunewiseError("no such file", file=path, fix=fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunewiseError(f"malformed JSON ({error.msg})", file=path, line=error.lineno, fix=fix) from None
    except UnicodeDecodeError as error:
        raise TunewiseError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=path,
                            fix=fix + " (re-encode the file as UTF-8)") from None


def _read_coslow_file(path: Path) -> dict:
    document = _read_json(path, "pass the coslow.json written by `tunewise coslow`")
    value = document.get("coslow") if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TunewiseError("no numeric 'coslow' value", file=path, field="coslow",
                            fix="pass the coslow.json written by `tunewise coslow`")
    return document


def _read_measured(path: Path, max_budget: int, grid, paper_ceilings: bool = True) -> tuple[dict, list[dict]]:
    """Header fields and per-task rows ``{task, coslow, auc, curve, ceiling, ceiling_source, <predictors>}``.

    A task's curve is ``curve`` (one seed) or ``curves`` (a list, one per seed), its AUC computed
    here with its ceiling; or an ``auc`` already computed, whose ``ceiling`` then says what it was
    normalised by. The ceiling is the task's ``ceiling`` field, else (``paper_ceilings``) paper A's
    human score for its exact name, else None.
    """
    from tunewise.efficiency.ceilings import human_ceiling
    from tunewise.efficiency.curve import normalise_curve, parse_curves
    from tunewise.efficiency.predict import PREDICTORS

    fix = ('write a list of {"task": ..., "coslow": ..., "ceiling": ..., "curve": {"0": 0.4, "50": 0.5, ...}} '
           '("curves": [...] for several seeds, or "auc" instead of "curve")')
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
        for predictor in PREDICTORS:
            value = entry.get(predictor)
            if predictor != "coslow" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TunewiseError(f"{predictor} {value!r} is not a finite number", file=path,
                                    field=f"{where}.{predictor}", fix=fix)
        if not -1 <= entry["coslow"] <= 1:
            raise TunewiseError(f"CoS-Low {entry['coslow']!r} is not a cosine in [-1, 1]", file=path,
                                field=f"{where}.coslow", fix=fix)
        ceiling, source = entry.get("ceiling"), "measured file"
        if ceiling is not None and (isinstance(ceiling, bool) or not isinstance(ceiling, (int, float))
                                    or not math.isfinite(ceiling)):
            raise TunewiseError(f"the ceiling {ceiling!r} is not a number", file=path, field=f"{where}.ceiling",
                                fix=fix)
        try:
            if "curve" in entry or "curves" in entry:
                if "curve" in entry and "curves" in entry:
                    raise TunewiseError("give 'curve' (one seed) or 'curves' (one per seed), not both", fix=fix)
                if "curves" in entry and not isinstance(entry["curves"], list):
                    raise TunewiseError("'curves' must be a list of curves, one per seed", fix=fix)
                curve = parse_curves(entry["curve"] if "curve" in entry else entry["curves"])
                if ceiling is None and paper_ceilings and human_ceiling(name) is not None:
                    ceiling, source = human_ceiling(name).score, human_ceiling(name).describe()
                normalised = normalise_curve(curve, ceiling=ceiling, max_budget=max_budget, grid=grid)
                if normalised.axis_end != max_budget:
                    raise TunewiseError(
                        f"the curve's largest budget kept is {normalised.axis_end}, not N = {max_budget}, so its AUC "
                        "is on a different axis from the calibration's", field="curve",
                        fix=f"pass --max-budget {normalised.axis_end}, or add {max_budget} to --grid")
                auc = normalised.auc
            elif "auc" in entry:
                curve, auc = None, entry["auc"]
                if isinstance(auc, bool) or not isinstance(auc, (int, float)) or not 0 <= auc <= 1:
                    raise TunewiseError(f"AUC {auc!r} is not a number in [0, 1]", fix=fix)
            else:
                raise TunewiseError("needs a 'curve', 'curves' or an 'auc'", fix=fix)
        except TunewiseError as error:
            field = f"{where} ({name})" + (f".{error.field}" if error.field else "")
            raise TunewiseError(error.message, file=path, field=field, fix=error.fix) from None
        tasks.append({"task": name, "auc": float(auc), "curve": curve, "ceiling": ceiling,
                      "ceiling_source": source if ceiling is not None else NO_CEILING,
                      **{p: None if entry.get(p) is None else float(entry[p]) for p in PREDICTORS}})
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


def _parse_numbers(text: str, field: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TunewiseError(f"'{text}' is not a comma-separated list of numbers", field=field,
                            fix="write it like 0.8 or 0.7,0.8") from None
    if not values:
        raise TunewiseError("no number given", field=field, fix="write it like 0.8 or 0.7,0.8")
    return values


def _percent_or_undefined(value: float | None) -> str:
    return "undefined (a measured AUC is 0)" if value is None else f"{value:.1f} %"


def _number(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(scale * value, spec)
