"""`tunewise calibrate-difficulty` end to end on tiny-random, and the inputs it refuses."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import tunewise.cli
from tunewise.cli.app import app
from tunewise.training.difficulty import CALIBRATION_FILE, window_spec
from tunewise.select import fit_window_centre
from tunewise.training.sweep import run_file_name

BUDGETS = (2, 4)
WINDOWS = (0.15, 0.5, 0.85)


@pytest.fixture(scope="module", autouse=True)
def commands():
    tunewise.cli._register_commands()


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def write_jsonl(path, numbers):
    records = [{"question": f"What is {n} + {n}?", "answer": str(2 * n), "task": "sums"} for n in numbers]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibrate")
    return write_jsonl(folder / "pool.jsonl", range(1, 11)), write_jsonl(folder / "test.jsonl", (77, 88)), folder


@pytest.fixture(scope="module")
def calibrated(files):
    pool, test, folder = files
    run_dir = folder / "run"
    result = invoke("calibrate-difficulty", pool, "--test", test, "--budgets", ",".join(map(str, BUDGETS)),
                    "--model", "tiny-random", "--learning-rate", 0.05, "--epochs", 2, "--max-new-tokens", 3,
                    "-o", run_dir)
    assert result.exit_code == 0, result.output
    return result.output, run_dir


def test_the_grid_runs_as_a_sweep_of_fixed_windows(calibrated):
    _, run_dir = calibrated
    runs = {path.name for path in (run_dir / "runs").iterdir()}
    assert runs == {"zero_shot.json"} | {run_file_name(window_spec(w), b, 0) for w in WINDOWS for b in BUDGETS}
    record = json.loads((run_dir / "runs" / run_file_name(window_spec(0.85), 4, 0)).read_text())
    assert record["strategy"] == "difficulty_window:c0=0.85,beta=0,difficulty=length"
    assert len(record["selected_ids"]) == 4


def test_the_best_window_per_budget_is_fitted_and_printed(calibrated):
    output, run_dir = calibrated
    calibration = json.loads((run_dir / CALIBRATION_FILE).read_text())
    assert calibration["budgets"] == list(BUDGETS) and calibration["windows"] == list(WINDOWS)
    assert calibration["seeds"] == [0] and calibration["random"] is None
    best_centres = []
    for budget in map(str, BUDGETS):
        scores = {float(centre): entry["scores"][budget]["score"] for centre, entry in calibration["grid"].items()}
        assert calibration["best"][budget]["scores"] == {f"{c:g}": s for c, s in scores.items()}
        tied = [centre for centre, score in scores.items() if score == max(scores.values())]
        assert calibration["best"][budget]["best_centre"] == pytest.approx(sum(tied) / len(tied))
        best_centres.append(calibration["best"][budget]["best_centre"])
    fitted = fit_window_centre(BUDGETS, best_centres, n0=math.sqrt(2 * 4))
    assert (calibration["c0"], calibration["beta"]) == pytest.approx((fitted.c0, fitted.beta))
    assert calibration["n0"] == pytest.approx(math.sqrt(8))
    assert calibration["select_command"] in " ".join(output.split())
    assert f"--c0 {fitted.c0:.4g} --beta {fitted.beta:.4g} --n0 2.828" in calibration["select_command"]


def test_a_rerun_resumes_without_fine_tuning_again(files, calibrated):
    pool, test, _ = files
    _, run_dir = calibrated
    before = {path.name: path.stat().st_mtime_ns for path in (run_dir / "runs").iterdir()}
    result = invoke("calibrate-difficulty", pool, "--test", test, "--budgets", "2,4", "--model", "tiny-random",
                    "--learning-rate", 0.05, "--epochs", 2, "--max-new-tokens", 3, "-o", run_dir)
    assert result.exit_code == 0, result.output
    assert {path.name: path.stat().st_mtime_ns for path in (run_dir / "runs").iterdir()} == before


@pytest.mark.parametrize("flags, problem", [
    (("--budgets", "4"), "two or more different budgets"),
    (("--budgets", "2,4", "--windows", "0.2,hard"), "'hard' is not a number"),
    (("--budgets", "2,4", "--windows", "0.2,1.5"), "centres in [0, 1]"),
    (("--budgets", "2,4", "--windows", "0.5"), "two or more different centres"),
])
def test_bad_grids_exit_2_before_any_run(files, tmp_path, flags, problem):
    pool, test, _ = files
    result = invoke("calibrate-difficulty", pool, "--test", test, "--model", "tiny-random", *flags,
                    "-o", tmp_path / "run")
    assert result.exit_code == 2
    assert problem in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_renamed_fields_are_read_with_the_column_flags_and_recorded(tmp_path):
    def write(path, numbers):
        path.write_text("".join(json.dumps({"ask": f"What is {n} + {n}?", "reply": str(2 * n), "key": f"k{n}"})
                                + "\n" for n in numbers))
        return path

    pool, test = write(tmp_path / "pool.jsonl", range(1, 7)), write(tmp_path / "test.jsonl", (77,))
    result = invoke("calibrate-difficulty", pool, "--test", test, "--prompt-field", "ask", "--response-field", "reply",
                    "--id-field", "key", "--budgets", "2,3", "--windows", "0.2,0.8", "--model", "tiny-random",
                    "--epochs", 1, "--max-new-tokens", 2, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    calibration = json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text())
    assert calibration["columns"] == {"prompt_field": "ask", "response_field": "reply", "id_field": "key"}
    assert calibration["budgets"] == [2, 3]
