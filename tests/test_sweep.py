"""Sweeps: gains and intervals on hand-made runs, and a resumable end-to-end sweep on tiny-random."""

from __future__ import annotations

import json
import math
import re

import pytest

import tunewise.training.sweep
from tunewise.efficiency.curve import curve_auc
from tunewise.errors import TunewiseError
from tunewise.io import write_json
from tunewise.training.finetune import FinetuneConfig
from tunewise.data.pool import parse_record
from tunewise.training.sweep import (paired_gain, parse_strategy_spec, run_file_name, run_sweep, split_strategy_specs,
                                     strategy_from_spec, summarise_sweep, tertile_scores, tertiles_by_answer_length)

# scipy.stats.t.ppf(0.975, df) for df = 1, 2, written out so the test checks the interval itself.
T_975 = {1: 12.706204736174694, 2: 4.302652729749462}


def test_paired_gain_is_the_mean_difference_with_a_t_interval():
    gain = paired_gain({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.4, 1: 0.5, 2: 0.3, 3: 0.9})
    differences = [0.1, 0.2, 0.3]
    half_width = T_975[2] * 0.1 / math.sqrt(3)
    assert gain["mean"] == pytest.approx(sum(differences) / 3)
    assert gain["ci_low"] == pytest.approx(0.2 - half_width)
    assert gain["ci_high"] == pytest.approx(0.2 + half_width)
    assert gain["n_seeds"] == 3 and gain["seeds"] == [0, 1, 2]

    single = paired_gain({0: 0.5}, {0: 0.25})
    assert single["mean"] == 0.25 and single["ci_low"] is None and single["n_seeds"] == 1


def write_run(run_dir, strategy, budget, seed, scores):
    record = {"strategy": strategy, "budget": budget, "seed": seed, "score": sum(scores.values()) / len(scores),
              "scores": scores, "results": {}}
    name = "zero_shot.json" if strategy == "zero_shot" else run_file_name(strategy, budget, seed)
    write_json(run_dir / "runs" / name, record)


def test_summary_of_hand_made_runs(tmp_path):
    write_run(tmp_path, "zero_shot", 0, None, {"a": 0.1, "b": 0.3})
    table = {  # strategy → budget → seed → (score on task a, score on task b)
        "random": {10: {0: (0.2, 0.4), 1: (0.3, 0.3)}, 40: {0: (0.5, 0.5), 1: (0.4, 0.6)}},
        "task_diversity": {10: {0: (0.4, 0.4), 1: (0.5, 0.3)}, 40: {0: (0.5, 0.6), 1: (0.7, 0.7)}},
    }
    for strategy, budgets in table.items():
        for budget, seeds in budgets.items():
            for seed, (a, b) in seeds.items():
                write_run(tmp_path, strategy, budget, seed, {"a": a, "b": b})

    summary = summarise_sweep(tmp_path)
    assert json.loads((tmp_path / "sweep.json").read_text()) == summary
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert summary["budgets"] == [10, 40] and summary["seeds"] == [0, 1] and summary["baseline"] == "random"
    assert list(summary["strategies"]) == ["random", "task_diversity"]

    random_entry = summary["strategies"]["random"]
    assert random_entry["curve"] == pytest.approx({"0": 0.2, "10": 0.3, "40": 0.5})
    assert random_entry["per_seed"]["40"] == pytest.approx({"0": 0.5, "1": 0.5})
    assert random_entry["task_curves"]["a"] == pytest.approx({"0": 0.1, "10": 0.25, "40": 0.45})
    assert "gain_over_random" not in random_entry

    diverse = summary["strategies"]["task_diversity"]
    assert diverse["curve"] == pytest.approx({"0": 0.2, "10": 0.4, "40": 0.625})
    # One ceiling for all strategies (the best score of any run, task_diversity's seed 1 at 40, as
    # the released code takes the best raw score of any seed), so the AUCs compare.
    assert summary["ceiling"] == pytest.approx(0.7)
    assert summary["ceiling_source"].startswith("best score of any run (no human or target ceiling")
    grid = dict(max_budget=40, grid=[10, 40], ceiling=0.7)
    assert random_entry["auc"] == pytest.approx(curve_auc({0: 0.2, 10: 0.3, 40: 0.5}, **grid))
    assert diverse["auc"] == pytest.approx(curve_auc([{0: 0.2, 10: 0.4, 40: 0.55}, {0: 0.2, 10: 0.4, 40: 0.7}],
                                                     **grid))
    assert diverse["auc_seeds"] == [0, 1]

    # Per-seed paired differences: budget 10: (0.4-0.3, 0.4-0.3); budget 40: (0.55-0.5, 0.7-0.5).
    gain_10, gain_40 = diverse["gain_over_random"]["10"], diverse["gain_over_random"]["40"]
    assert gain_10["mean"] == pytest.approx(0.1)
    assert gain_10["ci_low"] == pytest.approx(0.1) and gain_10["ci_high"] == pytest.approx(0.1)
    half_width = T_975[1] * math.sqrt(((0.05 - 0.125) ** 2 + (0.2 - 0.125) ** 2) / 1) / math.sqrt(2)
    assert gain_40["mean"] == pytest.approx(0.125)
    assert gain_40["ci_low"] == pytest.approx(0.125 - half_width)
    assert gain_40["ci_high"] == pytest.approx(0.125 + half_width)


def test_sweep_auc_envelopes_each_seed_before_the_mean(tmp_path):
    # Seed 0 dips from 0.6 to 0.2, seed 1 rises from 0.2 to 0.6; zero-shot 0.1, ceiling 0.6.
    # Envelopes 0.1, 0.6, 0.6 and 0.1, 0.2, 0.6: mean 0.1, 0.4, 0.6, so y = 0, 0.6, 1. (Averaging
    # first would give 0.1, 0.4, 0.4 and a smaller AUC.) Seed 2 never finished budget 40: left out.
    write_run(tmp_path, "zero_shot", 0, None, {"a": 0.1})
    for seed, (at_10, at_40) in {0: (0.6, 0.2), 1: (0.2, 0.6)}.items():
        write_run(tmp_path, "random", 10, seed, {"a": at_10})
        write_run(tmp_path, "random", 40, seed, {"a": at_40})
    write_run(tmp_path, "random", 10, 2, {"a": 0.3})
    entry = summarise_sweep(tmp_path, ceiling=0.5)["strategies"]["random"]
    x_10 = math.log2(10) / math.log2(40)
    assert entry["auc"] == pytest.approx(x_10 * 0.6 / 2 + (1 - x_10) * 1.6 / 2, abs=1e-12)
    assert entry["auc_seeds"] == [0, 1]
    with_ceiling = summarise_sweep(tmp_path, ceiling=1.0)
    assert with_ceiling["ceiling"] == 1.0 and with_ceiling["ceiling_source"] == "given"


def test_a_flat_sweep_has_no_auc(tmp_path):
    write_run(tmp_path, "zero_shot", 0, None, {"a": 0.0})
    write_run(tmp_path, "random", 5, 0, {"a": 0.0})
    assert summarise_sweep(tmp_path)["strategies"]["random"]["auc"] is None


def generated_examples(count: int, offset: int = 0) -> list:
    """Two small tasks the tiny model can be fine-tuned and scored on."""
    examples = []
    for n in range(offset, offset + count):
        if n % 2:
            record = {"question": f"What is {n} + 1?", "answer": str(n + 1), "task": "add"}
        else:
            record = {"question": f"Repeat the word w{n}.", "answer": f"w{n}", "task": "echo"}
        examples.append(parse_record(record, task_field="task"))
    return examples


SWEEP = dict(budgets=[2, 4], strategies=["random", "task_diversity"], seeds=[0, 1], model_name="tiny-random",
             finetune_config=FinetuneConfig(learning_rate=5e-2, epochs=2, batch_size=2), max_new_tokens=3)


def test_sweep_runs_end_to_end_and_resumes_only_what_is_missing(tmp_path, monkeypatch):
    pool, test = generated_examples(10), generated_examples(4, offset=100)
    labels = []
    summary = run_sweep(pool, test, run_dir=tmp_path, progress=lambda done, total, label: labels.append(label),
                        **SWEEP)
    run_files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert run_files == sorted(["zero_shot.json"] + [run_file_name(s, b, seed) for s in ("random", "task_diversity")
                                                     for b in (2, 4) for seed in (0, 1)])
    assert labels[0] == "zero-shot" and labels[-1] == "done" and len(labels) == 10
    assert set(summary["strategies"]) == {"random", "task_diversity"}
    assert set(summary["strategies"]["task_diversity"]["gain_over_random"]) == {"2", "4"}
    record = json.loads((tmp_path / "runs" / run_file_name("task_diversity", 4, 1)).read_text())
    assert len(record["selected_ids"]) == 4
    assert {e.task for e in pool if e.id in record["selected_ids"]} == {"add", "echo"}
    assert set(record["scores"]) == {"add", "echo"} and record["training"]["final_loss"] is not None
    assert set(record["difficulty_tertiles"]) == {"easy", "medium", "hard"}
    curves = summary["strategies"]["random"]["difficulty_tertile_curves"]
    assert set(curves) == {"easy", "medium", "hard"} and set(curves["easy"]) == {"0", "2", "4"}

    removed = tmp_path / "runs" / run_file_name("task_diversity", 4, 1)
    removed.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    fine_tunes = []
    real_finetune = tunewise.training.sweep.finetune

    def counting_finetune(*args, **kwargs):
        fine_tunes.append(len(args[1]))
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(tunewise.training.sweep, "finetune", counting_finetune)
    resumed = run_sweep(pool, test, run_dir=tmp_path, **SWEEP)
    assert fine_tunes == [4]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir() if p.name in before} == before
    redone = json.loads(removed.read_text())
    for key in ("score", "scores", "results", "selected_ids"):
        assert redone[key] == record[key]
    assert [s["loss"] for s in redone["training"]["steps"]] == [s["loss"] for s in record["training"]["steps"]]
    assert resumed == summary


def test_sweep_refuses_bad_grids_and_changed_settings(tmp_path):
    pool, test = generated_examples(6), generated_examples(2, offset=100)
    settings = dict(SWEEP, budgets=[2], strategies=["random"], seeds=[0])
    with pytest.raises(TunewiseError, match="larger than the pool"):
        run_sweep(pool, test, run_dir=tmp_path / "a", **dict(settings, budgets=[2, 7]))
    with pytest.raises(TunewiseError, match="unknown strategy"):
        run_sweep(pool, test, run_dir=tmp_path / "a", **dict(settings, strategies=["randum"]))
    with pytest.raises(TunewiseError, match="also appear in the pool"):
        run_sweep(pool, [pool[0]], run_dir=tmp_path / "a", **settings)
    with pytest.raises(TunewiseError, match="repeat"):
        run_sweep(pool, test, run_dir=tmp_path / "a", **dict(settings, seeds=[0, 0]))
    assert not (tmp_path / "a").exists()

    run_sweep(pool, test, run_dir=tmp_path / "b", **settings)
    changed = dict(settings, finetune_config=FinetuneConfig(learning_rate=1e-3, epochs=2, batch_size=2))
    with pytest.raises(TunewiseError, match="finetune_config"):
        run_sweep(pool, test, run_dir=tmp_path / "b", **changed)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(TunewiseError, match="not a sweep folder"):
        run_sweep(pool, test, run_dir=tmp_path / "c", **settings)


def test_a_scored_strategy_scores_the_pool_once_through_the_cache(tmp_path):
    pool, test = generated_examples(6), generated_examples(2, offset=100)
    settings = dict(SWEEP, budgets=[2, 3], strategies=["uncertainty"], seeds=[0])
    labels = []
    summary = run_sweep(pool, test, run_dir=tmp_path / "first", progress=lambda d, t, label: labels.append(label),
                        **settings)
    assert any(label.startswith("scoring the pool") for label in labels)
    assert set(summary["strategies"]["uncertainty"]["per_seed"]) == {"2", "3"}

    labels.clear()
    run_sweep(pool, test, run_dir=tmp_path / "second", progress=lambda d, t, label: labels.append(label), **settings)
    assert not any(label.startswith("scoring the pool") for label in labels)


def test_strategy_specs_parse_to_a_name_and_typed_parameters():
    assert parse_strategy_spec("random") == ("random", {})
    name, parameters = parse_strategy_spec("difficulty_window:c0=0.15,beta=0,n0=1e3,difficulty=cot_length")
    assert name == "difficulty_window"
    assert parameters == {"c0": 0.15, "beta": 0, "n0": 1000.0, "difficulty": "cot_length"}
    assert isinstance(parameters["beta"], int) and isinstance(parameters["c0"], float)
    assert parse_strategy_spec("difficulty_window:beta=-0.1")[1] == {"beta": -0.1}
    strategy = strategy_from_spec("difficulty_window:c0=0.15,beta=0")
    assert (strategy.c0, strategy.beta, strategy.difficulty) == (0.15, 0, "length")
    nested = strategy_from_spec("task_diversity:within=difficulty_bucket,bucket=hard,difficulty=loss")
    assert (nested.within.name, nested.within.bucket, nested.within.difficulty) == ("difficulty_bucket", "hard", "loss")


def test_each_run_is_scored_on_the_easy_medium_and_hard_thirds_of_the_test_set():
    class Tokenizer:  # one token per word
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [text.split() for text in texts]}

    test = [parse_record({"question": f"q{i}", "answer": " ".join(["w"] * (1 + i % 6)), "task": task}, "task")
            for i, task in enumerate(["a"] * 6 + ["b"] * 3)]
    tertiles = tertiles_by_answer_length(test, Tokenizer())
    assert [tertiles[e.id] for e in test] == ["easy", "easy", "medium", "medium", "hard", "hard",
                                              "easy", "medium", "hard"]
    samples = [{"id": e.id, "task": e.task, "correct": i in (0, 1, 2, 6)} for i, e in enumerate(test)]
    # easy: task a 2/2 right, task b 1/1 → 1.0; medium: a 1/2, b 0/1 → 0.25; hard: 0.
    assert tertile_scores(samples, tertiles) == {"easy": 1.0, "medium": 0.25, "hard": 0.0}
    loglik = [{"id": test[0].id, "task": "a", "log_likelihood": -2.0}]
    assert tertile_scores(loglik, tertiles) == {"easy": -2.0, "medium": None, "hard": None}


def test_a_strategy_list_keeps_each_specs_parameters_with_it():
    text = "random, difficulty_window:c0=0.15,beta=0,task_diversity,difficulty_window:c0=0.85"
    assert split_strategy_specs(text) == ["random", "difficulty_window:c0=0.15,beta=0", "task_diversity",
                                          "difficulty_window:c0=0.85"]


def test_a_spec_runs_under_a_file_safe_name_and_keeps_its_label(tmp_path):
    spec = "difficulty_window:c0=0.15,beta=0"
    assert run_file_name(spec, 8, 1) == "difficulty_window@c0~0.15+beta~0__b8__s1.json"
    assert run_file_name("random", 8, 1) == "random__b8__s1.json"
    write_run(tmp_path, "zero_shot", 0, None, {"a": 0.1})
    write_run(tmp_path, "random", 8, 0, {"a": 0.2})
    write_run(tmp_path, spec, 8, 0, {"a": 0.5})
    summary = summarise_sweep(tmp_path)
    assert list(summary["strategies"]) == ["random", spec]
    assert summary["strategies"][spec]["gain_over_random"]["8"]["mean"] == pytest.approx(0.3)


@pytest.mark.parametrize("spec, problem", [
    ("difficulty_window:c0=2", "c0"),
    ("difficulty_window:gamma=1", "gamma"),
    ("difficulty_windw:c0=0.1", "unknown strategy"),
    ("difficulty_window:c0", "malformed"),
    ("difficulty_window:c0=0.1,c0=0.2", "malformed"),
    ("difficulty_window:c0=1e+3", "malformed"),
    (":c0=0.1", "strategy name"),
])
def test_a_bad_spec_is_refused_naming_the_spec(tmp_path, spec, problem):
    with pytest.raises(TunewiseError, match=problem) as refused:
        strategy_from_spec(spec)
    assert f"'{spec}'" in str(refused.value) and refused.value.field == "strategies"
    pool, test = generated_examples(6), generated_examples(2, offset=100)
    with pytest.raises(TunewiseError, match=re.escape(f"'{spec}'")):
        run_sweep(pool, test, run_dir=tmp_path / "sweep", **dict(SWEEP, strategies=["random", spec]))
    assert not (tmp_path / "sweep").exists()


def test_extra_parameters_reach_the_strategy_and_are_recorded_with_each_run(tmp_path):
    pool, test = generated_examples(10), generated_examples(2, offset=100)
    predicted = {"add": 0.9, "echo": 0.1}
    strategy = strategy_from_spec("efficiency:max_budget=8", {"predicted_auc": predicted})
    assert strategy.predicted_auc == predicted and strategy.max_budget == 8
    run_sweep(pool, test, run_dir=tmp_path, strategy_parameters={"efficiency": {"predicted_auc": predicted}},
              **dict(SWEEP, strategies=["efficiency"], budgets=[4], seeds=[0]))
    record = json.loads((tmp_path / "runs" / run_file_name("efficiency", 4, 0)).read_text())
    assert record["strategy_parameters"] == {"predicted_auc": predicted}
    allocation = record["selection_details"]["allocation"]
    assert sum(allocation.values()) == 4 and allocation["add"] > allocation["echo"]


def test_extra_parameters_are_refused_twice_or_for_an_unswept_strategy(tmp_path):
    with pytest.raises(TunewiseError, match="both set max_budget"):
        strategy_from_spec("efficiency:max_budget=8", {"max_budget": 16, "predicted_auc": {"a": 0.5}})
    pool, test = generated_examples(6), generated_examples(2, offset=100)
    with pytest.raises(TunewiseError, match="not swept: efficiency"):
        run_sweep(pool, test, run_dir=tmp_path / "sweep", strategy_parameters={"efficiency": {}}, **SWEEP)
    assert not (tmp_path / "sweep").exists()


def test_sweep_with_the_paper_a_profile_validates_on_unselected_pool_examples(tmp_path):
    pool, test = generated_examples(12), generated_examples(3, offset=100)
    config = FinetuneConfig.from_profile("paper-a", method="lora", learning_rate=5e-2, max_steps=4, eval_steps=2,
                                         batch_size=2, gradient_accumulation_steps=1)
    run_sweep(pool, test, budgets=[5, 10], strategies=["random"], seeds=[0], model_name="tiny-random",
              run_dir=tmp_path, finetune_config=config, max_new_tokens=2)
    settings = json.loads((tmp_path / "sweep_config.json").read_text())
    assert settings["finetune_config"]["eval_steps"] == 2 and settings["finetune_config"]["lr_scheduler"] == "cosine"
    for budget in (5, 10):
        record = json.loads((tmp_path / "runs" / run_file_name("random", budget, 0)).read_text())
        training = record["training"]
        # the whole budget trains; validation is int(20 % of it) drawn from examples it did not select
        assert training["examples"] == budget and training["validation_examples"] == max(1, int(0.2 * budget))
        assert len(training["steps"]) == 4 and [e["step"] for e in training["evaluations"]] == [2, 4]
