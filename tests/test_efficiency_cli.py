"""``tunewise curve``, ``coslow``, ``estimate`` and ``calibrate`` through the command line."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import tunewise.cli.efficiency  # noqa: F401  (registers the commands)
from tunewise.cli.app import app
from tunewise.efficiency.curve import curve_auc
from tunewise.efficiency.predict import labels_needed

runner = CliRunner()
ANLI = {"0": 0.393, "50": 0.385, "100": 0.412, "200": 0.417, "500": 0.574, "1000": 0.704, "2500": 0.738, "5000": 0.726}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- curve ---------------------------------------------------------------------------------------


def test_curve_json_prints_only_json_with_the_auc(tmp_path):
    path = write_json(tmp_path / "anli.json", ANLI)
    result = invoke("curve", path, "--ceiling", 0.92, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["auc"] == pytest.approx(0.18393439255532396, abs=1e-12)
    # The dip to 0.385 at 50 examples is lifted to the zero-shot 0.393 by the envelope.
    assert document["ceiling"] == 0.92 and document["floor"] == 0.393


def test_curve_text_output_and_plot(tmp_path):
    path = write_json(tmp_path / "anli.json", ANLI)
    plot = tmp_path / "anli.png"
    result = invoke("curve", path, "--plot", plot, "--max-budget", 1000, "--grid", "50,100,200,500,1000")
    assert result.exit_code == 0, result.output
    expected = curve_auc({int(k): v for k, v in ANLI.items()}, max_budget=1000, grid=(50, 100, 200, 500, 1000))
    assert f"data-efficiency AUC: {expected:.4f}" in result.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_curve_warns_without_a_ceiling_and_takes_a_human_one_by_task(tmp_path):
    path = write_json(tmp_path / "anli.json", ANLI)
    bare = invoke("curve", path, "--json")
    assert bare.exit_code == 0 and "WARNING" in bare.stderr and "--ceiling" in bare.stderr
    assert json.loads(bare.stdout)["ceiling_source"].startswith("best measured score")
    given = invoke("curve", path, "--ceiling", 0.92, "--json")
    assert "WARNING" not in given.stderr and json.loads(given.stdout)["ceiling_source"] == "given"
    boolq = invoke("curve", path, "--task", "boolq", "--json")
    assert "WARNING" not in boolq.stderr
    document = json.loads(boolq.stdout)
    assert (document["ceiling"], document["ceiling_source"]) == (0.89, "paper A human score (boolq)")
    unknown = invoke("curve", path, "--task", "my_task")
    assert "WARNING" in unknown.stderr and "no human score for task 'my_task'" in unknown.stderr


def test_curve_file_with_one_curve_per_seed(tmp_path):
    seeds = [{"0": 0.2, "50": 0.6, "5000": 0.4}, {"0": 0.2, "50": 0.2, "5000": 0.8}]
    path = write_json(tmp_path / "seeds.json", seeds)
    result = invoke("curve", path, "--ceiling", 1.0, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["seeds"] == 2 and document["envelope"][-1] == pytest.approx(0.7)
    assert document["auc"] == pytest.approx(curve_auc([{int(n): s for n, s in seed.items()} for seed in seeds],
                                                      ceiling=1.0))
    text = invoke("curve", path, "--ceiling", 1.0)
    assert "0.6000 / 0.2000" in text.stdout and "2 seeds" in text.stdout


def test_curve_bad_input_exits_2_naming_file_and_key(tmp_path):
    path = write_json(tmp_path / "bad.json", {"0": 0.4, "fifty": 0.5})
    result = invoke("curve", path)
    assert result.exit_code == 2
    assert str(path) in result.stderr and "'fifty'" in result.stderr
    assert "Traceback" not in result.output


# -- estimate ------------------------------------------------------------------------------------


def test_estimate_with_paper_coefficients(tmp_path):
    result = invoke("estimate", "--coslow", 0.5, "--coefficients", "paper:llama-3.1-8b", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    auc = 0.545 * 0.5 + 0.310
    assert document["predicted_auc"] == pytest.approx(auc)
    assert document["coefficients"]["source"].startswith("paper:llama-3.1-8b")
    assert document["labels_needed"] == {str(t): math.ceil(labels_needed(auc, t)) for t in (0.5, 0.8, 0.9)}
    assert set(document["predicted_curve"]) == {"50", "100", "200", "500", "1000", "2500", "5000"}
    assert document["predicted_curve"]["5000"] == pytest.approx(1.0)


def test_estimate_text_names_the_coefficients(tmp_path):
    result = invoke("estimate", "--coslow", 0.3, "--coefficients", "paper:qwen2.5-14b", "--targets", "0.5")
    assert result.exit_code == 0, result.output
    assert "paper:qwen2.5-14b" in result.stdout and "labels" in result.stdout


def test_estimate_refuses_to_invent_coefficients(tmp_path):
    coslow_file = write_json(tmp_path / "coslow.json", {"coslow": 0.4, "model": "an-uncalibrated-model"})
    result = invoke("estimate", "--coslow-file", coslow_file)
    assert result.exit_code == 2
    assert "tunewise calibrate" in result.stderr and "paper:llama-3.1-8b" in result.stderr
    result = invoke("estimate", "--coslow", 0.4)
    assert result.exit_code == 2 and "--coefficients" in result.stderr


def test_estimate_turns_a_raw_target_into_tau():
    # τ = (0.8 − 0.4) / (0.92 − 0.4) = 0.4 / 0.52.
    result = invoke("estimate", "--coslow", 0.5, "--coefficients", "paper:llama-3.1-8b", "--target-accuracy", 0.8,
                    "--zero-shot", 0.4, "--ceiling", 0.92, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    tau = 0.4 / 0.52
    entry = document["target_accuracy"]["0.8"]
    assert entry["tau"] == pytest.approx(tau, abs=1e-15)
    assert entry["labels_needed"] == math.ceil(labels_needed(0.545 * 0.5 + 0.310, tau))
    text = invoke("estimate", "--coslow", 0.5, "--coefficients", "paper:llama-3.1-8b", "--target-accuracy", 0.8,
                  "--zero-shot", 0.4, "--ceiling", 0.92)
    assert "to reach a score of 0.8 (77% of the way from zero-shot 0.4 to ceiling 0.92)" in text.stdout


@pytest.mark.parametrize(
    "args, message",
    [(["--target-accuracy", "0.3", "--zero-shot", "0.4", "--ceiling", "0.9"], "not above the zero-shot"),
     (["--target-accuracy", "0.4", "--zero-shot", "0.4", "--ceiling", "0.9"], "needs no labels"),
     (["--target-accuracy", "0.95", "--zero-shot", "0.4", "--ceiling", "0.9"], "above the ceiling"),
     (["--target-accuracy", "0.8", "--zero-shot", "0.9", "--ceiling", "0.5"], "ceiling 0.5 is not above"),
     (["--target-accuracy", "0.8", "--zero-shot", "0.4"], "needs the task's --zero-shot score and its --ceiling"),
     (["--target-accuracy", "0.8", "--zero-shot", "0.4", "--ceiling", "0.9", "--targets", "0.5"], "not both"),
     (["--zero-shot", "0.4"], "only convert --target-accuracy"),
     (["--target-accuracy", "high", "--zero-shot", "0.4", "--ceiling", "0.9"], "comma-separated")],
)
def test_estimate_refuses_inconsistent_raw_targets(args, message):
    result = invoke("estimate", "--coslow", 0.5, "--coefficients", "paper:llama-3.1-8b", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [(["--coslow", "0.4", "--coslow-file", "x.json"], "exactly one"), ([], "exactly one"),
     (["--coslow", "1.5", "--coefficients", "paper:mistral-7b"], "[-1, 1]"),
     (["--coslow", "0.4", "--coefficients", "paper:mistral-7b", "--targets", "80"], "(0, 1]"),
     (["--coslow", "0.4", "--coefficients", "paper:gpt"], "choose one of")],
)
def test_estimate_argument_errors(args, message):
    result = invoke("estimate", *args)
    assert result.exit_code == 2
    assert message in result.stderr


# -- calibrate -----------------------------------------------------------------------------------


def measured_tasks():
    """Four tasks whose AUC is exactly 0.5 · CoS-Low + 0.3, and one with a noisy AUC."""
    tasks = []
    for name, coslow in (("a", 0.1), ("b", 0.3), ("c", 0.5), ("d", 0.7)):
        tasks.append({"task": name, "coslow": coslow, "auc": 0.5 * coslow + 0.3, "ceiling": 1.0})
    tasks.append({"task": "curve-task", "coslow": 0.4, "ceiling": 0.92, "curve": ANLI})
    return tasks


def test_calibrate_writes_coefficients_and_compares_with_the_mean(tmp_path):
    measured = write_json(tmp_path / "measured.json", {"model": "smollm2", "tasks": measured_tasks()})
    output = tmp_path / "calibration.json"
    result = invoke("calibrate", measured, "-o", output, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tasks"] == 5
    assert summary["loto_mae"] > 0 and summary["mean_predictor_mae"] > 0
    rows = summary["labels_needed"]
    assert [row["target"] for row in rows] == [0.5, 0.8, 0.9]
    assert all(row["task"] == "curve-task" for row in rows)
    # The ANLI curve reaches half of its span (0.385 → 0.92) between 500 and 1000 examples.
    assert 500 < rows[0]["observed_labels"] <= 1000 and rows[0]["doubling_schedule_labels"] == 800
    assert rows[2]["observed_labels"] is None and rows[2]["doubling_schedule_labels"] is None
    calibration = json.loads(output.read_text())
    assert calibration["model"] == "smollm2"
    assert calibration["slope"] == pytest.approx(summary["slope"])

    estimate = invoke("estimate", "--coslow", 0.4, "--coefficients", output, "--json")
    assert estimate.exit_code == 0, estimate.output
    assert str(output) in json.loads(estimate.stdout)["coefficients"]["source"]


def test_calibrate_text_report(tmp_path):
    measured = write_json(tmp_path / "measured.json", measured_tasks())
    result = invoke("calibrate", measured, "-o", tmp_path / "calibration.json")
    assert result.exit_code == 0, result.output
    absolute = result.stdout.index("leave-one-task-out absolute error")
    assert "AUC points" in result.stdout and "the unit of paper A's 8.6 against 12.5" in result.stdout
    # The absolute error comes first, the relative error after it, never beside the paper's figures.
    assert result.stdout.index("relative error") > absolute
    assert "not comparable with paper A" in result.stdout
    assert "Pearson" in result.stdout and "coefficients over the 5 leave-one-task-out folds" in result.stdout
    assert "doubling schedule" in result.stdout


@pytest.mark.parametrize(
    "tasks, message",
    [([{"task": "a", "coslow": 0.1, "auc": 0.3, "ceiling": 1.0}] * 2, "at least 3 tasks"),
     ([{"task": "a", "coslow": 2, "auc": 0.3}], "[-1, 1]"),
     ([{"task": "a", "coslow": 0.2}], "'curve', 'curves' or an 'auc'"),
     ([{"task": "a", "coslow": 0.2, "grad_norm": "big", "auc": 0.3}], "tasks[0].grad_norm"),
     ([{"task": "a", "coslow": 0.2, "curve": ANLI, "curves": [ANLI]}], "not both"),
     ([{"task": "a", "coslow": 0.2, "curve": ANLI}], "--max-budget 2500"),
     ([{"task": "a", "coslow": 0.2, "curve": {"x": 0.1}}], "tasks[0] (a).x"),
     ({"tasks": []}, "non-empty list")],
)
def test_calibrate_input_errors(tmp_path, tasks, message):
    measured = write_json(tmp_path / "measured.json", tasks)
    extra = ("--max-budget", 3000) if message.startswith("--max-budget") else ()
    result = invoke("calibrate", measured, "-o", tmp_path / "calibration.json", *extra)
    assert result.exit_code == 2
    assert message in result.stderr


def curve_for(auc_scale: float) -> dict:
    """A curve from 0.2 that gains ``auc_scale`` of 0.6 at 50 examples and all of it at 5000."""
    return {"0": 0.2, "50": 0.2 + 0.6 * auc_scale, "5000": 0.8}


def test_calibrate_refuses_tasks_without_a_ceiling_and_writes_nothing(tmp_path):
    tasks = [{"task": f"own_task_{i}", "coslow": c, "curve": curve_for(c)} for i, c in enumerate((0.2, 0.4, 0.6))]
    measured = write_json(tmp_path / "measured.json", tasks)
    output = tmp_path / "calibration.json"
    result = invoke("calibrate", measured, "-o", output)
    assert result.exit_code == 2
    assert "3 of 3 tasks have no human or target ceiling (own_task_0, own_task_1, own_task_2)" in result.stderr
    assert '"ceiling"' in result.stderr and "--allow-no-ceiling" in result.stderr
    assert not output.exists()
    # --allow-no-ceiling fits them, warns loudly and records which tasks had none.
    allowed = invoke("calibrate", measured, "-o", output, "--allow-no-ceiling", "--json")
    assert allowed.exit_code == 0, allowed.output
    assert "WARNING" in allowed.stderr and "not paper A's normalisation" in allowed.stderr
    summary = json.loads(allowed.stdout)
    assert summary["tasks_without_ceiling"] == ["own_task_0", "own_task_1", "own_task_2"]
    assert json.loads(output.read_text())["tasks_without_ceiling"] == summary["tasks_without_ceiling"]


def test_calibrate_takes_paper_a_human_ceilings_by_exact_task_name(tmp_path):
    # boolq (0.89) and bbh_web_of_lies (1.0) have released human scores; the third task states its own.
    tasks = [{"task": "boolq", "coslow": 0.2, "curve": curve_for(0.3)},
             {"task": "bbh_web_of_lies", "coslow": 0.4, "curve": curve_for(0.5)},
             {"task": "mine", "coslow": 0.6, "curve": curve_for(0.7), "ceiling": 0.95}]
    measured = write_json(tmp_path / "measured.json", tasks)
    result = invoke("calibrate", measured, "-o", tmp_path / "calibration.json", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ceilings"]["boolq"] == {"ceiling": 0.89, "source": "paper A human score (boolq)"}
    assert summary["ceilings"]["bbh_web_of_lies"] == {"ceiling": 1.0, "source": "paper A human score (web_of_lies)"}
    assert summary["ceilings"]["mine"] == {"ceiling": 0.95, "source": "measured file"}
    expected = curve_auc({int(n): s for n, s in curve_for(0.3).items()}, ceiling=0.89)
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert [t["measured_auc"] for t in calibration["tasks"] if t["task"] == "boolq"] == [pytest.approx(expected)]
    # Without the shipped scores, boolq and bbh_web_of_lies have no ceiling and are refused.
    refused = invoke("calibrate", measured, "-o", tmp_path / "other.json", "--no-paper-ceilings")
    assert refused.exit_code == 2 and "2 of 3 tasks" in refused.stderr


def test_calibrate_takes_one_curve_per_seed(tmp_path):
    seeds = [{"0": 0.2, "50": 0.6, "5000": 0.4}, {"0": 0.2, "50": 0.2, "5000": 0.8}]
    tasks = [{"task": "seeded", "coslow": 0.3, "ceiling": 1.0, "curves": seeds},
             {"task": "b", "coslow": 0.5, "auc": 0.5, "ceiling": 1.0},
             {"task": "c", "coslow": 0.7, "auc": 0.6, "ceiling": 1.0}]
    measured = write_json(tmp_path / "measured.json", tasks)
    result = invoke("calibrate", measured, "-o", tmp_path / "calibration.json", "--json")
    assert result.exit_code == 0, result.output
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    measured_auc = [t["measured_auc"] for t in calibration["tasks"] if t["task"] == "seeded"]
    per_seed = [{int(n): s for n, s in seed.items()} for seed in seeds]
    assert measured_auc == [pytest.approx(curve_auc(per_seed, ceiling=1.0))]


def test_calibrate_reports_every_predictor_column_present(tmp_path):
    tasks = [{"task": name, "coslow": c, "auc": a, "ceiling": 1.0, "grad_norm": g, "mean_confidence": m}
             for name, c, a, g, m in (("a", 0.1, 0.2, 3.0, 0.9), ("b", 0.3, 0.5, 1.0, 0.5),
                                      ("c", 0.5, 0.4, 2.0, 0.7), ("d", 0.7, 0.7, 0.5, 0.2))]
    measured = write_json(tmp_path / "measured.json", tasks)
    result = invoke("calibrate", measured, "-o", tmp_path / "calibration.json", "--json")
    assert result.exit_code == 0, result.output
    reports = {r["predictor"]: r for r in json.loads(result.stdout)["predictors"]}
    assert list(reports) == ["coslow", "grad_norm", "mean_confidence"]
    assert reports["mean_confidence"]["spearman"] == pytest.approx(-1.0)
    assert reports["grad_norm"]["tasks"] == 4 and reports["grad_norm"]["pearson"] < 0
    assert reports["coslow"]["loto_mae"] == pytest.approx(json.loads(result.stdout)["loto_mae"])


# -- coslow --------------------------------------------------------------------------------------


def write_pool(path, count: int, labelled: bool = False):
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            record = {"prompt": f"What is {i} times 3?", "task": "times" if i % 5 else "other"}
            if labelled:
                record["response"] = str(3 * i)
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.mark.integration
def test_coslow_two_steps_on_an_unlabelled_pool(tmp_path, lively_model_dir):
    pool = write_pool(tmp_path / "pool.jsonl", 50)
    out = tmp_path / "out"
    common = ["--task-field", "task", "--task", "times", "--model", lively_model_dir, "-o", out]

    too_small = invoke("coslow", pool, *common)
    assert too_small.exit_code == 2 and "prompts available" in too_small.stderr and "320 needed" in too_small.stderr

    first = invoke("coslow", pool, *common, "--allow-small-pool")
    assert first.exit_code == 0, first.output
    to_label = out / "to_label.jsonl"
    records = [json.loads(line) for line in to_label.read_text().splitlines()]
    assert all(r["response"] is None and r["task"] == "times" for r in records)
    # The 32 least confident, then the 32 random prompts for CoS-Rand (a prompt in both is listed once).
    assert sum(r["sample"] in ("low_confidence", "both") for r in records) == 32
    assert sum(r["sample"] in ("random", "both") for r in records) == 32
    assert len({r["pool_id"] for r in records}) == len(records) <= 40
    assert "--labelled" in first.stderr and "--task-field task --task times" in first.stderr
    assert not (out / "coslow.json").exists()

    unanswered = invoke("coslow", pool, *common[:4], "--labelled", to_label, "--model", lively_model_dir, "-o", out)
    assert unanswered.exit_code == 2
    assert f"{len(records)} of {len(records)} examples have no response" in unanswered.stderr

    for record in records:
        record["response"] = str(3 * int(record["prompt"].split()[2]))
    to_label.write_text("".join(json.dumps(r) + "\n" for r in records))
    second = invoke("coslow", pool, *common[:4], "--labelled", to_label, "--model", lively_model_dir, "-o", out)
    assert second.exit_code == 0, second.output
    document = json.loads((out / "coslow.json").read_text())
    assert -1 <= document["coslow"] <= 1 and -1 <= document["coslow_random"] <= 1
    assert document["grad_norm"] > 0 and document["grad_norm_random"] > 0
    assert 0 < document["mean_confidence"] < 1 and document["include_eos"] is False
    assert document["k"] == 32 and len(document["cosines"]) == 496
    assert document["task"] == "times" and document["model_fingerprint"].startswith("local:")
    assert "CoS-Low of task 'times'" in second.stdout


@pytest.mark.integration
def test_coslow_on_a_labelled_pool_goes_straight_to_the_value(tmp_path, lively_model_dir):
    pool = write_pool(tmp_path / "pool.jsonl", 40, labelled=True)
    result = invoke("coslow", pool, "--model", lively_model_dir, "--allow-small-pool", "--no-random", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "coslow.json").read_text())
    assert -1 <= document["coslow"] <= 1 and document["coslow_random"] is None
    assert document["lora_target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                               "v_proj"]
    with_end = invoke("coslow", pool, "--model", lively_model_dir, "--allow-small-pool", "--no-random", "--include-eos",
                      "-o", tmp_path / "with_end")
    assert with_end.exit_code == 0, with_end.output
    other = json.loads((tmp_path / "with_end" / "coslow.json").read_text())
    assert other["include_eos"] is True and other["examples"] == document["examples"]
    assert other["coslow"] != document["coslow"]


def test_coslow_task_errors(tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl", 10)
    several = invoke("coslow", pool, "--task-field", "task", "--model", "tiny-random")
    assert several.exit_code == 2 and "--task" in several.stderr
    typo = invoke("coslow", pool, "--task-field", "task", "--task", "time", "--model", "tiny-random")
    assert typo.exit_code == 2 and "did you mean 'times'" in typo.stderr


@pytest.mark.integration
def test_coslow_reads_renamed_fields_with_the_column_flags_and_records_them(tmp_path, lively_model_dir):
    mapping = {"prompt_field": "ask", "response_field": "reply", "id_field": "key"}
    flags = ["--prompt-field", "ask", "--response-field", "reply", "--id-field", "key"]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"ask": f"What is {i} times 3?", "reply": str(3 * i), "key": f"k{i}"})
                                + "\n" for i in range(40)))
    result = invoke("coslow", labelled, *flags, "--model", lively_model_dir, "--allow-small-pool", "--no-random",
                    "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "coslow.json").read_text())["columns"] == mapping
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"ask": f"What is {i} times 3?", "key": f"k{i}", "note": f"row {i}"})
                                  + "\n" for i in range(40)))
    first = invoke("coslow", unlabelled, "--prompt-field", "ask", "--id-field", "key", "--model", lively_model_dir,
                   "--allow-small-pool", "-o", tmp_path / "two_steps")
    assert first.exit_code == 0, first.output
    # The prompts to label keep the user's own id and fields (issue 16).
    records = [json.loads(line) for line in (tmp_path / "two_steps" / "to_label.jsonl").read_text().splitlines()]
    assert records and all(r["id"] == f"k{r['prompt'].split()[2]}" and r["note"] == f"row {r['prompt'].split()[2]}"
                           for r in records)
    # The printed next step reads the pool with the same fields.
    assert "--prompt-field ask --id-field key" in " ".join(first.stderr.split())


@pytest.mark.parametrize("extra", [(), ("--target-accuracy", "0.8", "--zero-shot", "0.4", "--ceiling", "0.9")])
def test_quiet_estimate_keeps_the_calibration_caveat_beside_the_labels_needed(extra):
    """-q silences stderr; a labels-needed figure must still carry its caveat on stdout, and --json
    keeps it as a field."""
    from tunewise.efficiency.predict import coefficients_for

    caveat = coefficients_for("smollm2").caveat
    result = runner.invoke(app, ["-q", "estimate", "--coslow", "0.2", "--model", "smollm2", *extra])
    assert result.exit_code == 0, result.output
    assert "labels" in result.stdout
    assert f"caveat: {caveat[:40]}" in " ".join(result.stdout.split())
    as_json = runner.invoke(app, ["-q", "estimate", "--coslow", "0.2", "--model", "smollm2", "--json", *extra])
    assert json.loads(as_json.stdout)["coefficients"]["caveat"] == caveat
