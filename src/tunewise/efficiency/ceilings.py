"""Human scores that serve as learning-curve ceilings (paper A's released figures).

Paper A normalises a task's learning curve from its zero-shot score to max(human score, best
measured score) (``utils/calculate_per_task_auc.py:86, 102`` of github.com/r-three/dataefficiency
at commit 2430231). Without a human or target ceiling the best measured score becomes the ceiling,
which inflates early gains and gives AUCs that are not on the paper's scale (fidelity review A9).

tunewise ships the released human scores (``results/human_eval.json``) of the tasks that exist in
``../shared/data`` (``human_ceilings.json`` beside this module), under tunewise's task names and the
datasets' own. A name is matched exactly (ignoring case), never by similarity: a task named
differently gets no ceiling rather than a wrong one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

CEILINGS_FILE = "human_ceilings.json"


@dataclass(frozen=True)
class HumanCeiling:
    """One released human score: ``score`` (accuracy, 0–1) of ``paper_task`` in paper A's file."""

    score: float
    paper_task: str
    source: str
    note: str = ""

    def describe(self) -> str:
        """Where the number comes from, in a few words (for tables and JSON output)."""
        return f"paper A human score ({self.paper_task})"


@lru_cache(maxsize=1)
def human_ceilings() -> dict[str, HumanCeiling]:
    """Every shipped human score, keyed by each lower-case task name it applies to."""
    document = json.loads((resources.files("tunewise") / "efficiency" / CEILINGS_FILE).read_text(encoding="utf-8"))
    table = {}
    for entry in document["tasks"]:
        ceiling = HumanCeiling(float(entry["score"]), entry["paper_task"], document["source"], entry.get("note", ""))
        for name in entry["names"]:
            table[name.lower()] = ceiling
    return table


def human_ceiling(task: str) -> HumanCeiling | None:
    """The released human score for ``task`` (exact name, any case), or None when paper A has none."""
    return human_ceilings().get(task.strip().lower())


__all__ = ["CEILINGS_FILE", "HumanCeiling", "human_ceiling", "human_ceilings"]
