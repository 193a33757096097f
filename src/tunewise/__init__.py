"""tunewise: how many labelled examples does each task need, and which ones should they be?

The public API is imported lazily so that ``import tunewise`` stays cheap and never loads torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TunewiseError": "tunewise.errors",
    "read_pool": "tunewise.data.pool",
    "Pool": "tunewise.data.pool",
    "Columns": "tunewise.data.pool",
    "PoolReading": "tunewise.data.pool",
    "load_backend": "tunewise.model",
    "score_pool": "tunewise.indicators.score",
    "score": "tunewise.indicators.score",
    "score_file": "tunewise.indicators.streaming",
    "ExampleTable": "tunewise.data.table",
    "curve_auc": "tunewise.efficiency.curve",
    "predict_auc": "tunewise.efficiency.predict",
    "CurvePredictor": "tunewise.efficiency.predict",
    "WeightSearch": "tunewise.weights.search",
    "labels_needed": "tunewise.efficiency.predict",
    "coefficients_for": "tunewise.efficiency.predict",
    "calibrate": "tunewise.efficiency.predict",
    "coslow": "tunewise.efficiency.coslow",
    "allocate_budget": "tunewise.select.allocation",
    "get_strategy": "tunewise.select",
    # The selector classes, which nest as objects: TaskDiversity(within=DifficultyWindow(c0=0.4)).
    **{name: "tunewise.select" for name in (
        "Strategy", "Selection", "RandomSelection", "TopK", "Uncertainty", "TaskDiversity", "WeightedTaskDiversity",
        "EfficiencyAllocation", "DifficultyWindow", "DifficultyBucket", "KCenter", "FacilityLocation",
        "DeterminantalPointProcess", "WeightedIndicators")},
    "FinetuneConfig": "tunewise.training.finetune",
    "finetune": "tunewise.training.finetune",
    "evaluate": "tunewise.training.evaluate",
    "run_sweep": "tunewise.training.sweep",
    "make_plan": "tunewise.pipeline",
    "plan": "tunewise.run",
    "PlanConfig": "tunewise.run",
    "check_plan_inputs": "tunewise.run",
    "resolve_coefficients": "tunewise.run",
    "build_report": "tunewise.report.html",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunewise' has no attribute {name!r}")
