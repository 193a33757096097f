"""bench/study_budget_v2.py's pure parts: the pool and test split, the choices it reads, the pass
order, the per-part scores of a run and their aggregation over seeds, the cost projection and the
report on a synthetic study folder (no model runs)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
study = pytest.importorskip("study_budget_v2")
realdata = pytest.importorskip("realdata")


def _rows(task: str, n: int, template: str | None = None, answers=("yes", "no")) -> list:
    records = [{"prompt": f"{task} question {i}?", "completion": answers[i % len(answers)], "task": task,
                **({"template": template} if template else {})} for i in range(n)]
    return realdata._examples(records)


def test_classification_templates_keep_2_to_10_labels_and_say_why_a_task_is_left_out():
    examples = (_rows("a", 6, "a_yes_no") + _rows("a", 4, "a_one", answers=("x",))
                + _rows("b", 12, "b_free", answers=tuple(f"w{i}" for i in range(12))))
    kept, left_out = study.classification_templates(examples)
    assert {e.metadata["template"] for e in kept} == {"a_yes_no"}
    assert list(left_out) == ["b"] and "[12]" in left_out["b"]


def test_answer_format_line_gives_each_question_its_own_choices():
    records = [{"prompt": "Q?\nAnswer1: x Answer2: y Answer3: z\n\nAnswer format: answer1/answer2/answer3",
                "completion": "answer2", "task": "arc"},
               {"prompt": "Q2?\n\nAnswer format: true/false", "completion": "true", "task": "boolq"},
               {"prompt": "no format line", "completion": "true", "task": "boolq"},
               {"prompt": "Q3?\nAnswer format: a/b", "completion": "c", "task": "x"}]
    out = study.answer_format_choices(realdata._examples(records))
    assert out[0].metadata["choices"] == ["answer1", "answer2", "answer3"]
    assert out[1].metadata["choices"] == ["true", "false"]
    assert "choices" not in out[2].metadata and "choices" not in out[3].metadata  # no line; gold not listed


def test_assemble_splits_every_task_alike_and_keeps_the_imbalance():
    tasks = {"big": study.TaskRows(_rows("big", 1000)), "small": study.TaskRows(_rows("small", 60)),
             "own_test": study.TaskRows(_rows("own_test", 300), _rows("own_test_held", 50))}
    assembly = study.assemble(tasks, test_per_task=20, pool_fraction=0.1, seed=0)
    assert assembly.counts == {"big": {"pool": 98, "test": 20, "spare": 882},
                               "own_test": {"pool": 30, "test": 20, "spare": 270},
                               "small": {"pool": 4, "test": 20, "spare": 36}}
    ids = [e.id for e in assembly.pool]
    assert len(ids) == len(set(ids)) == 132
    assert not set(ids) & {e.id for e in assembly.test}
    # the own-split task's test items come from its held-out split, its pool from the train split
    assert all("own_test_held" in e.prompt[-1]["content"] for e in assembly.test if e.task == "own_test")
    # same seed, same split; adding a task leaves the other tasks' splits alone
    again = study.assemble({"big": tasks["big"], "other": study.TaskRows(_rows("other", 100))}, 20, 0.1, 0)
    assert [e.id for e in again.pool if e.task == "big"] == [e.id for e in assembly.pool if e.task == "big"]
    assert [e.id for e in study.assemble(tasks, 20, 0.1, 1).pool] != ids


def test_assemble_gives_every_task_at_least_one_pool_row_and_refuses_an_empty_one():
    assembly = study.assemble({"tiny": study.TaskRows(_rows("tiny", 3))}, test_per_task=2, pool_fraction=0.01, seed=0)
    assert assembly.counts["tiny"] == {"pool": 1, "test": 2, "spare": 0}
    with pytest.raises(ValueError, match="no rows left"):
        study.assemble({"tiny": study.TaskRows(_rows("tiny", 2))}, test_per_task=2, pool_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="pool_fraction"):
        study.assemble({"tiny": study.TaskRows(_rows("tiny", 9))}, test_per_task=2, pool_fraction=0, seed=0)


def test_passes_run_the_first_seed_at_every_budget_before_the_others():
    assert study.study_passes([256, 64], [2, 0, 1]) == [
        ("seed 0 at 64", [0], [64]), ("seed 0 at 256", [0], [256]),
        ("seeds 1-2 at 64", [1, 2], [64]), ("seeds 1-2 at 256", [1, 2], [256])]
    assert study.study_passes([64], [0]) == [("seed 0 at 64", [0], [64])]


def _results(same: dict[str, float], mmlu: float, bbh: float, norm_shift: float = 0.0) -> dict:
    scores = {**same, "mmlu": mmlu, "bbh": bbh}
    return {task: {"metric": "choice", "choice": s, "acc_norm": s + norm_shift} for task, s in scores.items()}


def test_run_parts_macro_average_the_same_tasks_and_average_mmlu_with_bbh():
    parts = study.run_parts(_results({"a": 0.5, "b": 0.7, "c": 0.9}, mmlu=0.3, bbh=0.4, norm_shift=0.1))
    assert parts["same_task"]["acc"] == pytest.approx(0.7)
    assert parts["same_task"]["acc_norm"] == pytest.approx(0.8)
    assert parts["mmlu_bbh"]["acc"] == pytest.approx(0.35)
    assert parts["mmlu"]["acc_norm"] == pytest.approx(0.4) and parts["bbh"]["acc"] == pytest.approx(0.4)
    only_same = study.run_parts({"a": {"choice": 0.5, "acc_norm": 0.5}})
    assert only_same["mmlu_bbh"]["acc"] is None and only_same["mmlu"]["acc"] is None


def _record(arm: str, budget: int, seed: int, same: float, bench: float) -> dict:
    return {"strategy": arm, "budget": budget, "seed": seed, "score": same, "scores": {},
            "results": _results({"a": same}, mmlu=bench, bbh=bench)}


def test_aggregate_gives_t_intervals_and_paired_gains_or_says_there_are_too_few_seeds():
    records = [_record("random", 64, s, v, 0.3) for s, v in enumerate([0.50, 0.60, 0.55])]
    records += [_record("task_diversity", 64, s, v, 0.3) for s, v in enumerate([0.52, 0.64, 0.60])]
    records += [_record("random", 256, 0, 0.6, 0.3), _record("task_diversity", 256, 0, 0.7, 0.3)]
    table = study.aggregate(records)
    cell = table["same_task"]["acc"]["64"]["random"]
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2) × sd / √n
    assert cell["mean"] == pytest.approx(0.55) and cell["n"] == 3
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((0.55 - half, 0.55 + half))
    gain = table["same_task"]["acc"]["64"]["task_diversity"]["gain_over_random"]
    assert gain["mean"] == pytest.approx(0.11 / 3) and gain["n_seeds"] == 3 and gain["ci_low"] < gain["mean"]
    one = table["same_task"]["acc"]["256"]["task_diversity"]
    assert one["note"] == study.NOT_ENOUGH and one["ci_low"] is None
    assert one["gain_over_random"]["mean"] == pytest.approx(0.1)
    assert one["gain_over_random"]["note"] == study.NOT_ENOUGH
    assert "gain_over_random" not in table["same_task"]["acc"]["64"]["random"]
    # a gain of exactly zero on every seed has a zero-width interval, MMLU/BBH here
    assert table["mmlu_bbh"]["acc"]["64"]["task_diversity"]["gain_over_random"]["ci_low"] == pytest.approx(0.0)


def test_projected_hours_follow_the_cost_model():
    rows = study.projected_hours([("p", [0, 1], [64])], ["random", "task_diversity"], train_tokens_per_example=100,
                                 epochs=3, eval_tokens_per_run=46_000, rates={"train_tokens_per_s": 100,
                                                                              "forward_tokens_per_s": 460})
    assert rows == [{"pass": "p", "runs": 4, "train_h": pytest.approx(4 * 3 * 64 * 100 / 100 / 3600),
                     "eval_h": pytest.approx(4 * 100 / 3600), "total_h": pytest.approx((768 + 400) / 3600)}]


def test_setup_hours_add_the_pool_confidence_only_for_weighted_task_diversity():
    rates = {"train_tokens_per_s": 165, "forward_tokens_per_s": 460}
    plain = study.setup_hours(1000, 460 * 3600, rates, confidence=False)
    assert plain["total_h"] == pytest.approx(1.0) and plain["pass"] == "setup: zero-shot"
    weighted = study.setup_hours(1000, 460 * 3600, rates, confidence=True)
    assert weighted["total_h"] == pytest.approx(1.0 + 1000 * study.CONFIDENCE_SECONDS_PER_PROMPT / 3600)


def test_report_on_a_partial_study_counts_cells_and_says_not_enough_seeds(tmp_path):
    passes = study.study_passes([64, 256], [0, 1, 2])
    plan = {"settings": {}, "grid": {"arms": ["random", "task_diversity"], "budgets": [64, 256], "seeds": [0, 1, 2],
                                     "passes": [{"pass": l, "seeds": s, "budgets": b} for l, s, b in passes]},
            "pool": {"examples": 10, "per_task": {"a": 10}}, "test": {"examples": 4, "per_task": {"a": 4}},
            "t0_left_out": {}, "tokens": {"eval_forward_per_run": 1000, "train_per_example_mean": 90.0},
            "projected_cpu_hours": study.projected_hours(passes, ["random", "task_diversity"], 90.0, 3, 1000,
                                                        study.COST_MODEL["bf16"])}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "pool_tasks.json").write_text(json.dumps({"id1": "a"}))
    runs = tmp_path / "sweep" / "runs"
    runs.mkdir(parents=True)
    for name, record in {"zero_shot.json": {**_record("zero_shot", 0, None, 0.4, 0.25), "evaluation_seconds": 10.0},
                         "random__b64__s0.json": {**_record("random", 64, 0, 0.5, 0.3), "evaluation_seconds": 12.0,
                                                  "selected_ids": ["id1"]},
                         "task_diversity__b64__s0.json": _record("task_diversity", 64, 0, 0.6, 0.3)}.items():
        (runs / name).write_text(json.dumps(record))
    report = study.build_report(tmp_path)
    assert [p["finished"] for p in report["passes"]] == [2, 0, 0, 0]
    assert report["runs"][0]["examples_per_task"] == {"a": 1}
    assert report["zero_shot"]["same_task"]["acc"] == pytest.approx(0.4)
    assert report["measured_evaluation"]["evaluation_seconds_median"] == pytest.approx(11.0)
    text = study.report_markdown(report)
    assert "| seed 0 at 64 | 2 / 2 |" in text
    assert "| 64 | task_diversity | 1 | 0.600 (not enough seeds yet) | +0.100 (not enough seeds yet) |" in text
    assert "| 0 | zero-shot | — | 0.400 | — |" in text
    assert "| pool | — | 10 |" in text and "| 64 | random | 1 |" in text  # examples per task
    study.write_report(tmp_path)
    assert (tmp_path / "report.png").stat().st_size > 10_000  # the figure, from the same report
