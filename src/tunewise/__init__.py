"""tunewise: how many labelled examples does each task need, and which ones should they be?

The public API is imported lazily so that ``import tunewise`` stays cheap and never loads torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TunewiseError": "tunewise.errors",
    "read_pool": "tunewise.pool",
    "Pool": "tunewise.pool",
    "load_backend": "tunewise.backends",
    "score_pool": "tunewise.scoring",
    "curve_auc": "tunewise.curve",
    "predict_auc": "tunewise.efficiency",
    "labels_needed": "tunewise.efficiency",
    "coefficients_for": "tunewise.efficiency",
    "calibrate": "tunewise.efficiency",
    "coslow": "tunewise.coslow",
    "allocate_budget": "tunewise.allocation",
    "get_strategy": "tunewise.strategies",
    "FinetuneConfig": "tunewise.finetune",
    "finetune": "tunewise.finetune",
    "evaluate": "tunewise.evaluate",
    "run_sweep": "tunewise.sweep",
    "make_plan": "tunewise.planning",
    "build_report": "tunewise.report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunewise' has no attribute {name!r}")
