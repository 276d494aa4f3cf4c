"""Splice augmentation (pcv-train --splice-augment): texts made in training from two pool texts, labelled
by the n-gram teacher as a function of any text (teacher.NgramScorer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pcv.train.cli import train_main
from pcv.train.splice import Splicer, splice
from pcv.train.teacher import NgramScorer, fit_scorer, teacher_probs
from pcv.train.train import DenseMemo


@pytest.fixture()
def parts(reviews):
    by_label = [[r["text"] for r in reviews if r["label"] == k] for k in (0, 1)]
    return by_label[0][:20] + by_label[1][:20], by_label[0][20:28] + by_label[1][20:28]  # the repo's fixture: 32 / 28


@pytest.mark.parametrize("kind", ["ngram", "ngram-nb"])
@pytest.mark.parametrize("num_labels", [2, 3], ids=["binary", "three-labels"])
def test_scorer_gives_the_teachers_probabilities(parts, num_labels, kind):
    train, other = parts
    y = np.repeat([0, 1], 20)
    if num_labels == 3:
        y[::4] = 2  # a third label: a softmax (multinomial) or normalised sigmoids (ngram-nb's one-vs-rest)
    rng = np.random.default_rng(0)
    made = [splice(other[i], train[j], rng) for i, j in zip(range(10), range(0, 40, 4))] + ["", "Great, GREAT film!"]
    _, want_other, want_made = teacher_probs(train, y, other, num_labels=num_labels, probe_texts=made, kind=kind)
    scorer = NgramScorer(fit_scorer(train, y, other, kind=kind))  # the same fit as teacher_probs' full teacher
    assert scorer.ngram_max == (3 if kind == "ngram-nb" else 2)
    np.testing.assert_allclose(scorer(other), want_other, atol=1e-6)
    np.testing.assert_allclose(scorer(made), want_made, atol=1e-6)  # texts it never saw: the point of it


def test_splice_is_the_start_of_one_text_and_the_end_of_another_cut_at_whitespace():
    a, b = "one two three four five six seven eight", "ALPHA BETA GAMMA DELTA EPSILON ZETA"
    seen = set()
    for seed in range(200):
        s = splice(a, b, np.random.default_rng(seed))
        first_b = next((k for k, ch in enumerate(s) if ch.isupper()), len(s))
        i = first_b - 1 if first_b < len(s) else len(s)  # b's part starts at the space before its first word
        head, tail = s[:i], s[i:]
        assert a.startswith(head) and b.endswith(tail) and len(a) // 4 <= len(head) <= len(a)
        assert i == len(a) or a[i].isspace()  # a cut before a space ...
        assert tail == "" or (tail[0].isspace() and len(tail) <= len(b) * 3 // 4 + 1)  # ... and b's part from one
        seen.add(s)
    assert len(seen) > 5
    assert splice(a, b, np.random.default_rng(1)) == splice(a, b, np.random.default_rng(1))  # seeded
    assert splice("", "", np.random.default_rng(0)) == ""
    assert splice("nospace", "x", np.random.default_rng(0)) == "nospace"  # no whitespace: a whole, none of b


def test_splicer_makes_each_steps_splices_ahead_and_alike_in_any_order(parts):
    pool = parts[0]
    calls = []

    def scorer(texts):
        calls.append(list(texts))
        return np.tile([[0.25, 0.75]], (len(texts), 1)).astype(np.float32)

    def made_by(steps):
        with Splicer(pool, scorer, share=0.5, batch_size=16, seed=3, words=len) as splicer:
            return [splicer(k) for k in steps]

    in_order = made_by(range(6))
    assert 6 <= len(calls) <= 7  # steps 0..5, and step 6 made ahead unless the exit cancelled it first
    again = made_by([4, 0, 5, 1])  # a resume starts anywhere: each step's splices depend on (seed, step) only
    for k, m in zip([4, 0, 5, 1], again):
        assert m.texts == in_order[k].texts and m.rows.tolist() == in_order[k].rows.tolist()
        assert m.words == [len(t) for t in m.texts] and m.probs.shape == (len(m.rows), 2)
    rows = np.concatenate([m.rows for m in in_order])
    assert rows.min() >= 0 and rows.max() < 16 and 0.3 < len(rows) / (6 * 16) < 0.7
    assert all(t not in pool for m in in_order for t in m.texts)
    with Splicer(pool, scorer, share=0.05, batch_size=4, seed=0) as splicer:  # most steps make no splice
        sparse = [splicer(k) for k in range(20)]
    assert any(len(m.rows) == 0 for m in sparse) and all(m.probs.shape == (len(m.rows), 2) for m in sparse)
    with pytest.raises(RuntimeError, match="with block"):
        Splicer(pool, scorer, share=0.5, batch_size=4, seed=0)(0)


def test_worker_processes_make_what_the_thread_makes(parts):
    train, other = parts
    y = np.repeat([0, 1], 20)
    scorer = NgramScorer(fit_scorer(train, y, other, kind="ngram-nb"))  # pickles: it goes to each process
    pool = train + other

    def made_by(steps, workers):
        with Splicer(pool, scorer, share=0.5, batch_size=16, seed=5, words=len, workers=workers) as splicer:
            return [splicer(k) for k in steps]

    want = made_by(range(8), 1)
    for steps in (range(8), [5, 6, 7, 0, 1, 2, 3, 4]):  # in order, and a resume that starts at step 5
        got = dict(zip(steps, made_by(steps, 2)))
        for k, m in enumerate(want):
            assert got[k].texts == m.texts and got[k].rows.tolist() == m.rows.tolist() and got[k].words == m.words
            np.testing.assert_array_equal(got[k].probs, m.probs)


def test_splice_augment_trains_on_spliced_texts_with_the_teachers_targets(tmp_path, reviews, monkeypatch, capsys):
    from pcv.train import train as train_mod

    p = tmp_path / "train.jsonl"
    rows = [r for r in reviews if r["label"] == 0][:24] + [r for r in reviews if r["label"] == 1][:24]
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    args = [str(p), "--dense-weight", "1.0", "--epochs", "1", "--num-latents", "16", "--d-latents", "32", "--d-model",
            "64", "--num-layers", "1", "--self-heads", "2", "--cross-heads", "2", "--max-length", "256", "--batch-size",
            "8", "--lr", "1e-3", "--warmup-steps", "2", "--eval-every", "50", "--attention-dropout", "0",
            "--shift-augment", "0"]  # the texts trained on are the splices themselves, unshifted
    assert train_main([*args, "--out", str(tmp_path / "x"), "--splice-augment", "0.5"]) == 2  # no teacher
    assert "--splice-augment needs --teacher ngram" in capsys.readouterr().err
    assert train_main([*args, "--out", str(tmp_path / "x"), "--teacher", "ngram", "--splice-augment", "1.5"]) == 2
    assert "--splice-augment 1.5" in capsys.readouterr().err
    # a share so small that most steps have no splice: those steps train on the pool texts alone
    assert train_main([*args, "--out", str(tmp_path / "few"), "--teacher", "ngram", "--splice-augment", "0.05"]) == 0

    from pcv.train.splice import Made

    made, trained, splicers = [], [], []
    real_make, real_tok = Splicer.make, train_mod.PerceiverByteTokenizer.__call__

    def make_spy(self, step):
        m = real_make(self, step)
        made.append((step, m))
        splicers.append(self)
        return m

    memos, real_words = [], DenseMemo.words

    def words_spy(self, texts, idx):
        memos.append(self)
        return real_words(self, texts, idx)

    def tok_spy(self, texts, **kw):
        trained.extend(texts)
        return real_tok(self, texts, **kw)

    monkeypatch.setattr(Splicer, "make", make_spy)
    monkeypatch.setattr(DenseMemo, "words", words_spy)
    monkeypatch.setattr(train_mod.PerceiverByteTokenizer, "__call__", tok_spy)
    from pcv.train import teacher as teacher_mod

    refits, real_fit = [], teacher_mod.fit_scorer
    monkeypatch.setattr(teacher_mod, "fit_scorer", lambda *a, **k: refits.append(1) or real_fit(*a, **k))
    cache = tmp_path / "t.npz"
    run = [*args, "--teacher", "ngram", "--teacher-cache", str(cache), "--splice-augment", "0.5"]
    assert train_main([*run, "--out", str(tmp_path / "a")]) == 0
    assert refits == []  # the scorer is the teacher fitted for the targets, not a second fit
    pool = {r["text"] for r in rows}
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    sizes = [min(8, m["pool_size"] - 8 * k) for k in range(m["steps"])]  # one epoch: the last batch is short
    by_step = dict(made)  # the step after the last was made ahead too, never run
    assert sorted(by_step)[: m["steps"]] == list(range(m["steps"]))
    used = [t for k in range(m["steps"]) for r, t in zip(by_step[k].rows, by_step[k].texts) if r < sizes[k]]
    assert used and all(t not in pool for t in used) and set(used) <= set(trained)
    assert 0.3 < len(used) / sum(sizes) < 0.7  # about half of each batch
    memo, pool_texts = memos[-1], splicers[-1].pool  # memoised words are those of the pool texts, never of a splice
    kept = [i for i, w in enumerate(memo.memo) if w is not None]
    assert len(kept) >= sum(sizes) - 8
    for i in kept:
        for got, want in zip(memo.memo[i], memo.dense.words(pool_texts[i])):
            np.testing.assert_array_equal(got, want)
    scorer = NgramScorer(dict(np.load(tmp_path / "t.scorer.npz", allow_pickle=False)))
    for _, made_ in made:  # the targets of the splices are the teacher's probabilities of them
        assert isinstance(made_, Made) and len(made_.words) == len(made_.texts)
        if made_.texts:
            np.testing.assert_array_equal(made_.probs, scorer(made_.texts))
    assert m["config"]["splice_augment"] == 0.5
    # seeded by the step: a second run (its scorer from the cache) draws the same splices and trains the same weights
    first = {k: made_.texts for k, made_ in made}
    made.clear()
    assert train_main([*run, "--out", str(tmp_path / "b")]) == 0
    assert "loaded from" in capsys.readouterr().out
    assert all(first[k] == made_.texts for k, made_ in made)
    from safetensors.numpy import load_file

    wa, wb = (load_file(str(tmp_path / n / "model.safetensors")) for n in "ab")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    # a teacher cache without its scorer's (made before --splice-augment was asked for): the scorer is fitted
    # on its own, to the same arrays
    shared = dict(np.load(tmp_path / "t.scorer.npz", allow_pickle=False))
    (tmp_path / "t.scorer.npz").unlink()
    assert train_main([*run, "--out", str(tmp_path / "c"), "--epochs", "0.1"]) == 0
    assert refits == [1]
    refitted = dict(np.load(tmp_path / "t.scorer.npz", allow_pickle=False))
    assert refitted.keys() == shared.keys()
    for k in shared:
        np.testing.assert_array_equal(refitted[k], shared[k])


def test_splice_workers_train_the_same_weights_as_the_thread(tmp_path, reviews):
    from pcv.export.modeling import ModelSize
    from pcv.train.train import TrainConfig, train
    from safetensors.numpy import load_file

    p = tmp_path / "train.jsonl"
    rows = [r for r in reviews if r["label"] == 0][:16] + [r for r in reviews if r["label"] == 1][:16]
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    size = ModelSize(num_latents=8, d_latents=32, d_model=32, num_layers=1, self_heads=2, cross_heads=2, max_length=128)
    for workers in (1, 2):
        train(TrainConfig(data=(str(p),), out=str(tmp_path / f"w{workers}"), size=size, teacher="ngram-nb",
                          teacher_cache=str(tmp_path / "t.npz"), dense_weight=1.0, splice_augment=0.5,
                          splice_workers=workers, max_length=128, batch_size=8, epochs=1, warmup_steps=1,
                          eval_every=100, attention_dropout=0.0, device="cpu"))
    w1, w2 = (load_file(str(tmp_path / f"w{n}" / "model.safetensors")) for n in (1, 2))
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])
