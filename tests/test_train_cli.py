"""`tunewise finetune`, `evaluate` and `sweep` end to end on tiny-random, and their exit-2 cases."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tunewise.cli
from tunewise.cli.app import app
from tunewise.data.pool import Columns, read_pool
from tunewise.training.sweep import run_file_name


@pytest.fixture(scope="module", autouse=True)
def commands():
    tunewise.cli._register_commands()


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def sums(numbers):
    return [{"question": f"What is {n} + {n}?", "answer": str(2 * n), "task": ("low", "high")[n >= 50]}
            for n in numbers]


@pytest.fixture
def files(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", sums([1, 2, 3, 4, 51, 52, 53, 54]))
    test = write_jsonl(tmp_path / "test.jsonl", sums([7, 8, 77]))
    return pool, test


TINY = ("--model", "tiny-random")


def test_finetune_then_evaluate_with_the_adapter(tmp_path, files):
    pool, test = files
    adapter = tmp_path / "adapter"
    trained = invoke("finetune", pool, *TINY, "--task-field", "task", "--max-steps", 2, "--batch-size", 4,
                     "--learning-rate", 0.01, "-o", adapter)
    assert trained.exit_code == 0, trained.output
    assert "fine-tuned on 8 examples: 2 steps" in trained.output
    assert (adapter / "adapter_model.safetensors").exists()
    assert json.loads((adapter / "tunewise_adapter.json").read_text())["finetune_config"]["learning_rate"] == 0.01

    results_path = tmp_path / "out" / "results.json"
    evaluated = invoke("evaluate", test, *TINY, "--adapter", adapter, "--task-field", "task",
                       "--max-new-tokens", 3, "-o", results_path)
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads(results_path.read_text())
    assert set(results["results"]) == {"low", "high"}
    assert results["results"]["low"]["n"] == 2 and results["results"]["low"]["metric"] == "gsm8k"  # numeric golds: the final number
    assert results["config"]["adapter"] == str(adapter) and results["config"]["model"] == "tiny-random"
    assert len(results["samples"]) == 3
    assert "Evaluation" in evaluated.output and "mean over tasks" in evaluated.output


def test_finetune_on_a_selection_trains_on_the_picks_only(tmp_path, files):
    pool, _ = files
    examples = read_pool(pool, "task").examples
    selection = tmp_path / "selection.jsonl"
    picks = [examples[5], examples[0], examples[2]]
    write_jsonl(selection, [{"position": k, "id": e.id, "task": e.task, "scores": {}, "reason": "test"}
                            for k, e in enumerate(picks)])
    (tmp_path / "selection.meta.json").write_text("{}")
    adapter = tmp_path / "adapter"
    result = invoke("finetune", pool, *TINY, "--task-field", "task", "--selection", selection, "--epochs", 1,
                    "-o", adapter)
    assert result.exit_code == 0, result.output
    info = json.loads((adapter / "tunewise_adapter.json").read_text())
    assert info["training"]["examples"] == 3
    assert (info["pool"], info["selection"], info["task_field"]) == (str(pool), str(selection), "task")
    assert "columns" not in info

    write_jsonl(selection, [{"position": 0, "id": "not-in-the-pool", "task": "low", "scores": {}, "reason": "x"}])
    missing = invoke("finetune", pool, *TINY, "--task-field", "task", "--selection", selection, "-o", adapter)
    assert missing.exit_code == 2 and "not in the pool" in missing.output


def test_sweep_prints_curves_and_gains(tmp_path, files):
    pool, test = files
    run_dir = tmp_path / "sweep"
    result = invoke("sweep", pool, "--test", test, "--budgets", "2,4", "--strategies", "random,task_diversity",
                    "--seeds", "0,1", *TINY, "--task-field", "task", "--max-new-tokens", 2, "--epochs", 1,
                    "--batch-size", 2, "-o", run_dir)
    assert result.exit_code == 0, result.output
    assert "Learning curves" in result.output and "Gain over random" in result.output
    summary = json.loads((run_dir / "sweep.json").read_text())
    assert summary["budgets"] == [2, 4] and summary["seeds"] == [0, 1]
    assert (run_dir / "curves.png").exists()
    assert len(list((run_dir / "runs").glob("*.json"))) == 1 + 2 * 2 * 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("finetune", "{unlabelled}", *TINY, "-o", "{tmp}/a"), "no response"),
        (("finetune", "{pool}", *TINY, "--lora-rank", 0, "-o", "{tmp}/a"), "lora_rank"),
        (("finetune", "{pool}", *TINY, "-o", "{tmp}"), "the output holds the pool"),
        (("finetune", "{tmp}/missing.jsonl", *TINY, "-o", "{tmp}/a"), "no such file"),
        (("evaluate", "{test}", *TINY, "--metric", "accuracy", "-o", "{tmp}/r.json"), "unknown metric"),
        (("evaluate", "{test}", *TINY, "--adapter", "{tmp}", "-o", "{tmp}/r.json"), "not an adapter folder"),
        (("evaluate", "{test}", *TINY, "-o", "{tmp}"), "is a folder"),
        (("evaluate", "{test}", *TINY, "--task-field", "task", "--metric", "choice", "-o", "{tmp}/r.json"),
         "distinct gold answer"),
        (("sweep", "{pool}", "--test", "{test}", "--budgets", "2,x", *TINY, "-o", "{tmp}/s"), "not a whole number"),
        (("sweep", "{pool}", "--test", "{test}", "--budgets", "20", *TINY, "-o", "{tmp}/s"), "larger than the pool"),
        (("sweep", "{pool}", "--test", "{pool}", "--budgets", "2", *TINY, "-o", "{tmp}/s"), "also appear in the pool"),
    ],
)
def test_bad_input_exits_2_without_writing(tmp_path, files, arguments, message):
    pool, test = files
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{"question": "What is 1 + 1?"}])
    names = {"pool": pool, "test": test, "unlabelled": unlabelled, "tmp": tmp_path}
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(*(str(a).format(**names) for a in arguments))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_finetune_with_the_paper_a_profile_keeps_explicit_flags(tmp_path, files):
    pool, _ = files
    adapter = tmp_path / "adapter"
    sft = tmp_path / "sft.yaml"
    sft.write_text("logging_first_step: true\n")
    result = invoke("finetune", pool, *TINY, "--task-field", "task", "--profile", "paper-a", "--method", "lora",
                    "--max-steps", 4, "--eval-steps", 2, "--batch-size", 2, "--gradient-accumulation-steps", 1,
                    "--sft-config", sft, "--dtype", "float32", "-o", adapter)
    assert result.exit_code == 0, result.output
    info = json.loads((adapter / "tunewise_adapter.json").read_text())
    config = info["finetune_config"]
    # explicit flags win; the rest is paper A's recipe
    assert (config["method"], config["max_steps"], config["eval_steps"]) == ("lora", 4, 2)
    assert (config["learning_rate"], config["lr_scheduler"], config["early_stopping_patience"]) == (1e-5, "cosine", 10)
    training = info["training"]
    assert training["examples"] == 7 and training["validation_examples"] == 1
    assert [e["step"] for e in training["evaluations"]] == [2, 4] and training["best_step"] in (2, 4)
    assert training["precision"] == "float32"


@pytest.mark.parametrize(
    ("extra", "message"),
    [(("--profile", "paper-z"), "unknown fine-tuning profile"),
     (("--sft-config", "{tmp}/bad.yaml"), "not an SFTConfig field"),
     (("--dtype", "bfloat61"), "unknown dtype"),
     (("--batching", "packed"), "unknown batching"),
     (("--max-seq-length", 3), "do not fit --max-seq-length"),
     (("--max-seq-length", 3, "--truncate"), "no example keeps a response token")],
)
def test_finetune_refuses_bad_training_settings(tmp_path, files, extra, message):
    pool, _ = files
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.1\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("finetune", pool, *TINY, *(str(a).format(tmp=tmp_path) for a in extra), "-o", tmp_path / "a")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_sweep_reads_renamed_fields_and_records_the_mapping(tmp_path):
    """Issue 16: the column flags of `sweep` are recorded, under "columns", in sweep_config.json and
    sweep.json."""
    def renamed(numbers):
        return [{"ask": r["question"], "reply": r["answer"], "ref": f"mine-{n}", "task": r["task"]}
                for n, r in zip(numbers, sums(numbers))]

    pool = write_jsonl(tmp_path / "pool.jsonl", renamed([1, 2, 51, 52]))
    test = write_jsonl(tmp_path / "test.jsonl", renamed([7, 77]))
    run_dir = tmp_path / "sweep"
    flags = ["--prompt-field", "ask", "--response-field", "reply", "--id-field", "ref"]
    result = invoke("sweep", pool, "--test", test, "--budgets", "2", "--strategies", "random", "--seeds", "0",
                    *TINY, "--task-field", "task", *flags, "--max-new-tokens", 1, "--max-steps", 1, "-o", run_dir)
    assert result.exit_code == 0, result.output
    mapping = {"prompt_field": "ask", "response_field": "reply", "id_field": "ref"}
    assert json.loads((run_dir / "sweep_config.json").read_text())["columns"] == mapping
    summary = json.loads((run_dir / "sweep.json").read_text())
    assert summary["columns"] == mapping and "test_reading" not in summary["settings"]
    record = json.loads((run_dir / "runs" / run_file_name("random", 2, 0)).read_text())
    by_id = {e.id: e.user_id for e in read_pool(pool, "task", columns=Columns(**mapping)).examples}
    assert record["selected_user_ids"] == [by_id[i] for i in record["selected_ids"]]


def test_evaluate_samples_keep_the_users_ids_and_the_mapping_is_recorded(tmp_path):
    """Issue 16: with --id-field each sample carries the user's own id beside the content id, and
    the column flags are in the results' config."""
    test = write_jsonl(tmp_path / "test.jsonl", [{"ask": f"What is {n} + {n}?", "reply": str(2 * n), "ref": f"t{n}"}
                                                 for n in (3, 4, 5)])
    predictions = write_jsonl(tmp_path / "predictions.jsonl", [{"line": line, "prediction": answer}
                                                               for line, answer in ((1, "6"), (2, "9"), (3, "10"))])
    output = tmp_path / "results.json"
    result = invoke("evaluate", test, "--prompt-field", "ask", "--response-field", "reply", "--id-field", "ref",
                    "--predictions", predictions, "-o", output)
    assert result.exit_code == 0, result.output
    results = json.loads(output.read_text())
    assert results["config"]["columns"] == {"prompt_field": "ask", "response_field": "reply", "id_field": "ref"}
    by_user_id = {e.user_id: e.id for e in read_pool(test, columns=Columns(
        prompt_field="ask", response_field="reply", id_field="ref")).examples}
    assert [(s["user_id"], s["id"], s["correct"]) for s in results["samples"]] == [
        ("t3", by_user_id["t3"], True), ("t4", by_user_id["t4"], False), ("t5", by_user_id["t5"], True)]

    # Predictions may be keyed by the user's own ids (as the exports write "id"); a shared one is refused.
    write_jsonl(predictions, [{"id": f"t{n}", "prediction": str(2 * n)} for n in (5, 3, 4)])
    result = invoke("evaluate", test, "--prompt-field", "ask", "--response-field", "reply", "--id-field", "ref",
                    "--predictions", predictions, "-o", output)
    assert result.exit_code == 0, result.output
    assert [s["correct"] for s in json.loads(output.read_text())["samples"]] == [True, True, True]
    write_jsonl(test, [{"ask": f"What is {n} + {n}?", "reply": str(2 * n), "ref": "same"} for n in (3, 4)])
    write_jsonl(predictions, [{"id": "same", "prediction": "6"}, {"id": "same", "prediction": "8"}])
    result = invoke("evaluate", test, "--prompt-field", "ask", "--response-field", "reply", "--id-field", "ref",
                    "--predictions", predictions, "-o", tmp_path / "shared.json")
    # A test set whose items share an id is refused when read, before any prediction is matched.
    assert result.exit_code == 2 and "test.jsonl:2, field 'ref': the id 'same' is the id of line 1" in result.stderr


def test_finetune_records_the_pool_and_its_column_mapping_with_the_adapter(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"ask": f"What is {n} + {n}?", "reply": str(2 * n), "ref": f"p{n}"}
                                                 for n in (1, 2, 3)])
    adapter = tmp_path / "adapter"
    result = invoke("finetune", pool, *TINY, "--prompt-field", "ask", "--response-field", "reply", "--id-field", "ref",
                    "--max-steps", 1, "-o", adapter)
    assert result.exit_code == 0, result.output
    info = json.loads((adapter / "tunewise_adapter.json").read_text())
    assert info["columns"] == {"prompt_field": "ask", "response_field": "reply", "id_field": "ref"}
    assert info["pool"] == str(pool) and info["selection"] is None
