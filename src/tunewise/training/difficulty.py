"""Calibrate the difficulty window from real fine-tunes (DESIGN.md §3, paper C).

A small grid of fine-tunes, budgets × fixed window centres, runs as one sweep of
``difficulty_window:c0=<centre>,beta=0,difficulty=<column>`` strategies (β = 0 pins the window at
``c0`` whatever the budget). The default centres 0.15 / 0.5 / 0.85 sit near the middles of paper C's
easy, medium and hard thirds, and the default difficulty is the paper's: response length in tokens.
The centre that scores best at each budget says where the window belongs for that budget,
and :func:`~tunewise.select.fit_window_centre` turns those into the c0 and β that
``difficulty_window`` takes. Results land in ``RUN_DIR/difficulty_calibration.json`` beside the
sweep's own files, so the grid resumes like any sweep.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from tunewise.errors import TunewiseError
from tunewise.io import write_json
from tunewise.select.difficulty import DEFAULT_DIFFICULTY
from tunewise.training.sweep import BASELINE, read_runs, run_sweep

CALIBRATION_FILE = "difficulty_calibration.json"
DEFAULT_WINDOWS = (0.15, 0.5, 0.85)


def window_spec(centre: float, difficulty: str = DEFAULT_DIFFICULTY) -> str:
    """The sweep strategy spec of a window fixed at ``centre``, e.g.
    ``difficulty_window:c0=0.15,beta=0,difficulty=length``; the difficulty is always named, so a
    sweep folder never mixes runs made under different default difficulties."""
    return f"difficulty_window:c0={centre:g},beta=0,difficulty={difficulty}"


def calibrate_difficulty(
    pool,
    test,
    budgets: Sequence[int],
    model_name: str,
    run_dir: str | os.PathLike,
    windows: Sequence[float] = DEFAULT_WINDOWS,
    seeds: Sequence[int] = (0,),
    finetune_config=None,
    *,
    difficulty: str = DEFAULT_DIFFICULTY,
    provenance: Mapping | None = None,
    **sweep_options,
) -> dict:
    """Run the budgets × windows grid of fine-tunes and fit the difficulty window's c0 and β.

    Parameters
    ----------
    pool, test, model_name, finetune_config:
        As for :func:`tunewise.training.sweep.run_sweep`.
    budgets:
        At least two different budgets (three in DESIGN.md's recipe).
    windows:
        Fixed window centres, difficulty quantiles in [0, 1] (easy, medium, hard by default).
    seeds:
        Each (window, budget) scores the mean over these seeds.
    run_dir:
        The sweep folder; finished runs are kept and a rerun resumes. It may also hold runs of
        other strategies (e.g. ``random`` at the same budgets), which are reported beside the grid.
    difficulty:
        What the windows rank by: ``length`` (response tokens, paper C's measure), ``cot_length`` or
        ``loss``.
    provenance:
        Facts about the inputs recorded in the calibration as given (e.g. ``{"columns": ...}``, the
        pool's field mapping).
    sweep_options:
        Passed to :func:`tunewise.training.sweep.run_sweep` (device, dtype, metric, max_new_tokens, …).

    The fit uses ``n0`` = the geometric mean of the budgets, so that ``c0`` is the mean best centre
    (the least-squares line passes through the mean point) and stays within [0, 1]. Where windows
    tie for best at a budget, that budget's best centre is the mean of the tied ones.

    Returns the calibration written to ``RUN_DIR/difficulty_calibration.json``.
    """
    from tunewise.select import fit_window_centre

    windows = _check_windows(windows)
    if len(set(budgets)) < 2:
        raise TunewiseError("calibrating the window needs two or more different budgets", field="budgets",
                            fix="pass three budgets, e.g. --budgets 100,300,1000")
    specs = {window_spec(centre, difficulty): centre for centre in windows}
    run_sweep(pool, test, budgets, list(specs), seeds, model_name, run_dir, finetune_config, **sweep_options)

    zero_shot, records = read_runs(run_dir)
    budgets, seeds = sorted(budgets), sorted(seeds)
    grid = {spec: _scores_by_budget(records, spec, budgets, seeds) for spec in specs}
    best = {}
    for budget in budgets:
        scores = {specs[spec]: grid[spec][str(budget)]["score"] for spec in specs}
        top = max(scores.values())
        tied = [centre for centre, score in scores.items() if math.isclose(score, top, abs_tol=1e-12)]
        best[str(budget)] = {"best_centre": sum(tied) / len(tied), "tied": len(tied) > 1,
                             "scores": {f"{centre:g}": score for centre, score in scores.items()}}

    n0 = 10 ** (sum(math.log10(b) for b in budgets) / len(budgets))
    fitted = fit_window_centre(budgets, [best[str(b)]["best_centre"] for b in budgets], n0=n0)
    random_runs = [r for r in records if r["strategy"] == BASELINE and r["budget"] in budgets]
    calibration = {
        "c0": fitted.c0,
        "beta": fitted.beta,
        "n0": fitted.n0,
        "difficulty": difficulty,
        "model": model_name,
        "budgets": budgets,
        "windows": windows,
        "seeds": seeds,
        "best": best,
        "grid": {f"{specs[spec]:g}": {"strategy": spec, "scores": scores} for spec, scores in grid.items()},
        "random": _scores_by_budget(random_runs, BASELINE, budgets, seeds) if random_runs else None,
        "zero_shot": None if zero_shot is None else zero_shot["score"],
        "select_command": select_command(fitted, difficulty),
        **(provenance or {}),
    }
    write_json(Path(run_dir) / CALIBRATION_FILE, calibration)
    return calibration


def select_command(centre, difficulty: str = DEFAULT_DIFFICULTY) -> str:
    """The ``tunewise select`` line that applies a fitted :class:`~tunewise.select.WindowCentre`."""
    return (f"tunewise select SCORES --budget N --strategy difficulty_window "
            f"--c0 {centre.c0:.4g} --beta {centre.beta:.4g} --n0 {centre.n0:.4g} --difficulty {difficulty}")


def _check_windows(windows: Sequence[float]) -> list[float]:
    windows = sorted(float(centre) for centre in windows)
    if len(windows) < 2 or len(set(windows)) != len(windows) or not all(0 <= c <= 1 for c in windows):
        raise TunewiseError(f"windows {windows} must be two or more different centres in [0, 1]", field="windows",
                            fix="pass e.g. --windows 0.15,0.5,0.85 (easy, medium, hard)")
    return windows


def _scores_by_budget(records: list[dict], strategy: str, budgets: list[int], seeds: list[int]) -> dict:
    """budget → mean score over ``seeds``, the per-seed scores, each run's test-set stderr and the
    number of test examples; budgets without runs of ``strategy`` are left out."""
    by_budget = {}
    for budget in budgets:
        runs = sorted((r for r in records
                       if r["strategy"] == strategy and r["budget"] == budget and r["seed"] in seeds),
                      key=lambda r: r["seed"])
        if runs:
            by_budget[str(budget)] = {
                "score": sum(r["score"] for r in runs) / len(runs),
                "per_seed": {str(r["seed"]): r["score"] for r in runs},
                "stderr_per_seed": {str(r["seed"]): _stderr(r) for r in runs},
                "n_test": sum(entry["n"] for entry in runs[0]["results"].values()),
            }
    return by_budget


def _stderr(record: dict) -> float | None:
    """The test-set standard error of a single-task run's score (None across several tasks)."""
    if len(record["results"]) != 1:
        return None
    (entry,) = record["results"].values()
    return entry.get(f"{entry['metric']}_stderr")


__all__ = ["CALIBRATION_FILE", "DEFAULT_WINDOWS", "calibrate_difficulty", "select_command", "window_spec"]
