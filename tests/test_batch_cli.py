"""pcv-batch end to end on a tiny exported model and on the bundled model."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from pcv.runtime import PerceiverByteTokenizer
from pcv.runtime.cli import main
from pcv.runtime.session import OnnxClassifier, default_model_path, softmax


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_predictions_in_input_order_match_direct_session(tmp_path, tiny_dir, review_texts):
    texts = review_texts[:120]
    src = _jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "out.jsonl"
    # small window and batch so that sorting and reordering really happen
    rc = main([src, "-o", str(out), "--model", str(tiny_dir), "--batch-size", "7", "--window", "50", "-q"])
    assert rc == 0
    got = _read(out)
    assert [g["id"] for g in got] == [f"r{i}" for i in range(len(texts))]
    clf = OnnxClassifier(tiny_dir / "model.onnx")
    enc = PerceiverByteTokenizer()(texts[:5], max_length=256, truncation=True, padding="longest")
    want = softmax(clf.logits(enc.input_ids, enc.attention_mask))
    for g, w in zip(got[:5], want):
        np.testing.assert_allclose([g["probs"]["neg"], g["probs"]["pos"]], w, atol=1e-5)
        assert g["label"] == ["neg", "pos"][int(np.argmax(w))]
    assert sum(bool(g.get("truncated")) for g in got) == sum(len(t.encode()) + 2 > 256 for t in texts)


def test_bad_records_go_to_errors_file_and_rest_is_classified(tmp_path, tiny_dir, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "fine"}\n{broken\n{"text": null}\n{"text": "\xff"}\n{"id": 9, "text": "also fine"}\n')
    out = tmp_path / "out.jsonl"
    rc = main([str(src), "-o", str(out), "--model", str(tiny_dir), "-q"])
    assert rc == 1
    assert [g["id"] for g in _read(out)] == [1, 9]
    errs = _read(str(out) + ".errors.jsonl")
    assert [(e["line"], e["input"]) for e in errs] == [(2, str(src)), (3, str(src)), (4, str(src))]
    assert "invalid JSON" in errs[0]["error"] and "NoneType" in errs[1]["error"] and "UTF-8" in errs[2]["error"]
    err = capsys.readouterr().err
    assert "classified 2, failed 3" in err


def test_formats_gz_csv_txt_and_stdin(tmp_path, tiny_dir, monkeypatch, capsys):
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "one"}\n'))
    csv = tmp_path / "b.csv"
    csv.write_text('id,review\nx,"two\nlines"\n', encoding="utf-8")
    txt = tmp_path / "c.txt"
    txt.write_text("three\nfour\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    assert main([str(gz), str(txt), "-o", str(out), "--model", str(tiny_dir), "-q"]) == 0
    got = _read(out)
    assert [(g["input"], g["id"]) for g in got] == [(str(gz), 1), (str(txt), 1), (str(txt), 2)]
    assert main([str(csv), "-o", str(out), "--model", str(tiny_dir), "--text-field", "review", "-q"]) == 0
    assert [g["id"] for g in _read(out)] == ["x"]
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"stdin review\n")))
    assert main(["-", "--format", "txt", "--model", str(tiny_dir), "-q"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["id"] == 1


def test_usage_errors_exit_2(tmp_path, tiny_dir, capsys):
    assert main([str(tmp_path / "missing.jsonl"), "--model", str(tiny_dir)]) == 2
    assert "no such file" in capsys.readouterr().err
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    assert main([src, "--model", str(tmp_path / "nomodel.onnx")]) == 2
    assert main([src, "--model", str(tiny_dir), "--provider", "cuda"]) == 2
    assert "not available" in capsys.readouterr().err
    assert main([src, "--model", str(tiny_dir), "--provider", "tpu"]) == 2
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    assert main([src, "--model", str(bad)]) == 2
    assert "not a complete ONNX file" in capsys.readouterr().err


def test_bundled_model_classifies_examples(tmp_path, capsys):
    from pathlib import Path

    assert default_model_path().is_file()
    examples = Path(__file__).resolve().parents[1] / "examples" / "reviews.jsonl"
    out = tmp_path / "o.jsonl"
    assert main([str(examples), "-o", str(out), "-q"]) == 0
    got = _read(out)
    assert len(got) == len(examples.read_text().splitlines())
    assert all(g["label"] in ("neg", "pos") and abs(sum(g["probs"].values()) - 1) < 1e-4 for g in got)
    assert "provider cpu (picked by auto)" in capsys.readouterr().err


def test_io_binding_gives_the_same_logits(tiny_dir, review_texts):
    from pcv.runtime.session import SessionConfig

    enc = PerceiverByteTokenizer()(review_texts[:5], max_length=256, truncation=True, padding="longest")
    plain = OnnxClassifier(tiny_dir / "model.onnx", SessionConfig(provider="cpu"))
    bound = OnnxClassifier(tiny_dir / "model.onnx", SessionConfig(provider="cpu", io_binding=True))
    assert not plain.io_binding and bound.io_binding
    np.testing.assert_array_equal(bound.logits(enc.input_ids, enc.attention_mask),
                                  plain.logits(enc.input_ids, enc.attention_mask))


def test_engine_plan_defaults_and_overrides(tiny_dir):
    from pcv.runtime.session import CPU_SMALL_MODEL_BATCH, ENGINES, default_model_path, default_threads, plan_engine

    prov, eng = plan_engine(default_model_path(), "cpu")  # a real-size model: batch 1, one run per core
    assert prov == "cpu" and (eng.batch_size, eng.threads, eng.concurrent_runs) == (1, 1, default_threads())
    path = tiny_dir / "model.onnx"  # a tiny one: batches, since per-call overhead dominates
    assert plan_engine(path, "cpu")[1].batch_size == CPU_SMALL_MODEL_BATCH
    _, eng = plan_engine(path, "cpu", threads=2)  # threads alone: one run at a time
    assert (eng.threads, eng.concurrent_runs) == (2, 1)
    _, eng = plan_engine(path, "cpu", batch_size=16, concurrent_runs=3)
    assert (eng.batch_size, eng.threads, eng.concurrent_runs) == (16, ENGINES["cpu"].threads, 3)


@pytest.mark.parametrize("args", [[], ["--batch-size", "5", "--concurrent-runs", "1", "--threads", "2"],
                                  ["--concurrent-runs", "3"]], ids=["defaults", "one-run", "three-runs"])
def test_engine_settings_do_not_change_predictions(tmp_path, tiny_dir, review_texts, args):
    src = _jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(review_texts[:50])])
    out = tmp_path / "out.jsonl"
    assert main([src, "-o", str(out), "--model", str(tiny_dir), "-q", "--window", "16", *args]) == 0
    ref = tmp_path / "ref.jsonl"
    assert main([src, "-o", str(ref), "--model", str(tiny_dir), "-q", "--batch-size", "50", "--concurrent-runs", "1"]) == 0
    got, want = _read(out), _read(ref)
    assert [g["id"] for g in got] == list(range(50)) and [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


def test_head_tail_averages_the_first_and_last_window_of_long_texts(tmp_path, review_texts):
    """On the bundled model (a tiny untrained one gives nearly the same probabilities for any text)."""
    from pcv.runtime.pipeline import tail_text

    n = 2048
    fits = [len(t.encode()) + 2 <= n for t in review_texts]
    texts = ([t for t, f in zip(review_texts, fits) if not f][:4] + [t for t, f in zip(review_texts, fits) if f][:4]
             + ["é" * 1500 + "x"])
    long = [len(t.encode()) + 2 > n for t in texts]  # the last one: 2-byte characters, the tail cut lands inside one
    assert sum(long) == 5
    src = _jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    head, both = tmp_path / "head.jsonl", tmp_path / "both.jsonl"
    assert main([src, "-o", str(head), "-q"]) == 0
    assert main([src, "-o", str(both), "--long-text", "head-tail", "-q"]) == 0
    head, both = _read(head), _read(both)
    clf, tok = OnnxClassifier(default_model_path()), PerceiverByteTokenizer()

    def probs(text):  # one window, as the model reads it
        enc = tok([text], max_length=n, truncation=True, padding="longest")
        return softmax(clf.logits(enc.input_ids, enc.attention_mask))[0]

    moved = []
    for t, is_long, h, b in zip(texts, long, head, both):
        assert b.get("truncated", False) == h.get("truncated", False) == is_long  # the middle is still not read
        got, before = (np.array([x["probs"]["neg"], x["probs"]["pos"]]) for x in (b, h))
        if is_long:
            tail = tail_text(t, n)
            assert t.endswith(tail) and n - 3 <= len(tail.encode()) <= n - 2
            want = (probs(t) + probs(tail)) / 2
            moved.append(np.abs(probs(t) - want).max())
            np.testing.assert_allclose(got, want, atol=2e-6)  # (the output has 6 decimals)
        else:  # texts that fit are read as before
            np.testing.assert_allclose(got, before, atol=2e-6)
    assert max(moved) > 0.01  # the tail windows changed answers: the check above can tell the two apart


def test_long_text_is_part_of_the_resume_fingerprint(tmp_path, tiny_dir, review_texts, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in review_texts[:10]])
    out = tmp_path / "o.jsonl"
    assert main([src, "-o", str(out), "--model", str(tiny_dir), "-q"]) == 0
    # finished with head: resuming it as head-tail would mix two readings in one file
    assert main([src, "-o", str(out), "--model", str(tiny_dir), "--long-text", "head-tail", "--resume", "-q"]) == 2
    assert "long_text" in capsys.readouterr().err


def _accuracy_line(err):
    return next(line for line in err.splitlines() if line.startswith("pcv-batch: accuracy") or "no record had" in line)


def test_label_field_scores_predictions_against_the_files_labels(tmp_path, tiny_dir, reviews, capsys):
    # labels as ids and as names, mixed
    rows = [{"id": i, "text": r["text"], "label": ("neg", "pos")[r["label"]] if i % 2 else r["label"]}
            for i, r in enumerate(reviews[:40])]
    rows[3] = {"id": 3, "text": "no label here"}  # classified, not scored
    rows[5]["label"] = "meh"  # classified, not scored, reported
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    out = tmp_path / "out.jsonl"
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "--label-field", "label", "-q"]) == 1
    got = _read(out)
    assert [g["id"] for g in got] == list(range(40))  # nothing lost to the labels
    names = ("neg", "pos")
    gold = {r["id"]: names[r["label"]] if isinstance(r["label"], int) else r["label"]
            for r in rows if r.get("label") in (0, 1, "neg", "pos")}
    right = sum(g["label"] == gold[g["id"]] for g in got if g["id"] in gold)
    line = _accuracy_line(capsys.readouterr().err)
    assert f"accuracy {100 * right / 38:.2f} % ({right} of 38 labelled records)" in line
    assert "1 without 'label'" in line and f"1 with an unusable label, not scored (first: {src}: line 6: label 'meh'" in line


def test_label_field_in_csv_and_without_any_labels(tmp_path, tiny_dir, capsys):
    csv = tmp_path / "in.csv"
    csv.write_text("text,sentiment\ngood film,pos\nbad film,0\n")
    assert main([str(csv), "-o", str(tmp_path / "o.jsonl"), "--model", str(tiny_dir), "--label-field", "sentiment", "-q"]) == 0
    assert "of 2 labelled records" in _accuracy_line(capsys.readouterr().err)
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "no labels"}])
    assert main([src, "-o", str(tmp_path / "o2.jsonl"), "--model", str(tiny_dir), "--label-field", "label", "-q"]) == 0
    assert "no record had a usable 'label'" in _accuracy_line(capsys.readouterr().err)
    assert main([str(csv), "--model", str(tiny_dir), "--label-field", "label", "-q"]) == 2  # no such column
    assert "no column 'label'" in capsys.readouterr().err
