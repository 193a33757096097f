"""One contract battery for every registered indicator (STYLE habit 8), on the fake backend.

Each indicator must declare itself completely and keep its declaration: the columns it says it
adds are the columns it adds, one value per example; an indicator that reads the label gives NaN
for an unlabelled example; a second scoring of the same pool is served from the cache.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunewise.data.pool import parse_record
from tunewise.data.table import SCALAR_INDICATORS, VECTOR_INDICATORS
from tunewise.indicators.registry import INDICATORS, MODEL_OUTPUTS, OUTPUT_VERSIONS, SCALAR_COLUMNS
from tunewise.indicators.score import score_pool
from tunewise.model.fake import FakeBackend

ALL = sorted(INDICATORS)


def examples():
    records = [
        {"question": "What is 2 + 3?", "answer": "Two plus three.\nThat is 5.\n#### 5", "task": "math"},
        {"question": "Name a colour.", "answer": "Blue.", "task": "words"},
        {"question": "Which is larger, 7 or 9?", "task": "math"},  # unlabelled
    ]
    return [parse_record(record, task_field="task") for record in records]


@pytest.mark.parametrize("name", ALL)
def test_declaration_is_complete(name):
    indicator = INDICATORS[name]
    assert indicator.name == name
    assert isinstance(indicator.version, int) and indicator.version >= 1
    assert indicator.columns and len(set(indicator.columns)) == len(indicator.columns)
    assert set(indicator.outputs) <= set(OUTPUT_VERSIONS)
    assert set(indicator.model_outputs) <= set(MODEL_OUTPUTS)
    assert indicator.prefer in ("higher", "lower", None)
    assert indicator.description


@pytest.mark.parametrize("name", ALL)
def test_columns_are_what_it_declares_one_value_per_example(name, tmp_path):
    pool = examples()
    table = score_pool(pool, FakeBackend(), [name], cache_dir=tmp_path)
    assert list(table.columns) == ["id", "task", *INDICATORS[name].columns]
    assert table["id"].tolist() == [example.id for example in pool]
    for column in INDICATORS[name].columns:
        assert len(table[column]) == len(pool)


@pytest.mark.parametrize("name", ALL)
def test_label_reading_indicators_are_nan_without_a_label(name, tmp_path):
    indicator = INDICATORS[name]
    table = score_pool(examples(), FakeBackend(), [name], cache_dir=tmp_path)
    if indicator.is_vector:
        assert all(np.isfinite(np.asarray(vector)).all() for vector in table[indicator.columns[0]])
        return
    for column in indicator.columns:
        values = table[column].to_numpy(dtype=float)
        assert np.isfinite(values[:2]).all(), f"{column} of a labelled example must be finite"
        if indicator.needs_label and column != "prompt_length":
            assert math.isnan(values[2]), f"{column} reads the label, so an unlabelled example has none"


@pytest.mark.parametrize("name", [n for n in ALL if INDICATORS[n].model_outputs])
def test_second_scoring_is_served_from_the_cache(name, tmp_path):
    backend = FakeBackend()
    first = score_pool(examples(), backend, [name], cache_dir=tmp_path)
    batches = backend.batches_run
    second = score_pool(examples(), backend, [name], cache_dir=tmp_path)
    assert backend.batches_run == batches
    for column in INDICATORS[name].columns:
        assert first[column].astype(str).tolist() == second[column].astype(str).tolist()


def test_derived_column_lists_follow_the_registry():
    assert SCALAR_INDICATORS == SCALAR_COLUMNS
    assert set(SCALAR_COLUMNS) | set(VECTOR_INDICATORS) == {c for i in INDICATORS.values() for c in i.columns}
