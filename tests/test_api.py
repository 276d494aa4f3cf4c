"""TextClassifier: texts in memory through pcv-batch's engine, the same answers as pcv-batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pcv.runtime import TextClassifier
from pcv.runtime.cli import main


def test_texts_in_memory_get_pcv_batchs_answers_in_order(tmp_path, tiny_dir, review_texts):
    texts = review_texts[:50] + ["", "[CLS] tricky [SEP]", "é" * 400]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "--batch-size", "4", "-q"]) == 0
    want = [json.loads(line) for line in out.read_text().splitlines()]

    clf = TextClassifier(tiny_dir / "model.onnx", batch_size=4, window=16)  # windows of 16: sorting across them
    probs = clf.predict_proba(texts)
    assert probs.shape == (len(texts), 2) and clf.labels == ("neg", "pos")
    np.testing.assert_allclose(probs, [[w["probs"]["neg"], w["probs"]["pos"]] for w in want], atol=1e-6)
    assert clf.predict(texts) == [w["label"] for w in want]
    assert [r["label"] for r in clf(iter(texts))] == [w["label"] for w in want]  # any iterable
    assert clf([texts[0]])[0]["score"] == pytest.approx(want[0]["score"], abs=1e-6)


def test_empty_input_bad_types_and_options(tiny_dir):
    clf = TextClassifier(str(tiny_dir))  # a dir holding model.onnx, as --model takes
    assert clf.predict_proba([]).shape == (0, 2) and clf([]) == []
    with pytest.raises(TypeError, match="text 1 is int"):
        clf.predict(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="long_text"):
        TextClassifier(tiny_dir, long_text="middle")


def test_bundled_model_by_default():
    clf = TextClassifier()
    assert clf.predict(["A lovely, moving film. Wonderful acting, I loved it.", "The worst film I have seen: dull and badly acted."]) == ["pos", "neg"]
