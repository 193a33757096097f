"""Pools from every source a user has (issue 16): compressed files, globs, DataFrames, datasets
objects, a saved DatasetDict split, and a Hub id served from a local HF cache while offline."""

from __future__ import annotations

import gzip
import json
import shutil

import pandas as pd
import pytest

from conftest import require_shared_data
from tunewise.data.pool import read_pool
from tunewise.errors import TunewiseError

RECORDS = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(5)]
LINES = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()


def ids(pool):
    return [e.id for e in pool.examples]


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(LINES)
    return read_pool(path)


def test_gzip_and_zstandard_read_like_the_plain_file(tmp_path, plain):
    import zstandard

    (tmp_path / "pool.jsonl.gz").write_bytes(gzip.compress(LINES))
    (tmp_path / "pool.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(LINES))
    assert ids(read_pool(tmp_path / "pool.jsonl.gz")) == ids(plain)
    assert ids(read_pool(tmp_path / "pool.jsonl.zst")) == ids(plain)


def test_a_glob_reads_its_files_in_sorted_order(tmp_path, plain):
    (tmp_path / "part-2.jsonl").write_bytes(b"".join(LINES.splitlines(keepends=True)[3:]))
    (tmp_path / "part-1.jsonl").write_bytes(b"".join(LINES.splitlines(keepends=True)[:3]))
    assert ids(read_pool(str(tmp_path / "part-*.jsonl"))) == ids(plain)
    with pytest.raises(TunewiseError, match="matches no file"):
        read_pool(str(tmp_path / "nothing-*.jsonl"))


def test_dataframe_dataset_and_iterable_dataset(plain):
    import datasets

    assert ids(read_pool(pd.DataFrame(RECORDS))) == ids(plain)
    dataset = datasets.Dataset.from_list(RECORDS)
    assert ids(read_pool(dataset)) == ids(plain)
    assert ids(read_pool(dataset.to_iterable_dataset())) == ids(plain)


def test_a_saved_datasetdict_needs_its_split(tmp_path, plain):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS),
                          "test": datasets.Dataset.from_list(RECORDS[:1])}).save_to_disk(tmp_path / "dd")
    assert ids(read_pool(tmp_path / "dd", split="train")) == ids(plain)
    with pytest.raises(TunewiseError, match="splits train, test") as caught:
        read_pool(tmp_path / "dd")
    assert "--split train" in caught.value.fix


def build_offline_hub_cache(cache, repo_id: str, train_file) -> None:
    """The cache `datasets` keeps of a Hub dataset it has prepared once, built here from a local
    file without any network (what an earlier online `load_dataset(repo_id)` leaves behind)."""
    from datasets.packaged_modules.json.json import Json

    name = repo_id.split("/")[1]
    builder = Json(cache_dir=str(cache / "build"), dataset_name=name, hash="0" * 16,
                   data_files={"train": str(train_file)})
    builder.download_and_prepare()
    target = cache / repo_id.replace("/", "___") / "default" / "0.0.0" / ("0" * 16)
    target.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, target)


def test_a_hub_id_is_read_from_the_local_cache_offline(tmp_path, monkeypatch):
    gsm8k = require_shared_data("gsm8k", "test.jsonl")
    small = tmp_path / "gsm8k-20.jsonl"
    small.write_text("".join(gsm8k.read_text(encoding="utf-8").splitlines(keepends=True)[:20]))
    cache = tmp_path / "hf-datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    build_offline_hub_cache(cache, "tunewise-tests/gsm8k-mini", small)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    pool = read_pool("tunewise-tests/gsm8k-mini", split="train")
    assert ids(pool) == ids(read_pool(small))
    with pytest.raises(TunewiseError, match="Hub dataset") as caught:
        read_pool("tunewise-tests/not-cached", split="train")
    assert "HF_HUB_OFFLINE" in caught.value.fix
