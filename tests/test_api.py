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
    texts = ["A lovely, moving film. Wonderful acting, I loved it.", "The worst film I have seen: dull and badly acted."]
    assert clf.predict(texts) == ["pos", "neg"]
    one = clf(texts[0])  # a single string is one text, as in a transformers pipeline
    assert len(one) == 1 and one[0]["label"] == "pos" and clf.predict_proba(texts[1]).shape == (1, 2)


@pytest.mark.parametrize("long_text", ["head", "head-tail"])
def test_shifts_average_the_views_of_each_text(tiny_dir, review_texts, long_text):
    from pcv.runtime import PerceiverByteTokenizer
    from pcv.runtime.pipeline import tail_text
    from pcv.runtime.session import OnnxClassifier, softmax

    texts = review_texts[:12] + ["short", "x" * 300]  # the tiny model reads 256 tokens: most are long
    got = TextClassifier(tiny_dir, batch_size=3, long_text=long_text, shifts=(0, 4)).predict_proba(texts)
    sess, tok = OnnxClassifier(tiny_dir / "model.onnx"), PerceiverByteTokenizer()

    def probs(batch):
        enc = tok(batch, max_length=256, truncation=True, padding="longest")
        return softmax(sess.logits(enc.input_ids, enc.attention_mask))

    want = []
    for t in texts:
        views = []
        for s in (0, 4):
            p = probs([" " * s + t])[0]
            if long_text == "head-tail" and len(t.encode()) + 2 > 256:
                p = (p + probs([" " * s + tail_text(t, 256 - s)])[0]) / 2
            views.append(p)
        want.append(np.mean(views, 0))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.array_equal(got, TextClassifier(tiny_dir, long_text=long_text).predict_proba(texts))  # (a random model: tiny differences)


def test_bad_shifts_are_refused(tmp_path, tiny_dir, capsys):
    for bad in [(), (0, 0), (-1,), (0, 65)]:  # the tiny model reads 256 tokens: shifts up to 64
        with pytest.raises(ValueError, match="shifts"):
            TextClassifier(tiny_dir, shifts=bad)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n')
    assert main([str(src), "--model", str(tiny_dir), "--shifts", "0,0", "-q"]) == 2
    assert "--shifts" in capsys.readouterr().err
    out = tmp_path / "o.jsonl"
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "-q"]) == 0
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "--shifts", "0,4", "--resume", "-q"]) == 2
    assert "options differ" in capsys.readouterr().err  # shifts change the answers: part of the fingerprint
