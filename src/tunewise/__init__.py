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
    "allocate_budget": "tunewise.allocation",
    "get_strategy": "tunewise.strategies",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunewise' has no attribute {name!r}")
