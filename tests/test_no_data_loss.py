"""No command writes over, moves or deletes a file it did not create (issue 19).

Every command is run with its output pointed at each of its inputs (by the same path, through a
symbolic link and through a hard link): each run must stop with exit code 2 before any work, say
which input it protects, and leave every input byte-identical. Then the run folder: a plan of an
unlabelled pool, the picks labelled in place, and a plan of the labelled file in the same folder
keep every labelled file; and :mod:`tunewise.io` on its own.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tunewise.cli import _register_commands, app
from tunewise.data.pool import read_pool
from tunewise.data.table import write_scores
from tunewise.errors import TunewiseError
from tunewise.io import (MANIFEST_FILE, RunFolder, atomic_directory, atomic_path, refuse_overwriting_inputs,
                         remove_stale_temporaries, write_bytes, write_files)

_register_commands()

TINY = ("--model", "tiny-random")


# -- helpers --------------------------------------------------------------------------------------


def digests(folder: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``folder`` (links by their own target path)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = "link→" + os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def invoke(*arguments) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in arguments])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unhandled {type(result.exception).__name__}: {result.exception}\n{result.output}")
    return result.exit_code, result.output


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def labelled_records(count: int = 8) -> list[dict]:
    return [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "task": "ab"[i % 2]} for i in range(count)]


def make_inputs(folder: Path) -> dict[str, Path]:
    """One of every kind of input file the commands read, all consistent with each other."""
    folder.mkdir(parents=True, exist_ok=True)
    pool = write_jsonl(folder / "pool.jsonl", labelled_records())
    test = write_jsonl(folder / "test.jsonl", [{"question": f"What is {i} - 1?", "answer": str(i - 1), "task": "ab"[i % 2]}
                                               for i in range(20, 24)])
    dev = write_jsonl(folder / "dev.jsonl", [{"question": f"Name {i}?", "answer": str(i), "task": "a"}
                                             for i in range(4)])
    ids = [example.id for example in read_pool(pool, "task").examples]
    scores = folder / "scores.parquet"
    write_scores(pd.DataFrame({"id": ids, "task": ["a", "b"] * 4, "loss": [1.0 + i / 10 for i in range(8)],
                               "ifd": [0.5 + i / 20 for i in range(8)],
                               "confidence": [0.2 + i / 20 for i in range(8)]}), scores,
                 {"model_fingerprint": "fake-v1"})
    weights = folder / "weights.json"
    weights.write_text(json.dumps({"weights": {"loss": 0.5, "ifd": 0.5}}))
    curve = folder / "curve.json"
    curve.write_text(json.dumps({"0": 0.3, "50": 0.4, "100": 0.5}))
    measured = folder / "measured.json"
    measured.write_text(json.dumps([{"task": t, "coslow": c, "auc": a}
                                    for t, c, a in (("x", 0.1, 0.3), ("y", 0.2, 0.4), ("z", 0.3, 0.6))]))
    return {"pool": pool, "test": test, "dev": dev, "scores": scores, "weights": weights, "curve": curve,
            "measured": measured}


# Each entry: command, then its arguments as a function of (inputs, the output to try), the
# inputs that output is tried against, and the option that takes the output.
FILE_OUTPUT_COMMANDS = {
    "score": (lambda i, out: ["score", i["pool"], *TINY, "-o", out], ["pool"]),
    "select": (lambda i, out: ["select", i["scores"], "--strategy", "weighted_indicators", "--budget", "2",
                               "--weights", i["weights"], "-o", out], ["scores", "weights"]),
    "select --export-path": (lambda i, out: ["select", i["scores"], "--strategy", "random", "--budget", "2",
                                             "--pool", i["pool"], "--task-field", "task", "--export", "messages",
                                             "--export-path", out, "-o", i["pool"].parent / "picked.jsonl"],
                             ["scores", "pool"]),
    "tune-weights": (lambda i, out: ["tune-weights", i["scores"], "--pool", i["pool"], "--dev", i["dev"],
                                     "--task-field", "task", *TINY, "--trials", "1", "--anchors", "2", "-o", out],
                     ["scores", "pool", "dev"]),
    "anchors": (lambda i, out: ["anchors", i["dev"], *TINY, "-m", "2", "-o", out], ["dev"]),
    "evaluate": (lambda i, out: ["evaluate", i["test"], *TINY, "--task-field", "task", "-o", out], ["test"]),
    "calibrate": (lambda i, out: ["calibrate", i["measured"], "-o", out], ["measured"]),
    "curve --plot": (lambda i, out: ["curve", i["curve"], "--plot", out], ["curve"]),
}

CASES = [(name, target) for name, (_, targets) in FILE_OUTPUT_COMMANDS.items() for target in targets]


@pytest.mark.parametrize("link", ["same path", "symbolic link", "hard link"])
@pytest.mark.parametrize(("command", "target"), CASES, ids=[f"{c}->{t}" for c, t in CASES])
def test_a_file_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path, command, target, link):
    inputs = make_inputs(tmp_path / "in")
    output = inputs[target]
    if link == "symbolic link":
        output = tmp_path / "in" / "link-to-input"
        output.symlink_to(inputs[target])
    elif link == "hard link":
        output = tmp_path / "in" / "hard-link-to-input"
        os.link(inputs[target], output)
    before = digests(tmp_path)
    arguments, _ = FILE_OUTPUT_COMMANDS[command]

    code, message = invoke(*arguments(inputs, output))

    assert code == 2, message
    assert "Traceback" not in message
    assert "would destroy that input" in message, message
    assert digests(tmp_path) == before


def test_the_selection_export_cannot_overwrite_the_selection_or_its_provenance_file(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    before = digests(tmp_path)
    selection = tmp_path / "in" / "picked.jsonl"
    for export_path, other in ((selection, "-o"), (tmp_path / "in" / "picked.meta.json", "provenance")):
        code, message = invoke("select", inputs["scores"], "--strategy", "random", "--budget", "2", "--pool",
                               inputs["pool"], "--task-field", "task", "--export", "messages", "--export-path",
                               export_path, "-o", selection)
        assert code == 2, message
        assert "same file" in message and other in message, message
        assert digests(tmp_path) == before


def test_a_selection_whose_provenance_file_would_be_an_input_is_refused(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    provenance_named = tmp_path / "in" / "s.meta.json"
    provenance_named.write_bytes(inputs["scores"].read_bytes())
    before = digests(tmp_path)
    code, message = invoke("select", provenance_named, "--strategy", "random", "--budget", "2",
                           "-o", tmp_path / "in" / "s.jsonl")
    assert code == 2 and "would destroy that input" in message, message
    assert digests(tmp_path) == before


FOLDER_OUTPUT_COMMANDS = {
    # command: (arguments given the inputs folder and the output folder, the file name the input takes
    # inside that folder so that the command would write over it)
    "plan": (lambda i, out: ["plan", i["pool"], "--task-field", "task", "--budget", "2", *TINY, "-o", out],
             "selection.jsonl"),
    "sweep": (lambda i, out: ["sweep", i["pool"], "--test", i["test"], "--task-field", "task", "--budgets", "2",
                              "--strategies", "random", "--seeds", "0", *TINY, "-o", out], "sweep.json"),
    "calibrate-difficulty": (lambda i, out: ["calibrate-difficulty", i["pool"], "--test", i["test"], "--task-field",
                                             "task", "--budgets", "2,4", *TINY, "-o", out],
                             "difficulty_calibration.json"),
    "coslow": (lambda i, out: ["coslow", i["pool"], "--task-field", "task", "--task", "a", *TINY, "-o", out],
               "to_label.jsonl"),
    "finetune": (lambda i, out: ["finetune", i["pool"], "--task-field", "task", *TINY, "-o", out], "notes.txt"),
}


@pytest.mark.parametrize("command", sorted(FOLDER_OUTPUT_COMMANDS))
def test_a_folder_output_never_writes_over_an_input_inside_it(tmp_path, command):
    inputs = make_inputs(tmp_path / "in")
    arguments, name = FOLDER_OUTPUT_COMMANDS[command]
    # the pool file itself sits in the output folder, under the name the command writes
    folder = tmp_path / "run"
    folder.mkdir()
    moved = folder / name
    moved.write_bytes(inputs["pool"].read_bytes())
    inputs["pool"] = moved
    before = digests(tmp_path)

    code, message = invoke(*arguments(inputs, folder))

    assert code == 2, message
    assert "Traceback" not in message
    assert str(moved) in message or "the pool" in message, message
    assert digests(tmp_path) == before


@pytest.mark.parametrize("command", sorted(FOLDER_OUTPUT_COMMANDS))
def test_a_folder_output_that_is_an_input_file_is_refused(tmp_path, command):
    inputs = make_inputs(tmp_path / "in")
    arguments, _ = FOLDER_OUTPUT_COMMANDS[command]
    before = digests(tmp_path)
    code, message = invoke(*arguments(inputs, inputs["pool"]))
    assert code == 2, message
    assert "Traceback" not in message and ("would destroy that input" in message or "is a file" in message)
    assert digests(tmp_path) == before


def test_demo_and_report_never_replace_a_file_they_did_not_write(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "pool.jsonl").write_text("my own pool\n")
    (folder / "report.html").write_text("<p>my notes</p>\n")
    (folder / "plan.json").write_text("{}")
    before = digests(tmp_path)
    code, message = invoke("demo", *TINY, "--quick", "-o", folder)
    assert code == 2 and "did not write" in message and "pool.jsonl" in message, message
    code, message = invoke("report", folder)
    assert code == 2 and "did not write" in message and "report.html" in message, message
    assert digests(tmp_path) == before


# -- the run folder: plan → label → plan ----------------------------------------------------------


@pytest.mark.integration
def test_plan_label_plan_in_one_folder_keeps_every_labelled_file(tmp_path):
    """README's workflow: plan an unlabelled pool, fill in to_label.jsonl in place, plan it again."""
    records = labelled_records(12)
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{k: v for k, v in r.items() if k != "answer"}
                                                             for r in records])
    folder = tmp_path / "runs" / "plan"
    code, message = invoke("plan", unlabelled, "--task-field", "task", "--budget", "4", *TINY, "-o", folder)
    assert code == 0, message
    to_label = folder / "to_label.jsonl"
    picks = [json.loads(line) for line in to_label.read_text().splitlines()]
    assert len(picks) == 4 and all(pick["response"] is None for pick in picks)

    # Planning the same unlabelled pool again replaces tunewise's own, unedited to_label.jsonl.
    code, message = invoke("plan", unlabelled, "--task-field", "task", "--budget", "4", *TINY, "-o", folder)
    assert code == 0, message

    answers = {r["question"]: r["answer"] for r in records}
    write_jsonl(to_label, [{**pick, "response": answers[pick["prompt"]]} for pick in picks])
    labelled = to_label.read_bytes()

    # Planning the unlabelled pool now would write a new to_label.jsonl over the labelled one: refused.
    before = digests(tmp_path)
    code, message = invoke("plan", unlabelled, "--task-field", "task", "--budget", "4", *TINY, "-o", folder)
    assert code == 2 and "to_label.jsonl" in message and "did not write" in message, message
    assert digests(tmp_path) == before

    # Planning the labelled file in its own folder: every other file is rewritten, the labels kept.
    code, message = invoke("plan", to_label, "--task-field", "task", "--budget", "2", *TINY, "-o", folder)
    assert code == 0, message
    assert to_label.read_bytes() == labelled
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["pool"]["labelled"] == 4 and plan["selected"] == 2
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert "to_label.jsonl" not in manifest["files"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MANIFEST_FILE, "config.yaml", "plan.json", "report.html", "scores.parquet", "selection.jsonl", "selection.meta.json",
         "to_label.jsonl"])

    # The run folder's own config.yaml, given back with --config, is read and left as it is.
    config = folder / "config.yaml"
    config_bytes = config.read_bytes()
    code, message = invoke("plan", to_label, "--config", config, *TINY, "-o", folder)
    assert code == 0, message
    assert config.read_bytes() == config_bytes and to_label.read_bytes() == labelled

    # A plan of a labelled pool into a folder whose to_label.jsonl tunewise wrote and nobody edited
    # removes it (it is out of date); the edited one above was kept.
    other = tmp_path / "runs" / "other"
    assert invoke("plan", unlabelled, "--task-field", "task", "--budget", "4", *TINY, "-o", other)[0] == 0
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    assert invoke("plan", pool, "--task-field", "task", "--budget", "4", *TINY, "-o", other)[0] == 0
    assert not (other / "to_label.jsonl").exists()


# -- tunewise.io on its own -----------------------------------------------------------------------


def test_refuse_overwriting_inputs_sees_through_links_and_into_folders(tmp_path):
    source = tmp_path / "pool.jsonl"
    source.write_text("x")
    (tmp_path / "link").symlink_to(source)
    os.link(source, tmp_path / "hard")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for output in (source, tmp_path / "link", tmp_path / "hard", tmp_path / "." / "pool.jsonl", dataset / "x.parquet"):
        with pytest.raises(TunewiseError, match="would destroy that input"):
            refuse_overwriting_inputs({"-o": output}, {"the pool": source, "the dataset": dataset})
    with pytest.raises(TunewiseError, match="holds the pool"):
        refuse_overwriting_inputs({"-o": tmp_path}, {"the pool": source}, replaced_whole=True)
    with pytest.raises(TunewiseError, match="same file"):
        refuse_overwriting_inputs({"-o": tmp_path / "a", "--export-path": tmp_path / "a"}, {})
    refuse_overwriting_inputs({"-o": tmp_path / "new.jsonl", "--unused": None}, {"the pool": source, "x": None})
    refuse_overwriting_inputs({"-o": tmp_path}, {"the pool": source})  # a run folder may hold its inputs


def test_a_failed_write_touches_no_target_and_leaves_no_temporary(tmp_path, monkeypatch):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("old")
    real_write = Path.write_bytes

    def full_disk_on_b(self, data):
        if ".b.json." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk_on_b)
    with pytest.raises(TunewiseError, match="no space left") as raised:
        write_files({first: b"new", second: b"new", tmp_path / "new" / "folder" / "c.json": b"new"})
    assert raised.value.file == str(second)
    with pytest.raises(TunewiseError, match="no space left"):
        write_files({tmp_path / "new" / "folder" / "c.json": b"new", second: b"new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and first.read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_path(first) as temporary:
            real_write(temporary, b"half")
            raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and first.read_text() == "old"


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "scores.parquet"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale_file = tmp_path / f".scores.parquet.{dead_pid}.tmp"
    stale_folder = tmp_path / f".scores.parquet.{dead_pid}.old"
    live = tmp_path / f".scores.parquet.{os.getppid()}.tmp"
    other = tmp_path / f".other.parquet.{dead_pid}.tmp"
    for path in (stale_file, live, other):
        path.write_bytes(b"partial")
    stale_folder.mkdir()
    (stale_folder / "adapter_model.safetensors").write_bytes(b"x")
    assert sorted(remove_stale_temporaries(target)) == sorted([stale_file, stale_folder])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
    write_bytes(target, b"whole")  # a write removes them too
    assert target.read_bytes() == b"whole"


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in target.iterdir()) == ["a"]


def test_run_folder_replaces_and_removes_only_what_it_wrote_unchanged(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.check(["plan.json"])
    assert not folder.path.exists()  # checking creates nothing
    folder.write({"plan.json": b"1", "to_label.jsonl": b"picks"})
    assert folder.owns("plan.json") and folder.owns("to_label.jsonl")
    folder.write({"plan.json": b"2"}, remove=["to_label.jsonl"])
    assert not (folder.path / "to_label.jsonl").exists() and (folder.path / "plan.json").read_bytes() == b"2"

    folder.write({"to_label.jsonl": b"picks"})
    (folder.path / "to_label.jsonl").write_bytes(b"picks, labelled by hand")
    (folder.path / "notes.txt").write_bytes(b"mine")
    folder.write({"plan.json": b"3"}, remove=["to_label.jsonl", "notes.txt"])
    assert (folder.path / "to_label.jsonl").read_bytes() == b"picks, labelled by hand"
    assert (folder.path / "notes.txt").read_bytes() == b"mine"
    for name in ("to_label.jsonl", "notes.txt"):
        with pytest.raises(TunewiseError, match="did not write"):
            folder.write({name: b"new"})

    (folder.path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(TunewiseError, match="unreadable"):
        folder.write({"plan.json": b"4"})
    assert (folder.path / "plan.json").read_bytes() == b"3"


def test_run_folder_refuses_a_file_path_and_an_unwritable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TunewiseError, match="is a file"):
        RunFolder(tmp_path / "file").check(["plan.json"])
    with pytest.raises(TunewiseError, match="folder is a file"):
        RunFolder(tmp_path / "file" / "run").check(["plan.json"])
    unwritable = Path("/sys/kernel")
    if unwritable.is_dir() and not _can_create_in(unwritable):
        with pytest.raises(TunewiseError, match="cannot write in this folder"):
            RunFolder(unwritable / "tunewise-run").check(["plan.json"])


def _can_create_in(folder: Path) -> bool:
    try:
        (folder / ".tunewise-probe").touch()
    except OSError:
        return False
    (folder / ".tunewise-probe").unlink()
    return True
