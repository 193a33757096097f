"""Paper A's released human scores shipped as curve ceilings (tunewise.efficiency.ceilings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.efficiency.ceilings import human_ceiling, human_ceilings

FIXTURE = json.loads((Path(__file__).parent / "data" / "paper_a_curves.json").read_text(encoding="utf-8"))
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_every_shipped_score_is_the_released_one():
    # The fixture carries results/human_eval.json's score beside each of the 100 released curves.
    released = {curve["task"]: curve["human_score"] for curve in FIXTURE["curves"]}
    shipped = {ceiling.paper_task: ceiling.score for ceiling in human_ceilings().values()}
    assert set(shipped) <= set(released)
    assert shipped == {task: released[task] for task in shipped}
    assert len(shipped) == 14


@pytest.mark.parametrize("name, paper_task, score", [
    ("bbh_boolean_expressions", "boolean_expressions", 1.0),
    ("BoolQ", "boolq", 0.89),
    ("t0_mrpc", "mrpc", 0.808),
    ("glue_qqp", "qqp", 0.804),
    ("bbh_formal_fallacies", "formal_fallacies_syllogisms_negation", 0.8),
    ("bbh_tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects", 1.0),
    ("mmlu", "mmlu", 0.898),
])
def test_names_map_to_paper_tasks(name, paper_task, score):
    ceiling = human_ceiling(name)
    assert (ceiling.paper_task, ceiling.score) == (paper_task, score)


@pytest.mark.parametrize("name", ["mmlu_math", "arc_easy", "bbh_multistep_arithmetic_two", "bbh_navigate",
                                  "boolq_v2", "web_of_lie"])
def test_no_ceiling_is_guessed_for_other_names(name):
    assert human_ceiling(name) is None


@pytest.mark.real
def test_the_bbh_names_exist_in_the_shared_data():
    tasks = SHARED_DATA / "bbh" / "tasks"
    if not tasks.is_dir():
        pytest.skip(f"{tasks} is absent (../shared/data is not part of the project)")
    for name in human_ceilings():
        if name.startswith("bbh_"):
            assert (tasks / f"{name.removeprefix('bbh_')}.json").is_file(), name
