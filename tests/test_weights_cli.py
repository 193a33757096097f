"""`tunewise anchors` and `tunewise tune-weights` end to end, and their user errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import tunewise.cli
from tunewise.cli.app import app
from tunewise.data.pool import read_pool
from tunewise.data.table import write_scores
from tunewise.select.manifest import read_selection


@pytest.fixture(scope="module", autouse=True)
def commands():
    tunewise.cli._register_commands()


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def files(tmp_path):
    """A 20-example pool with generated scores, and a 6-example dev set."""
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"question": f"{i} + {i % 4}?", "answer": f"{i} + {i % 4} = {i + i % 4}\n#### {i + i % 4}"} for i in range(20)
    ])
    dev = write_jsonl(tmp_path / "dev.jsonl", [
        {"question": f"{i} * 2?", "answer": f"{i} * 2 = {2 * i}\n#### {2 * i}"} for i in range(6)
    ])
    ids = [example.id for example in read_pool(pool).examples]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": ids, "task": "default"})
    for name in ("loss", "ifd", "length", "cot_length", "confidence"):
        frame[name] = rng.random(len(ids))
    frame["embedding"] = list(rng.standard_normal((len(ids), 4)).astype(np.float32))
    scores = tmp_path / "scores.parquet"
    write_scores(frame, scores, {"model_fingerprint": "generated"})
    return {"pool": pool, "dev": dev, "scores": scores, "dir": tmp_path}


def tune(files, *extra):
    return invoke("tune-weights", files["scores"], "--pool", files["pool"], "--dev", files["dev"],
                  "-o", files["dir"] / "weights.json", *extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fraction", "0"], "--fraction must be in (0, 1]"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--sampler", "random"], "unknown sampler 'random'"),
        (["--metric", "accuracy"], "unknown metric 'accuracy'"),
        (["--validate", "2"], "too few points for a rank correlation"),
        (["--validate-metric", "loglik"], "did you mean 'log_likelihood'"),
        (["--features", "loss,ifdd"], "did you mean 'ifd'"),
        (["--features", "loss"], "one feature leaves nothing to weigh"),
        (["--orientation", "loss"], "cannot read the orientation 'loss'"),
        (["--orientation", "loss=up"], "the orientation of 'loss' is 'up'"),
        (["--orientation", "length=lower", "--features", "loss,ifd"], "not among the features"),
    ],
)
def test_tune_weights_refuses_bad_options_with_exit_2(files, extra, message):
    result = tune(files, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_tune_weights_refuses_scores_of_another_pool(files, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}])
    result = invoke("tune-weights", files["scores"], "--pool", other, "--dev", files["dev"], "-o", tmp_path / "w.json")
    assert result.exit_code == 2 and "scored ids are not in the pool" in result.output


def test_tune_weights_refuses_a_missing_scores_file_and_an_unlabelled_dev(files, tmp_path):
    result = invoke("tune-weights", tmp_path / "none.parquet", "--pool", files["pool"], "--dev", files["dev"],
                    "-o", tmp_path / "w.json")
    assert result.exit_code == 2 and "no such scores file" in result.output
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{"question": "q"}])
    result = invoke("tune-weights", files["scores"], "--pool", files["pool"], "--dev", unlabelled,
                    "-o", tmp_path / "w.json")
    assert result.exit_code == 2 and "dev examples have no response" in result.output
    result = invoke("anchors", unlabelled, "--model", "tiny-random", "-o", tmp_path / "a.jsonl")
    assert result.exit_code == 2 and "dev examples have no response" in result.output


def test_anchors_refuses_a_folder_as_output(files):
    result = invoke("anchors", files["dev"], "--model", "tiny-random", "-o", files["dir"])
    assert result.exit_code == 2 and "the output path is a folder" in result.output


@pytest.mark.integration
def test_anchors_writes_weighted_anchors_and_reports_tracking(files):
    output = files["dir"] / "anchors.jsonl"
    result = invoke("anchors", files["dev"], "--model", "tiny-random", "-m", 3, "--check-seeds", 2, "-o", output)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 3
    assert sum(record["anchor_weight"] for record in records) == pytest.approx(1.0)
    assert sum(record["cluster_size"] for record in records) == 6
    assert "full dev mean" in result.output and "random subset" in result.output


@pytest.mark.integration
def test_anchors_read_a_renamed_field_dev_set_and_keep_the_users_ids(tmp_path):
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"ask": f"{i} * 2?", "reply": str(2 * i), "ref": f"d{i}"}
                                               for i in range(6)])
    output = tmp_path / "anchors.jsonl"
    result = invoke("anchors", dev, "--prompt-field", "ask", "--response-field", "reply", "--id-field", "ref",
                    "--model", "tiny-random", "-m", 3, "--check-seeds", 1, "--json", "-o", output)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["columns"] == {"prompt_field": "ask", "response_field": "reply", "id_field": "ref"}
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert all(r["id"] == f"d{int(r['messages'][0]['content'].split()[0])}" for r in records) and len(records) == 3


@pytest.mark.integration
def test_tune_weights_then_select_with_the_learned_weights(files):
    run_dir = files["dir"] / "run"
    result = tune(files, "--model", "tiny-random", "--trials", 3, "--anchors", 3, "--repeats", 1, "--demos", 1,
                  "--fraction", 0.25, "--features", "loss,confidence,diversity", "--run-dir", run_dir,
                  "--validate", 3, "--validate-steps", 1, "--validate-metric", "log_likelihood")
    assert result.exit_code == 0, result.output
    document = json.loads((files["dir"] / "weights.json").read_text())
    assert len(document["trials"]) == 3 and document["selection_size"] == 5
    assert sum(document["weights"].values()) == pytest.approx(1.0)
    assert document["orientation"] == {"loss": "higher", "confidence": "lower", "diversity": "higher"}
    assert document["scores_model_fingerprint"] == "generated" and document["seed"] == 0
    assert len((run_dir / "trials.jsonl").read_text().splitlines()) == 3
    validation = document["validation"]
    assert validation["verdict"] and "proxy check:" in result.output
    assert len(validation["fine_tunes"]) == validation["points"] <= 3
    # The gold-answer log-likelihood is continuous, so the check has something to rank.
    assert validation["metric"] == "log_likelihood"
    assert all(point["accuracy"] < 0 for point in validation["fine_tunes"])

    selected = files["dir"] / "selection.jsonl"
    result = invoke("select", files["scores"], "--strategy", "weighted_indicators", "--weights",
                    files["dir"] / "weights.json", "--fraction", 0.25, "-o", selected)
    assert result.exit_code == 0, result.output
    assert len(read_selection(selected)[0]) == 5

    result = tune(files, "--model", "tiny-random", "--trials", 3, "--anchors", 3, "--repeats", 1, "--demos", 2,
                  "--fraction", 0.25, "--features", "loss,confidence,diversity", "--run-dir", run_dir)
    assert result.exit_code == 2 and "demos differ" in result.output


@pytest.mark.integration
def test_tune_weights_after_a_default_score_computes_the_embedding_it_needs(files):
    """`score` with its defaults writes no embedding; `tune-weights` with its defaults needs one for
    the diversity feature and computes it through the cache instead of stopping."""
    scores = files["dir"] / "default-scores.parquet"
    scored = invoke("score", files["pool"], "-o", scores, "--model", "tiny-random")
    assert scored.exit_code == 0, scored.output
    result = invoke("tune-weights", scores, "--pool", files["pool"], "--dev", files["dev"],
                    "-o", files["dir"] / "weights.json", "--model", "tiny-random", "--trials", "2",
                    "--anchors", "3", "--repeats", "1", "--demos", "2")
    assert result.exit_code == 0, result.output
    assert "diversity" in json.loads((files["dir"] / "weights.json").read_text())["weights"]


def test_tune_weights_reads_renamed_fields_with_the_column_flags_and_records_them(tmp_path):
    from tunewise.data.pool import Columns

    mapping = {"prompt_field": "ask", "response_field": "reply", "id_field": "key"}
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"ask": f"{i} + 1?", "reply": str(i + 1), "key": f"p{i}"}
                                                  for i in range(12)])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"ask": f"{i} * 2?", "reply": str(2 * i), "key": f"d{i}"}
                                                for i in range(4)])
    ids = [example.id for example in read_pool(pool, columns=Columns(**mapping)).examples]
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"id": ids, "task": "default"})
    for name in ("loss", "ifd", "length", "cot_length", "confidence"):
        frame[name] = rng.random(len(ids))
    write_scores(frame, tmp_path / "scores.parquet", {"model_fingerprint": "generated"})
    flags = ["--prompt-field", "ask", "--response-field", "reply", "--id-field", "key"]
    result = invoke("tune-weights", tmp_path / "scores.parquet", "--pool", pool, "--dev", dev, *flags,
                    "--features", "loss,length", "--model", "tiny-random", "--trials", 2, "--anchors", 2,
                    "--repeats", 1, "--demos", 1, "-o", tmp_path / "weights.json", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "weights.json").read_text())["columns"] == mapping
    unmapped = invoke("tune-weights", tmp_path / "scores.parquet", "--pool", pool, "--dev", dev, "--model",
                      "tiny-random", "-o", tmp_path / "other.json")
    assert unmapped.exit_code == 2 and "unrecognised record shape" in " ".join(unmapped.output.split())
