"""The n-gram teacher: probe texts are scored without changing the teacher, and pcv-train reports the
teacher's accuracy on what a student of its max_length reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pcv.train.cli import train_main
from pcv.train.teacher import teacher_probs

TINY = ["--num-latents", "8", "--d-latents", "32", "--d-model", "32", "--num-layers", "1", "--self-heads", "2",
        "--cross-heads", "2", "--batch-size", "8", "--epochs", "0.2", "--warmup-steps", "1", "--eval-every", "100"]


@pytest.fixture()
def split_reviews(reviews):
    by_label = [[r for r in reviews if r["label"] == k] for k in (0, 1)]
    train = by_label[0][:20] + by_label[1][:20]
    other = by_label[0][20:30] + by_label[1][20:30]
    return [r["text"] for r in train], np.array([r["label"] for r in train]), [r["text"] for r in other]


def test_probe_texts_are_scored_like_other_texts_and_change_nothing(split_reviews):
    tr, y, other = split_reviews
    cv, o, probe = teacher_probs(tr, y, other, num_labels=2)
    cv2, o2, probe2 = teacher_probs(tr, y, other, num_labels=2, probe_texts=other[:5] + ["great film"])
    assert probe.shape == (0, 2) and probe2.shape == (6, 2)
    np.testing.assert_array_equal(cv, cv2)
    np.testing.assert_array_equal(o, o2)
    np.testing.assert_allclose(probe2[:5], o[:5], atol=1e-6)  # the same text gets the same probabilities


def test_train_reports_the_teachers_accuracy_at_max_length(tmp_path, reviews):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in reviews))
    longest = max(len(r["text"].encode("utf-8")) for r in reviews) + 2  # [CLS] + bytes + [SEP]
    cut, full = {}, {}
    for n in (longest, 64):
        out = tmp_path / f"m{n}"
        assert train_main([str(p), "--out", str(out), "--teacher", "ngram", "--max-length", str(n), *TINY]) == 0
        m = json.loads((out / "metrics.json").read_text())
        cut[n], full[n] = m["teacher_val_accuracy_at_max_length"], m["teacher_val_accuracy"]
        assert 0.0 <= cut[n] <= 1.0
    # nothing is cut when every review fits, so the figure is the teacher's own validation accuracy
    assert cut[longest] == full[longest]


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_teacher_cache_is_reused_only_for_the_same_inputs(tmp_path, reviews, capsys):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in reviews))
    cache = tmp_path / "cache" / "teacher.npz"
    run = ["--teacher", "ngram", "--dense-weight", "1", "--max-length", "256", *TINY]
    assert train_main([str(p), "--out", str(tmp_path / "plain"), *run]) == 0
    assert train_main([str(p), "--out", str(tmp_path / "built"), "--teacher-cache", str(cache), *run]) == 0
    assert cache.is_file() and "loaded from" not in capsys.readouterr().out
    with np.load(cache, allow_pickle=False) as z:  # plain arrays: no pickle needed to read it
        assert {"key", "cv", "other", "probe", "words", "weights"} <= set(z.files)
    assert train_main([str(p), "--out", str(tmp_path / "loaded"), "--teacher-cache", str(cache), *run]) == 0
    assert f"teacher: loaded from {cache}" in capsys.readouterr().out
    plain, built, loaded = (_weights(tmp_path / n) for n in ("plain", "built", "loaded"))
    for k in plain:  # the cache changes nothing in what is trained
        np.testing.assert_array_equal(plain[k], built[k])
        np.testing.assert_array_equal(plain[k], loaded[k])
    m = json.loads((tmp_path / "loaded" / "metrics.json").read_text())
    assert m["teacher_val_accuracy"] == json.loads((tmp_path / "plain" / "metrics.json").read_text())["teacher_val_accuracy"]
    # another split (other training texts) is not served from the cache: the teacher is fitted again
    assert train_main([str(p), "--out", str(tmp_path / "fewer"), "--teacher-cache", str(cache), "--val-fraction", "0.3",
                       *run]) == 0
    assert "made from other data or settings" in capsys.readouterr().out
    with np.load(cache, allow_pickle=False) as z:
        assert len(z["cv"]) == len(reviews) - round(len(reviews) * 0.3)  # replaced by the new run's


def test_nb_logistic_is_logistic_regression_on_log_count_ratio_scaled_features():
    import scipy.sparse as sp
    from pcv.train.teacher import NbLogistic
    from sklearn.linear_model import LogisticRegression

    # presence of three n-grams in six texts: the first mostly in label 1, the second only in label 0
    x = sp.csr_matrix(np.array([[1, 0, 1], [1, 0, 0], [1, 1, 1], [0, 1, 1], [0, 1, 0], [1, 1, 1]], float))
    y = np.array([1, 1, 1, 0, 0, 0])
    m = NbLogistic(4.0).fit(x, y)
    p = np.array([3, 1, 2]) + 1.0  # present in label 1, add-one
    q = np.array([1, 3, 2]) + 1.0
    r = np.log(p / p.sum()) - np.log(q / q.sum())
    assert r[0] > 0 > r[1] and r[2] == 0.0
    want = LogisticRegression(C=4.0, max_iter=3000).fit(x @ sp.diags(r), y)
    np.testing.assert_allclose(m.coef_, want.coef_ * r, atol=1e-8)  # the ratios folded into the weights
    np.testing.assert_allclose(m.predict_proba(x), want.predict_proba(x @ sp.diags(r)), atol=1e-8)
    three = NbLogistic(4.0).fit(x, np.array([0, 1, 2, 0, 1, 2]))  # one-vs-rest, normalised
    assert three.coef_.shape == (3, 3)
    np.testing.assert_allclose(three.predict_proba(x).sum(1), 1.0)


def test_each_teacher_kind_gives_distributions_and_an_unknown_kind_is_refused(split_reviews):
    tr, y, other = split_reviews
    for kind in ("ngram", "ngram-nb"):
        cv, o, _ = teacher_probs(tr, y, other, num_labels=2, kind=kind)
        assert cv.shape == (len(tr), 2) and o.shape == (len(other), 2)  # the repo fixture has fewer of label 1
        np.testing.assert_allclose(o.sum(1), 1.0, atol=1e-6)
        np.testing.assert_allclose(cv.sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="use one of ngram, ngram-nb"):
        teacher_probs(tr, y, other, num_labels=2, kind="bayes")


def test_a_cache_of_one_teacher_is_not_served_to_the_other(tmp_path, reviews, capsys):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in reviews))
    cache = tmp_path / "teacher.npz"
    run = ["--teacher-cache", str(cache), "--max-length", "128", *TINY]
    assert train_main([str(p), "--out", str(tmp_path / "a"), "--teacher", "ngram", *run]) == 0
    assert train_main([str(p), "--out", str(tmp_path / "b"), "--teacher", "ngram-nb", *run]) == 0
    out = capsys.readouterr().out
    assert "made from other data or settings" in out and "teacher: ngram-nb, n-gram" in out
    assert train_main([str(p), "--out", str(tmp_path / "c"), "--teacher", "ngram-nb", *run]) == 0
    assert f"teacher: loaded from {cache}" in capsys.readouterr().out
