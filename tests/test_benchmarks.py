"""pytest-benchmark benchmarks of the hot stages. Skipped in the default run (--benchmark-skip);
run them with:  python -m pytest tests/test_benchmarks.py --benchmark-only -p no:randomly
Speed is reported, never asserted."""

from __future__ import annotations

import numpy as np
import pytest
from pcv.runtime import PerceiverByteTokenizer, Record
from pcv.runtime.batching import BatchPlan, plan_batches
from pcv.runtime.pipeline import classify_records
from pcv.runtime.session import OnnxClassifier, default_model_path


@pytest.fixture(scope="module")
def batch(review_texts):
    return review_texts[:64]


def test_bench_tokenizer_pcv(benchmark, batch):
    tok = PerceiverByteTokenizer()
    benchmark(lambda: tok(batch, truncation=True, padding="longest"))


def test_bench_tokenizer_transformers(benchmark, batch):
    transformers = pytest.importorskip("transformers")
    tok = transformers.PerceiverTokenizer()
    benchmark(lambda: tok(batch, truncation=True, padding="longest", return_tensors="np"))


def test_bench_batch_planning(benchmark):
    lengths = np.random.default_rng(0).integers(10, 2048, 4096)
    benchmark(lambda: plan_batches(lengths, BatchPlan()))


def test_bench_session_run_bundled(benchmark, batch):
    clf = OnnxClassifier(default_model_path())
    enc = PerceiverByteTokenizer()(batch[:8], truncation=True, padding="longest")
    benchmark(lambda: clf.logits(enc.input_ids, enc.attention_mask))


def test_bench_end_to_end_bundled(benchmark, review_texts):
    clf = OnnxClassifier(default_model_path())
    records = [Record(i + 1, i + 1, t) for i, t in enumerate(review_texts[:64])]
    benchmark.pedantic(lambda: list(classify_records(records, clf)), rounds=3, iterations=1)
