"""The Ray Data engine (DESIGN.md §6): the local engine's scores, written into the same cache."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tunewise.model import load_backend
from tunewise.cli import _register_commands, app
from tunewise.indicators.ray import score_pool_ray
from tunewise.errors import TunewiseError
from tunewise.data.pool import Example, parse_record
from tunewise.indicators.score import score_pool, scores_provenance

_register_commands()

EVERY_INDICATOR = ("loss", "ifd", "confidence", "length", "cot_length", "embedding")
MAX_NEW_TOKENS = 4


def make_examples(count: int = 24) -> list[Example]:
    """Labelled and unlabelled examples of varied lengths over two tasks."""
    examples = []
    for i in range(count):
        record = {"question": f"Question {i}: " + "why " * (i % 9), "task": "math" if i % 3 else "prose"}
        if i % 6 != 5:
            record["answer"] = "\n".join(f"Step {k}: {k * i}." for k in range(1 + i % 4)) + f"\n#### {i}"
        examples.append(parse_record(record, task_field="task"))
    return examples


class CacheOnly:
    """A backend without a model: scoring with it succeeds only if every value is cached."""

    def __init__(self, fingerprint: str, max_new_tokens: int) -> None:
        self.fingerprint = fingerprint
        self.max_new_tokens = max_new_tokens


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if not installed
    with pytest.raises(TunewiseError) as raised:
        score_pool_ray(make_examples(3), "tiny-random", ["length"])
    assert "pip install 'tunewise[ray]'" in str(raised.value)
    assert raised.value.field == "engine"


def test_the_cli_reports_the_missing_extra_without_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"question": "Two plus two?", "answer": "4"}) + "\n")
    output = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["score", str(pool), "-o", str(output), "--model", "tiny-random",
                                      "--engine", "ray"])
    assert result.exit_code == 2
    assert "pip install 'tunewise[ray]'" in result.output
    assert "Traceback" not in result.output
    assert not output.exists()


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for this module's tests (score_pool_ray uses a running session)."""
    ray = pytest.importorskip("ray", reason="the Ray engine needs the optional extra: pip install 'tunewise[ray]'")
    pytest.importorskip("ray.data", reason="the Ray engine needs the optional extra: pip install 'tunewise[ray]'")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.integration
def test_ray_local_mode_gives_the_local_engines_scores_into_the_same_cache(tmp_path, ray_session):
    examples = make_examples()
    backend = load_backend("tiny-random", device="cpu", dtype="fp32", max_new_tokens=MAX_NEW_TOKENS)
    local = score_pool(examples, backend, EVERY_INDICATOR, cache_dir=tmp_path / "local")

    reported = []
    distributed, provenance = score_pool_ray(
        examples, "tiny-random", EVERY_INDICATOR, device="cpu", dtype="fp32", cache_dir=tmp_path / "ray",
        max_new_tokens=MAX_NEW_TOKENS, max_batch_tokens=256, progress=lambda done, total: reported.append((done, total)),
    )

    assert list(distributed.columns) == list(local.columns)
    assert distributed["id"].tolist() == local["id"].tolist()
    assert distributed["task"].tolist() == local["task"].tolist()
    for column in ("loss", "ifd", "confidence", "length", "prompt_length", "cot_length"):
        np.testing.assert_allclose(distributed[column], local[column], rtol=1e-5, atol=1e-5, equal_nan=True,
                                   err_msg=column)
    np.testing.assert_allclose(np.stack(distributed["embedding"]), np.stack(local["embedding"]), atol=1e-5)
    assert reported[-1] == (len(examples), len(examples))
    assert provenance["model_fingerprint"] == backend.fingerprint
    # The local engine's indicator versions (confidence 2: answer tokens only).
    assert provenance["indicators"] == scores_provenance(backend, EVERY_INDICATOR)["indicators"]

    # The local engine reads what the Ray engine cached, with no model work at all.
    from_cache = score_pool(examples, CacheOnly(backend.fingerprint, MAX_NEW_TOKENS), EVERY_INDICATOR,
                            cache_dir=tmp_path / "ray")
    pd.testing.assert_frame_equal(from_cache.drop(columns="embedding"), distributed.drop(columns="embedding"))


@pytest.mark.integration
def test_a_model_the_actors_cannot_load_is_a_user_error(tmp_path, ray_session):
    with pytest.raises(TunewiseError, match="unknown model 'tiny-randm'"):
        score_pool_ray(make_examples(3), "tiny-randm", ["length"], device="cpu", cache_dir=tmp_path)


@pytest.mark.integration
def test_the_ray_engine_records_the_pools_column_mapping(tmp_path, ray_session):
    from tunewise.data.pool import Columns, read_pool

    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"ask": f"Question {i}?", "reply": str(i)}) + "\n" for i in range(4)))
    pool = read_pool(path, columns=Columns(prompt_field="ask", response_field="reply"))
    _, provenance = score_pool_ray(pool, "tiny-random", ["length"], device="cpu", cache_dir=tmp_path / "cache")
    assert provenance["columns"] == {"prompt_field": "ask", "response_field": "reply"}
    assert provenance["pool"] == pool.source
