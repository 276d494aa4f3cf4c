from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pcv.runtime.batching import BatchPlan, padding_ratio, plan_batches


@given(st.lists(st.integers(min_value=2, max_value=2048), max_size=300), st.integers(1, 64), st.integers(1, 20000))
def test_every_index_once_and_within_limits(lengths, batch_size, max_tokens):
    lengths = np.array(lengths, dtype=np.int64)
    plan = BatchPlan(batch_size=batch_size, max_tokens=max_tokens)
    batches = plan_batches(lengths, plan)
    seen = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= batch_size
        # a single over-budget text still gets a batch of its own
        assert len(b) == 1 or len(b) * lengths[b].max() <= max_tokens


def test_sorting_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 2048, 1000)
    sorted_plan = plan_batches(lengths, BatchPlan(batch_size=32))
    naive = [np.arange(i, min(i + 32, 1000)) for i in range(0, 1000, 32)]
    assert padding_ratio(lengths, sorted_plan) < 1.1 < padding_ratio(lengths, naive)


def test_rejects_bad_plan():
    with pytest.raises(ValueError):
        plan_batches(np.array([3]), BatchPlan(batch_size=0))
