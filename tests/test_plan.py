"""`tunewise plan` end to end on tiny-random, and the planning library on generated scores."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import tunewise.cli
from tunewise.cli.app import app
from tunewise.data.demo import DEMO_TASKS, demo_records
from tunewise.efficiency.predict import Coefficients, paper_coefficients
from tunewise.errors import TunewiseError
from tunewise.pipeline import NO_CALIBRATION, make_plan
from tunewise.select.allocation import efficiency_allocation, next_label_gain
from tunewise.data.pool import read_pool
from tunewise.select import get_strategy

BUDGET = 17


@pytest.fixture(scope="module", autouse=True)
def commands():
    tunewise.cli._register_commands()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def uneven_pool_records() -> list[dict]:
    """Five tasks of different sizes (one smaller than its fair share of the budget)."""
    records, _ = demo_records(pool_per_task=9, test_per_task=0, seed=3)
    sizes = {"addition": 9, "larger_number": 7, "parity": 2, "uppercase": 9, "first_letter": 5}
    kept, seen = [], Counter()
    for record in records:
        if seen[record["task"]] < sizes[record["task"]]:
            kept.append(record)
            seen[record["task"]] += 1
    return kept


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """One `tunewise plan` run over a labelled and one over an unlabelled pool, shared by the tests."""
    folder = tmp_path_factory.mktemp("plan")
    records = uneven_pool_records()
    labelled = write_jsonl(folder / "pool.jsonl", records)
    unlabelled = write_jsonl(folder / "unlabelled.jsonl",
                             [{k: v for k, v in r.items() if k != "response"} for r in records])
    with pytest.MonkeyPatch.context() as patch:
        from tunewise.model.load import model_cache_root

        patch.setenv("TUNEWISE_MODEL_CACHE", str(model_cache_root()))
        patch.setenv("TUNEWISE_CACHE", str(folder / "cache"))
        results = {
            name: invoke("plan", pool, "--budget", BUDGET, "--task-field", "task", "--model", "tiny-random",
                         "--max-new-tokens", 4, "--seed", 1, "-o", folder / name)
            for name, pool in (("labelled", labelled), ("unlabelled", unlabelled))
        }
    return folder, records, results


def read_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.integration
def test_plan_writes_a_consistent_run_folder(planned):
    folder, records, results = planned
    result = results["labelled"]
    assert result.exit_code == 0, result.output
    run = folder / "labelled"
    for name in ("scores.parquet", "plan.json", "selection.jsonl", "selection.meta.json", "report.html"):
        assert (run / name).is_file(), name
    assert not (run / "to_label.jsonl").exists()

    plan = json.loads((run / "plan.json").read_text())
    pool_sizes = Counter(record["task"] for record in records)
    assert list(plan["tasks"]) == list(dict.fromkeys(r["task"] for r in records))
    assert sum(entry["budget"] for entry in plan["tasks"].values()) == BUDGET == plan["selected"]
    for task, entry in plan["tasks"].items():
        assert entry["pool"] == entry["labelled"] == pool_sizes[task]
        assert 0 <= entry["budget"] <= entry["pool"]
        assert NO_CALIBRATION in entry["why"] and entry["predicted_auc"] is None
    assert plan["tasks"]["parity"]["budget"] == 2  # capped at its pool, the surplus shared by the rest

    rows = read_rows(run / "selection.jsonl")
    assert Counter(row["task"] for row in rows) == {t: e["budget"] for t, e in plan["tasks"].items() if e["budget"]}
    pool_ids = {example.id for example in read_pool(folder / "pool.jsonl", "task").examples}
    assert len({row["id"] for row in rows}) == BUDGET and {row["id"] for row in rows} <= pool_ids
    assert "report →" in result.stdout and "Plan:" in result.stdout


@pytest.mark.integration
def test_plan_report_is_self_contained_and_names_every_task(planned):
    folder, records, results = planned
    page = (folder / "labelled" / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert references and all(ref.startswith("data:image/png;base64,") for ref in references)
    assert "http://" not in page and "https://" not in page
    for task in {record["task"] for record in records}:
        assert task in page


@pytest.mark.integration
def test_unlabelled_pool_gets_the_picks_to_label_in_annotation_order(planned):
    folder, _, results = planned
    assert results["unlabelled"].exit_code == 0, results["unlabelled"].output
    run = folder / "unlabelled"
    to_label = read_rows(run / "to_label.jsonl")
    selection = read_rows(run / "selection.jsonl")
    assert [row["pool_id"] for row in to_label] == [row["id"] for row in selection]
    assert len(to_label) == BUDGET and all(row["response"] is None for row in to_label)
    assert [row["position"] for row in to_label] == list(range(BUDGET))
    labelled_later = [{**row, "response": "42"} for row in to_label]
    relabelled = read_pool(write_jsonl(folder / "labelled_later.jsonl", labelled_later), "task")
    assert relabelled.labelled and len(relabelled) == BUDGET
    plan = json.loads((run / "plan.json").read_text())
    assert plan["pool"]["labelled"] == 0
    assert all(entry["labelled"] == 0 for entry in plan["tasks"].values())


@pytest.mark.integration
def test_report_command_rebuilds_the_report(planned):
    folder, _, _ = planned
    report = folder / "labelled" / "report.html"
    before = report.read_text(encoding="utf-8")
    report.unlink()
    result = invoke("report", folder / "labelled")
    assert result.exit_code == 0, result.output
    assert report.read_text(encoding="utf-8") == before


@pytest.mark.parametrize("budget", ["-1", "ten", "1000"])
def test_bad_budget_exits_2_without_a_traceback(tmp_path, budget):
    pool = write_jsonl(tmp_path / "pool.jsonl", uneven_pool_records())
    result = invoke("plan", pool, "--budget", budget, "--model", "tiny-random", "-o", tmp_path / "run")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_strategy_and_missing_calibration_exit_2_before_any_model_work(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", uneven_pool_records())
    typo = invoke("plan", pool, "--budget", 5, "--strategy", "weighted_task_divrsity", "-o", tmp_path / "a")
    assert typo.exit_code == 2 and "did you mean 'weighted_task_diversity'" in typo.stderr
    efficiency = invoke("plan", pool, "--budget", 5, "--strategy", "efficiency", "--model", "tiny-random",
                        "-o", tmp_path / "b")
    assert efficiency.exit_code == 2 and NO_CALIBRATION in efficiency.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.integration
def test_efficiency_plan_with_coslow_end_to_end(tmp_path, lively_model_dir):
    """Two labelled tasks of 32+ examples: CoS-Low is measured on a tiny random model, the paper's
    coefficients turn it into predictions, and the efficiency strategy spends the budget."""
    records, _ = demo_records(pool_per_task=34, test_per_task=0, seed=5)
    records = [r for r in records if r["task"] in ("addition", "parity")]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    result = invoke("plan", pool, "--budget", 40, "--task-field", "task", "--model", lively_model_dir,
                    "--strategy", "efficiency", "--coefficients", "paper:llama-3.1-8b", "--indicators",
                    "loss,confidence", "--max-new-tokens", 4, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert sum(entry["budget"] for entry in plan["tasks"].values()) == 40
    for task, entry in plan["tasks"].items():
        assert -1 <= entry["coslow"] <= 1 and 0 < entry["predicted_auc"] < 1
        assert entry["labels_needed"] >= 1 and "CoS-Low" in entry["why"]
        assert plan["coslow"][task]["k"] == 32 and "small task" in plan["coslow"][task]["protocol"]
    assert plan["coefficients"]["source"].startswith("paper:llama-3.1-8b")


# -- the library, on generated scores (no model) ---------------------------------------------------


def generated_table(sizes: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    records = []
    for task, size in sizes.items():
        records += [{"task": task, "prompt": f"{task} question {i}", "response": str(i)} for i in range(size)]
    from tunewise.data.pool import parse_record
    from tunewise.data.table import ExampleTable

    examples = [parse_record(record, "task") for record in records]
    scores = pd.DataFrame({
        "id": [e.id for e in examples],
        "task": [e.task for e in examples],
        "confidence": rng.uniform(0.2, 0.9, len(examples)),
        "loss": rng.uniform(0.5, 3.0, len(examples)),
    })
    return ExampleTable(tuple(examples), scores, "generated")


def test_make_plan_matches_tunewise_select_for_the_same_strategy_and_seed():
    table = generated_table({"a": 30, "b": 10, "c": 50})
    plan = make_plan(table, 25, strategy="weighted_task_diversity", seed=4)
    expected = get_strategy("weighted_task_diversity", within="random").select(table, 25, 4)
    assert plan.selection.positions.tolist() == expected.positions.tolist()
    assert {t: e["budget"] for t, e in plan.tasks.items()} == expected.details["allocation"]
    assert plan.tasks["a"]["weight"] == pytest.approx(expected.details["task_weights"]["a"])


def test_the_plan_reports_how_far_the_task_weights_spread():
    table = generated_table({"a": 30, "b": 30, "c": 30})
    # Nearly equal: weights 0.375/0.3125/0.3125.
    table.scores["confidence"] = np.where(table.scores["task"] == "a", 0.5, 0.6)
    plan = make_plan(table, 12, seed=0)
    spread = plan.document["task_weight_spread"]
    assert spread["ratio"] == pytest.approx(1.2) and spread["min"] == pytest.approx(0.3125)
    assert 0.99 < spread["entropy_share"] < 1.0
    assert any("barely differ" in note for note in plan.document["notes"])
    table.scores["confidence"] = np.where(table.scores["task"] == "a", 0.1, 0.9)
    skewed = make_plan(table, 12, seed=0).document
    assert skewed["task_weight_spread"]["ratio"] == pytest.approx(9.0)
    assert not any("barely differ" in note for note in skewed["notes"])
    equal = make_plan(table, 12, strategy="task_diversity").document
    assert equal["task_weight_spread"]["ratio"] == 1.0
    assert equal["task_weight_spread"]["entropy_share"] == pytest.approx(1.0)


def test_make_plan_takes_strategy_and_within_objects():
    from tunewise.select import DifficultyWindow, TaskDiversity

    table = generated_table({"a": 30, "b": 10})
    by_object = make_plan(table, 12, strategy=TaskDiversity(within=DifficultyWindow(difficulty="loss")))
    by_within = make_plan(table, 12, strategy="task_diversity", within=DifficultyWindow(difficulty="loss"))
    assert by_object.selection.positions.tolist() == by_within.selection.positions.tolist()
    assert by_object.document["within"] == "difficulty_window" == by_within.document["params"]["within"]["strategy"]
    with pytest.raises(TunewiseError, match="--within applies to the task strategies"):
        make_plan(table, 12, strategy="uncertainty", within=DifficultyWindow())


def test_predictions_need_both_coslow_and_coefficients_and_never_appear_otherwise():
    table = generated_table({"a": 40, "b": 40})
    without = make_plan(table, 20, coslow_values={"a": 0.3, "b": 0.1})
    assert all(NO_CALIBRATION in entry["why"] and entry["predicted_auc"] is None for entry in without.tasks.values())
    coefficients = paper_coefficients("llama-3.1-8b")
    partial = make_plan(table, 20, coefficients=coefficients, coslow_values={"a": 0.3}, target=0.8)
    a, b = partial.tasks["a"], partial.tasks["b"]
    assert a["predicted_auc"] == pytest.approx(0.545 * 0.3 + 0.310)
    assert a["labels_needed"] >= 1 and "80% of the way" in a["why"]
    assert set(a["predicted_curve"]) >= {"50", "5000", str(a["budget"])}
    assert b["predicted_auc"] is None and "CoS-Low was not measured" in b["why"]
    assert partial.document["coefficients"]["slope"] == 0.545


def test_efficiency_strategy_refuses_tasks_without_a_prediction():
    table = generated_table({"a": 40, "b": 12})
    with pytest.raises(TunewiseError, match="needs a predicted learning curve for every task"):
        make_plan(table, 20, strategy="efficiency", coefficients=Coefficients(0.5, 0.3, "test"),
                  coslow_values={"a": 0.3})


def test_efficiency_plan_spends_early_labels_on_the_fast_task_and_equalises_marginal_gains():
    table = generated_table({"fast": 200, "slow": 200})
    coefficients, coslow = Coefficients(1.0, 0.0, "test"), {"fast": 0.8, "slow": 0.4}
    small = make_plan(table, 10, strategy="efficiency", coefficients=coefficients, coslow_values=coslow)
    assert small.tasks["fast"]["budget"] > small.tasks["slow"]["budget"]
    large = make_plan(table, 100, strategy="efficiency", coefficients=coefficients, coslow_values=coslow,
                      seed=2)
    budgets = {task: entry["budget"] for task, entry in large.tasks.items()}
    assert sum(budgets.values()) == 100 and min(budgets.values()) > 2
    # Greedy optimality: no task's next label would gain more than the last label the other got.
    for task, other in (("fast", "slow"), ("slow", "fast")):
        assert next_label_gain(coslow[task], budgets[task]) <= next_label_gain(coslow[other], budgets[other] - 1)
    rows = table.scores["task"].to_numpy()[large.selection.positions]
    share = budgets["fast"] / 100
    assert abs(Counter(rows[:20].tolist())["fast"] - 20 * share) < 1  # every prefix keeps the proportions


@pytest.mark.parametrize("budget", [0, 1, 7, 60, 500])
def test_efficiency_allocation_sums_caps_and_is_seeded(budget):
    sizes = {"a": 5, "b": 40, "c": 0, "d": 12}
    auc = {"a": 0.7, "b": 0.3, "c": 0.5, "d": 0.5}
    allocation = efficiency_allocation(sizes, auc, budget, seed=3)
    assert list(allocation) == list(sizes)
    assert sum(allocation.values()) == min(budget, sum(sizes.values()))
    assert all(0 <= allocation[t] <= sizes[t] for t in sizes)
    assert allocation == efficiency_allocation(sizes, auc, budget, seed=3)


def test_efficiency_allocation_breaks_exact_ties_by_seed():
    sizes = dict.fromkeys(DEMO_TASKS, 10)
    auc = dict.fromkeys(DEMO_TASKS, 0.5)
    splits = {tuple(efficiency_allocation(sizes, auc, 3, seed=seed).values()) for seed in range(12)}
    assert len(splits) > 1 and all(sum(split) == 3 for split in splits)


@pytest.mark.integration
def test_plan_with_a_dev_set_learns_weights_and_orders_within_tasks_by_them(tmp_path):
    records, dev_records = demo_records(pool_per_task=6, test_per_task=3, seed=7)
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_records)
    result = invoke("plan", pool, "--budget", 10, "--task-field", "task", "--model", "tiny-random", "--dev", dev,
                    "--trials", 2, "--max-new-tokens", 4, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    weights = json.loads((tmp_path / "run" / "weights.json").read_text())
    assert sum(weights["weights"].values()) == pytest.approx(1.0) and len(weights["trials"]) == 2
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["within"] == "weighted_indicators"
    assert plan["params"]["within"]["weights"] == weights["weights"]
    rows = read_rows(tmp_path / "run" / "selection.jsonl")
    assert all("weighted score" in row["reason"] for row in rows)
    assert "Learned indicator weights" in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.integration
def test_plan_reads_the_dev_set_with_the_pools_field_flags(tmp_path):
    """Issue 16: --dev is read with the column flags the pool is read with, and weights.json records them."""
    records, dev_records = demo_records(pool_per_task=4, test_per_task=2, seed=7)
    renamed = [[{"ask": r["prompt"], "reply": r["response"], "kind": r["task"]} for r in rs]
               for rs in (records, dev_records)]
    pool = write_jsonl(tmp_path / "pool.jsonl", renamed[0])
    dev = write_jsonl(tmp_path / "dev.jsonl", renamed[1])
    result = invoke("plan", pool, "--budget", 6, "--task-field", "kind", "--prompt-field", "ask", "--response-field",
                    "reply", "--model", "tiny-random", "--dev", dev, "--trials", 1, "--max-new-tokens", 2,
                    "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    weights = json.loads((tmp_path / "run" / "weights.json").read_text())
    assert weights["columns"] == {"prompt_field": "ask", "response_field": "reply"}


def test_a_single_task_gets_the_whole_budget_and_says_so():
    table = generated_table({"only": 12})
    plan = make_plan(table, 5)
    assert plan.tasks["only"]["budget"] == 5 and plan.tasks["only"]["why"].startswith("It is the only task")


@pytest.mark.integration
def test_a_pool_without_task_field_plans_one_task_in_the_singular(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWISE_CACHE", str(tmp_path / "cache"))
    records = [{k: v for k, v in record.items() if k != "task"} for record in uneven_pool_records()]
    result = invoke("plan", write_jsonl(tmp_path / "pool.jsonl", records), "--budget", 6, "--model", "tiny-random",
                    "--max-new-tokens", 4, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "It is the only task, so it gets 6 of 6 labels." in " ".join(result.output.split())
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "over 1 task " in page and "1 tasks" not in page and "6 labels" in page


def test_print_plan_says_a_closing_sentence_all_tasks_share_once(capsys):
    from tunewise.cli.plan import print_plan

    table = generated_table({"a": 12, "b": 8, "c": 5})
    document = make_plan(table, 9).document
    print_plan(document)
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count(NO_CALIBRATION) == 1 and f"every task: No learning-curve prediction: {NO_CALIBRATION}" in printed
    for task in ("a", "b", "c"):
        assert f"{task}: " in printed


@pytest.mark.parametrize("reasons, shared", [
    (["A gets 3. No prediction: x.", "B gets 2. No prediction: x."], " No prediction: x."),
    (["A gets 3. No prediction: x.", "B gets 2. No prediction: y."], ""),
    (["Only one. No prediction: x."], ""),
    (["Same.", "Same."], ""),
])
def test_shared_closing_sentence_only_when_every_reason_ends_with_it_and_keeps_more(reasons, shared):
    from tunewise.pipeline import shared_closing_sentence

    assert shared_closing_sentence(reasons) == shared


def test_plan_scores_what_a_weights_file_needs(tmp_path):
    """--weights with the diversity feature needs embeddings, which `plan`'s default indicators lack:
    the plan computes them instead of stopping."""
    import json as json_module

    import tunewise as tw
    from tunewise.model.fake import FakeBackend

    weights = tmp_path / "weights.json"
    weights.write_text(json_module.dumps({"weights": {"loss": 0.5, "diversity": 0.5}}))
    config = tw.PlanConfig(budget=4, weights=weights, coslow=False)
    assert "embedding" in config.indicator_names()
    pool = tw.read_pool(_labelled_pool_file(tmp_path), task_field="task")
    result = tw.plan(pool, FakeBackend(), config, tmp_path / "run")
    assert len(result.selection.positions) == 4


def _labelled_pool_file(folder):
    import json as json_module

    path = folder / "pool.jsonl"
    path.write_text("".join(json_module.dumps({"question": f"q{i}", "answer": f"a{i}", "task": f"t{i % 2}"}) + "\n"
                            for i in range(10)))
    return path


def test_quiet_plan_keeps_the_calibration_caveat_beside_the_labels_needed(capsys):
    """-q silences stderr (the notes); the caveat of the coefficients behind a printed labels-needed
    figure goes to stdout with it."""
    from tunewise.cli.app import console
    from tunewise.cli.plan import print_plan
    from tunewise.efficiency.predict import coefficients_for

    coefficients = coefficients_for("smollm2")
    assert coefficients.caveat
    document = make_plan(generated_table({"a": 40, "b": 40}), 20, coefficients=coefficients,
                         coslow_values={"a": 0.3, "b": 0.1}, target=0.9).document
    assert document["coefficients"]["caveat"] == coefficients.caveat  # --json keeps it as a field
    console.quiet = True
    try:
        print_plan(document)
    finally:
        console.quiet = False
    captured = capsys.readouterr()
    printed = " ".join(captured.out.split())
    assert "labels reach 90%" in printed and f"caveat: About the predicted curves: {coefficients.caveat[:40]}" in printed
    assert captured.err == ""


def test_a_task_the_model_never_answered_says_so_instead_of_asking_for_coslow():
    """With --coslow, a task whose labelled examples all got no answer token (tiny-random) has no
    CoS-Low: the reason is the model, not a missing flag."""
    table = generated_table({"a": 40, "b": 40})
    table.scores.loc[table.scores["task"] == "b", "confidence"] = 0.0
    plan = make_plan(table, 20, coefficients=paper_coefficients("llama-3.1-8b"), coslow_values={"a": 0.3})
    why = plan.tasks["b"]["why"]
    assert "gave no answer token (only whitespace or end of text) for 40 of this task's 40" in why
    assert "use a model that answers" in why and "run with --coslow" not in why
    assert "run with --coslow" not in plan.tasks["a"]["why"]
    with pytest.raises(TunewiseError, match="'b': CoS-Low draws 32 examples the model answered"):
        make_plan(table, 20, strategy="efficiency", coefficients=paper_coefficients("llama-3.1-8b"),
                  coslow_values={"a": 0.3})


def tied_table(tasks=("a", "b", "c"), size=10, confidence=0.5):
    table = generated_table(dict.fromkeys(tasks, size))
    table.scores["confidence"] = confidence
    return table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tied_confidences_are_called_tied_and_the_seed_named_for_the_leftover_labels(seed):
    """Three tasks with equal mean confidence and a budget of 2: none is "the lowest"; the one left
    without a label is told the seed decided."""
    plan = make_plan(tied_table(), 2, seed=seed)
    budgets = {task: entry["budget"] for task, entry in plan.tasks.items()}
    assert sorted(budgets.values()) == [0, 1, 1]
    for entry in plan.tasks.values():
        why = entry["why"]
        assert "(tied with all 3 tasks)" in why and "lowest" not in why and "highest" not in why
        assert f"an order drawn from seed {seed} decided which of them got the leftover ones" in why
    even = make_plan(tied_table(), 3, seed=seed)
    assert all("leftover" not in entry["why"] for entry in even.tasks.values())


def test_a_partial_tie_says_tied_for_its_place():
    table = generated_table({"a": 10, "b": 10, "c": 10})
    table.scores["confidence"] = table.scores["task"].map({"a": 0.3, "b": 0.3, "c": 0.8})
    plan = make_plan(table, 9)
    assert "(tied for the lowest of 3 tasks)" in plan.tasks["a"]["why"]
    assert "(tied for the lowest of 3 tasks)" in plan.tasks["b"]["why"]
    assert "(the highest of 3 tasks)" in plan.tasks["c"]["why"]


def test_a_single_task_plan_has_no_weight_spread_note():
    plan = make_plan(tied_table(tasks=("only",)), 5)
    assert not any("barely differ" in note for note in plan.document["notes"])
    assert any("barely differ" in note for note in make_plan(tied_table(), 6).document["notes"])


def test_config_yaml_records_the_within_order_that_ran_and_replays_it(tmp_path, monkeypatch):
    """--weights orders each task by the weights: config.yaml says weighted_indicators (as plan.json
    does), and `plan --config RUN/config.yaml` picks the same examples."""
    import yaml

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "pool.jsonl", uneven_pool_records())
    (tmp_path / "w.json").write_text(json.dumps({"weights": {"loss": 0.5, "ifd": 0.5}}))
    first = invoke("plan", "pool.jsonl", "--task-field", "task", "--model", "fake", "--budget", 8,
                   "--weights", "w.json", "--cache-dir", "cache", "-o", "run")
    assert first.exit_code == 0, first.output
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["within"] == "weighted_indicators" == json.loads((tmp_path / "run" / "plan.json").read_text())["within"]
    again = invoke("plan", "--config", "run/config.yaml", "-o", "again")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "selection.jsonl").read_bytes() == (tmp_path / "run" / "selection.jsonl").read_bytes()
    assert yaml.safe_load((tmp_path / "again" / "config.yaml").read_text()) == {**recorded, "output": "again"}


@pytest.mark.integration
def test_plan_dev_with_demonstrations_too_long_exits_2_leaving_nothing_and_demos_fixes_it(tmp_path):
    """tiny-random has a 2048-token context (byte-level): eight 500-character demonstrations do not
    fit. The fix names --demos, which plan has; the failed search leaves no run folder behind."""
    def long_records(count, offset):
        return [{"task": "long", "prompt": f"Question {offset + i}: " + "how many apples are there? " * 18,
                 "response": str(i)} for i in range(count)]

    pool = write_jsonl(tmp_path / "pool.jsonl", long_records(12, 0))
    dev = write_jsonl(tmp_path / "dev.jsonl", long_records(4, 100))
    common = ("plan", pool, "--budget", 4, "--task-field", "task", "--model", "tiny-random", "--dev", dev,
              "--trials", 1, "--max-new-tokens", 2)
    failed = invoke(*common, "-o", tmp_path / "run")
    assert failed.exit_code == 2, failed.output
    assert "longer than the model's 2048-token context" in failed.output
    assert "fix: use fewer demonstrations (--demos)" in failed.output
    assert not (tmp_path / "run").exists()
    fitted = invoke(*common, "--demos", 1, "-o", tmp_path / "run")
    assert fitted.exit_code == 0, fitted.output
    assert json.loads((tmp_path / "run" / "weights.json").read_text())["proxy"]["demos"] == 1
