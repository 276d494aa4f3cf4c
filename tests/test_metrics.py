"""Per-class metrics: equal to scikit-learn's, and written by pcv-batch --metrics (resumed runs included)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pcv.runtime.cli import main
from pcv.runtime.metrics import confusion, format_report, report


@settings(max_examples=60, deadline=None)
@given(n_labels=st.integers(2, 5), data=st.data())
def test_report_equals_scikit_learn(n_labels, data):
    metrics = pytest.importorskip("sklearn.metrics")
    n = data.draw(st.integers(1, 60))
    gold = np.array(data.draw(st.lists(st.integers(0, n_labels - 1), min_size=n, max_size=n)))
    pred = np.array(data.draw(st.lists(st.integers(0, n_labels - 1), min_size=n, max_size=n)))
    labels = [f"c{i}" for i in range(n_labels)]
    rep = report(confusion(gold, pred, n_labels), labels)
    want = metrics.confusion_matrix(gold, pred, labels=list(range(n_labels)))
    assert rep["confusion"] == want.tolist()
    p, r, f, s = metrics.precision_recall_fscore_support(gold, pred, labels=list(range(n_labels)), zero_division=0)
    for k, name in enumerate(labels):
        c = rep["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[k], r[k], f[k], s[k]), abs=1e-6)
    assert rep["accuracy"] == pytest.approx(metrics.accuracy_score(gold, pred))
    assert "confusion" in format_report(rep)


def test_a_label_never_predicted_shows_as_zero_recall_not_as_accuracy(tmp_path):
    rep = report(confusion(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1]), 3), ["a", "b", "c"])
    assert rep["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert rep["accuracy"] == 0.5


def test_pcv_batch_metrics_file(tmp_path, tiny_dir, reviews, capsys):
    src = tmp_path / "l.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": r["text"], "label": r["label"]}) + "\n" for i, r in enumerate(reviews[:40])))
    out, m = tmp_path / "o.jsonl", tmp_path / "m.json"
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "--label-field", "label", "--metrics", str(m), "-q"]) == 0
    rep = json.loads(m.read_text())
    preds = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    gold = [["neg", "pos"][r["label"]] for r in reviews[:40]]
    assert rep["n"] == 40 and rep["accuracy"] == pytest.approx(np.mean([p == g for p, g in zip(preds, gold)]))
    assert sum(rep["per_class"][k]["support"] for k in ("neg", "pos")) == 40
    assert "precision" in capsys.readouterr().err
    assert main([str(src), "--model", str(tiny_dir), "--metrics", str(m), "-q"]) == 2  # needs --label-field
