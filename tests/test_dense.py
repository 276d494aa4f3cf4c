"""Dense distillation (teacher.DenseTargets, the word lexicon) and the fused training attention."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pcv.export.modeling import ModelSize, build_config
from pcv.runtime import PerceiverByteTokenizer
from pcv.runtime.errors import ConfigError
from pcv.train.cli import train_main
from pcv.train.fastattn import use_fused_attention
from pcv.train.surgery import patch_init
from pcv.train.teacher import DenseTargets, word_weights
from transformers import PerceiverForSequenceClassification


def test_targets_sit_under_the_latent_that_reads_the_word():
    d = DenseTargets({"great": 2.0, "film": -1.0}, num_latents=4, max_length=16)  # 4-byte windows
    t, m = d(["a great film"])  # [CLS] at 0: "great" at byte 3 -> latent 0, "film" at byte 9 -> latent 2
    assert t[..., 0].tolist() == [[2.0, 0.0, -1.0, 0.0]] and m.tolist() == [[1, 1, 1, 1]] and t.shape == (1, 4, 1)
    t, m = d(["é great"])  # two-byte é: "great" starts at byte 4 -> latent 1; 10 tokens -> 3 latents used
    assert t[..., 0].tolist() == [[0.0, 2.0, 0.0, 0.0]] and m.tolist() == [[1, 1, 1, 0]]
    t, _ = d(["x" * 20 + " great"])  # truncated away: no target
    assert not t.any()
    t, _ = d(["GREAT great, great!"])  # lower-cased like the lexicon; repeats add up per window
    assert t.sum() == 6.0


def test_window_comes_from_the_models_positions_not_the_truncation():
    # A 16-position model with 4 latents reads 4-byte windows even when training cuts inputs at 8.
    d = DenseTargets({"great": 2.0, "film": -1.0}, num_latents=4, max_length=8, positions=16)
    t, m = d(["a great film"])  # "great" at byte 3 -> latent 0; "film" at byte 9 is cut off
    assert t[..., 0].tolist() == [[2.0, 0.0, 0.0, 0.0]] and m.tolist() == [[1, 1, 0, 0]]


def test_word_positions_match_the_tokenizer(reviews):
    # The byte position DenseTargets computes for each word is where the tokenizer puts its first byte.
    tok = PerceiverByteTokenizer()
    words = {"the": 1.0}
    d = DenseTargets(words, num_latents=2048, max_length=2048)  # window 1: latent = token position
    texts = [r["text"] for r in reviews[:20]] + ["naïve café — the end", "日本 the 映画"]
    t, _ = d(texts)
    ids = tok(texts, max_length=2048, truncation=True, padding="longest").input_ids
    for row, text in enumerate(texts):
        for pos in np.flatnonzero(t[row, :, 0]):
            got = [int(i) - 6 for i in ids[row, pos : pos + 3]]  # byte ids follow the 6 specials
            if min(got) < 0:  # the word runs into [SEP] at the truncation point: its start is still there
                assert got[0] == ord("t") or got[0] == ord("T")
                continue
            word = bytes(got).lower()
            assert word == b"the", (text, pos)
            prev = int(ids[row, pos - 1])
            assert prev < 6 or not chr(prev - 6).isalpha()  # a word start ([CLS] or a non-letter before it)


def test_normalised_targets_have_unit_rms(reviews):
    texts = [r["text"] for r in reviews]
    labels = np.array([r["label"] for r in reviews])
    d = DenseTargets(word_weights(texts, labels), num_latents=64, max_length=512).normalised(texts)
    t, m = d(texts)
    assert np.sqrt((t**2 * m[..., None]).sum() / m.sum()) == pytest.approx(1.0, rel=1e-4)


def test_multi_class_lexicon_has_a_weight_per_label_and_targets_a_channel_each():
    texts = ["the cat sat on a mat", "a cat and a mat", "my cat", "dogs bark at the mailman", "a dog barks", "dog days",
             "birds sing songs", "a bird sings", "bird songs"] * 3
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2] * 3)
    ww = word_weights(texts, labels)
    assert {len(v) for v in ww.values()} == {3}
    assert int(np.argmax(ww["cat"])) == 0 and int(np.argmax(ww["dog"])) == 1 and int(np.argmax(ww["bird"])) == 2
    d = DenseTargets({"cat": [1.0, -1.0, 0.0], "bird": [0.0, 0.5, 2.0]}, num_latents=4, max_length=16)
    assert d.channels == 3
    t, m = d(["a cat, a bird"])  # [CLS] at 0: "cat" at byte 3 -> latent 0, "bird" at 10 -> latent 2
    assert t.shape == (1, 4, 3) and m.tolist() == [[1, 1, 1, 1]]
    np.testing.assert_array_equal(t[0], [[1.0, -1.0, 0.0], [0, 0, 0], [0.0, 0.5, 2.0], [0, 0, 0]])
    t, _ = d(["cat cat"])  # both in window 0 (bytes 1 and 5 -> latents 0 and 1)
    np.testing.assert_array_equal(t[0, :2], [[1.0, -1.0, 0.0], [1.0, -1.0, 0.0]])
    with pytest.raises(ConfigError, match="different lengths"):
        DenseTargets({"cat": [1.0, 0.0], "dog": 1.0}, num_latents=4, max_length=16)


def test_train_with_dense_distillation_on_three_labels(tmp_path, reviews):
    p = tmp_path / "train.jsonl"
    names = ["neg", "pos", "other"]
    p.write_text("".join(json.dumps({"text": r["text"], "label": names[i % 3]}) + "\n" for i, r in enumerate(reviews[:60])))
    out = tmp_path / "m"
    args = [str(p), "--out", str(out), "--dense-weight", "1.0", "--teacher", "ngram", "--epochs", "1", "--num-latents", "16",
            "--d-latents", "32", "--d-model", "64", "--num-layers", "1", "--self-heads", "2", "--cross-heads", "2",
            "--max-length", "128", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2", "--eval-every", "3"]
    assert train_main(args) == 0
    m = PerceiverForSequenceClassification.from_pretrained(out)
    assert sorted(m.config.id2label.values()) == sorted(names)
    assert json.loads((out / "metrics.json").read_text())["config"]["dense_weight"] == 1.0


def test_fused_attention_gives_the_stock_logits_and_gradients():
    torch.manual_seed(0)
    size = ModelSize(num_latents=16, d_latents=32, d_model=64, num_layers=2, self_heads=2, cross_heads=4, max_length=128)
    stock = PerceiverForSequenceClassification(build_config(size)).eval()
    patch_init(stock)
    fused = copy.deepcopy(stock)
    assert use_fused_attention(fused) == 4  # cross-attention, 2 self-attention layers, decoder
    x = torch.randint(6, 262, (3, 100))
    mask = torch.ones(3, 100, dtype=torch.long)
    mask[1, 40:] = 0
    mask[2, 90:] = 0
    outs = []
    for m in (stock, fused):
        m.zero_grad()
        logits = m(inputs=x, attention_mask=mask).logits
        logits.sum().backward()
        outs.append((logits.detach(), m.perceiver.input_preprocessor.embeddings.weight.grad.clone()))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


@pytest.mark.parametrize("prefill", [False, True], ids=["lazy", "prefill"])
def test_train_with_dense_distillation_saves_a_plain_classifier(tmp_path, reviews, prefill, monkeypatch, capsys):
    if prefill:  # as on a many-core machine with a big pool: the targets made up front in processes
        from pcv.train import train as train_mod

        monkeypatch.setattr(train_mod, "PREFILL_MIN_POOL", 0)
        monkeypatch.setattr(train_mod.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    p = tmp_path / "train.jsonl"
    rows = [r for r in reviews if r["label"] == 0][:24] + [r for r in reviews if r["label"] == 1][:24]
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    out = tmp_path / "m"
    args = [str(p), "--out", str(out), "--dense-weight", "1.0", "--epochs", "1", "--num-latents", "16", "--d-latents", "32",
            "--d-model", "64", "--num-layers", "1", "--self-heads", "2", "--cross-heads", "2", "--max-length", "128",
            "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2", "--eval-every", "3", "--checkpoint-every", "3"]
    assert train_main(args) == 0
    assert ("dense targets for 43 texts made" in capsys.readouterr().out) == prefill
    # the dense head is training-only: the saved model loads as a stock classifier without leftovers
    m = PerceiverForSequenceClassification.from_pretrained(out)
    assert m.config.num_latents == 16
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "dense_head" in k or k.startswith("model.")]
    assert train_main([*args[:6], "2", *args[7:]]) == 0  # resumes (the checkpoint holds the head too)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12


@pytest.mark.parametrize("max_bytes", [1 << 30, 0])
def test_dense_memo_gives_the_targets_of_each_text_at_each_shift(max_bytes):
    from pcv.train.train import DenseMemo

    pool = ["a great film", "an awful, awful film", "great", "awful acting but a great plot " * 5, "déjà vu: great"]
    dense = DenseTargets({"great": 1.0, "awful": -1.0, "plot": 0.5}, num_latents=4, max_length=64)
    memo = DenseMemo(dense, len(pool), max_bytes=max_bytes)
    assert (memo.memo is None) == (max_bytes == 0)
    for idx, shifts in (([0, 2], None), ([3, 0, 1], [0, 5, 15]), ([1, 1, 3], [3, 0, 7]), ([2, 4], [16, 1])):
        idx = np.array(idx)  # texts seen before and new ones, a text twice in a batch
        t, m = dense.from_words(memo.words([pool[i] for i in idx], idx), None if shifts is None else np.array(shifts))
        # a shift is leading spaces: the targets of the shifted texts themselves
        want_t, want_m = dense([" " * s + pool[i] for i, s in zip(idx, shifts or [0] * len(idx))])
        np.testing.assert_array_equal(t, want_t)
        np.testing.assert_array_equal(m, want_m)


def test_shifted_targets_move_the_words_and_cut_at_max_length():
    d = DenseTargets({"great": 2.0, "film": -1.0}, num_latents=4, max_length=16)  # 4-byte windows
    t, m = d(["great film"], np.array([0]))  # [CLS] at 0: great at 1 (window 0), film at 7 (window 1)
    np.testing.assert_array_equal(t[0, :, 0], [2.0, -1.0, 0, 0])
    t, m = d(["great film"], np.array([3]))  # great at 4 (window 1), film at 10 (window 2)
    np.testing.assert_array_equal(t[0, :, 0], [0, 2.0, -1.0, 0])
    np.testing.assert_array_equal(m[0], [1, 1, 1, 1])  # 3 + 10 bytes + 2 specials = 15 tokens
    t, _ = d(["great film"], np.array([8]))  # film would start at 15, where truncation puts [SEP]
    np.testing.assert_array_equal(t[0, :, 0], [0, 0, 2.0, 0])


def test_dense_memo_prefill_in_processes_gives_the_same_targets(reviews):
    from pcv.train.train import DenseMemo

    pool = [r["text"] for r in reviews[:50]] + ["", "great"]
    dense = DenseTargets({"great": 1.0, "awful": -1.0, "plot": 0.5, "film": 0.25}, num_latents=16, max_length=512)
    memo = DenseMemo(dense, len(pool))
    memo.prefill(pool, workers=2)
    assert all(w is not None for w in memo.memo)
    idx = np.arange(len(pool))[::-1]
    t, m = dense.from_words(memo.words([pool[i] for i in idx], idx))
    want_t, want_m = dense([pool[i] for i in idx])
    np.testing.assert_array_equal(t, want_t)
    np.testing.assert_array_equal(m, want_m)
    assert t.any()


def test_shift_augment_trains_on_shifted_texts_with_their_targets(tmp_path, reviews, monkeypatch, capsys):
    from pcv.train import train as train_mod

    seen = []
    real_call = DenseTargets.from_words

    def spy(self, words, shifts=None):
        seen.append(None if shifts is None else shifts.copy())
        return real_call(self, words, shifts)

    real_tok = train_mod.PerceiverByteTokenizer.__call__
    leading = []

    def tok_spy(self, texts, **kw):
        leading.extend(len(t) - len(t.lstrip(" ")) for t in texts)
        return real_tok(self, texts, **kw)

    monkeypatch.setattr(DenseTargets, "from_words", spy)
    p = tmp_path / "train.jsonl"
    rows = [r for r in reviews if r["label"] == 0][:24] + [r for r in reviews if r["label"] == 1][:24]
    p.write_text("".join(json.dumps({"text": r["text"].lstrip(), "label": r["label"]}) + "\n" for r in rows))
    args = [str(p), "--out", str(tmp_path / "m"), "--dense-weight", "1.0", "--epochs", "1", "--num-latents", "16",
            "--d-latents", "32", "--d-model", "64", "--num-layers", "1", "--self-heads", "2", "--cross-heads", "2",
            "--max-length", "128", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2", "--eval-every", "3",
            "--checkpoint-every", "3"]
    assert train_main([*args, "--shift-augment", "33"]) == 2  # over a quarter of --max-length
    assert "--shift-augment 33" in capsys.readouterr().err
    monkeypatch.setattr(train_mod.PerceiverByteTokenizer, "__call__", tok_spy)
    assert train_main([*args, "--shift-augment", "4"]) == 0
    drawn = np.concatenate([s for s in seen if s is not None])  # None: the targets normalised before training
    assert drawn.min() >= 0 and drawn.max() <= 3 and len(set(drawn.tolist())) > 1
    assert sorted(set(leading)) == sorted(set(drawn.tolist()) | {0})  # training texts shifted; evaluation ones not
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["config"]["shift_augment"] == 4


def test_fresh_model_defaults_to_dense_targets_and_shifts_and_says_so(tmp_path, reviews, capsys):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": r["text"], "label": ["a", "b", "c"][i % 3]}) + "\n"
                         for i, r in enumerate(reviews[:48])))
    small = ["--num-latents", "16", "--d-latents", "32", "--d-model", "64", "--num-layers", "1", "--self-heads", "2",
             "--cross-heads", "2", "--max-length", "128", "--batch-size", "8", "--epochs", "1", "--eval-every", "100"]
    assert train_main([str(p), "--out", str(tmp_path / "m"), *small]) == 0
    out = capsys.readouterr().out
    assert "learns from: labels; word targets under every latent (--dense-weight 1); texts shifted by 0-7 bytes" in out
    cfg = json.loads((tmp_path / "m" / "metrics.json").read_text())["config"]
    assert (cfg["dense_weight"], cfg["shift_augment"]) == (1.0, 8)  # 128 positions / 16 latents
    # the run dir records what ran: the defaults given explicitly are the same run, and resume it
    assert train_main([str(p), "--out", str(tmp_path / "m"), *small, "--dense-weight", "1", "--shift-augment", "8"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert train_main([str(p), "--out", str(tmp_path / "m"), *small, "--shift-augment", "4"]) == 2
    assert "shift_augment 8 → 4" in capsys.readouterr().err
    assert train_main([str(p), "--out", str(tmp_path / "off"), *small, "--dense-weight", "0", "--shift-augment", "0"]) == 0
    assert "learns from: labels\n" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "off" / "metrics.json").read_text())["config"]
    assert (cfg["dense_weight"], cfg["shift_augment"]) == (0.0, 0)


def test_texts_without_shared_words_train_on_their_labels_and_say_so(tmp_path, capsys):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": f"w{i}x{i * 7}", "label": "ab"[i % 2]}) + "\n" for i in range(30)))
    small = ["--num-latents", "16", "--d-latents", "32", "--d-model", "64", "--num-layers", "1", "--self-heads", "2",
             "--cross-heads", "2", "--max-length", "128", "--batch-size", "8", "--epochs", "1", "--eval-every", "100"]
    assert train_main([str(p), "--out", str(tmp_path / "m"), *small]) == 0
    out = capsys.readouterr().out
    assert "no word occurs in 3 training texts" in out and "learns from: labels; texts shifted" in out
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["config"]["dense_weight"] == 0.0
    # asked for, dense targets without a lexicon are an error, not a quiet fallback
    assert train_main([str(p), "--out", str(tmp_path / "asked"), *small, "--dense-weight", "2"]) == 2
    assert "--dense-weight 2: no word occurs in 3 training texts" in capsys.readouterr().err


def test_runs_with_and_without_dense_targets_share_a_teacher_cache(tmp_path, reviews, capsys):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in reviews[:60]))
    cache = tmp_path / "t.npz"
    small = ["--num-latents", "16", "--d-latents", "32", "--d-model", "64", "--num-layers", "1", "--self-heads", "2",
             "--cross-heads", "2", "--max-length", "128", "--batch-size", "8", "--epochs", "0.2", "--eval-every", "100",
             "--teacher", "ngram", "--teacher-cache", str(cache)]
    assert train_main([str(p), "--out", str(tmp_path / "a"), *small]) == 0  # dense targets on (the default)
    assert "teacher: loaded from" not in capsys.readouterr().out
    assert train_main([str(p), "--out", str(tmp_path / "b"), *small, "--dense-weight", "0"]) == 0
    assert f"teacher: loaded from {cache}" in capsys.readouterr().out


def test_dense_weight_below_zero_is_refused(tmp_path, capsys):
    assert train_main(["x.jsonl", "--out", str(tmp_path / "m"), "--dense-weight", "-1"]) == 2
    assert "--dense-weight -1" in capsys.readouterr().err


def test_windows_follow_the_patch_starts_when_positions_do_not_divide():
    # 16 positions over 3 latents: patch_init starts latent i on byte 16 i / 3 (0, 5.33, 10.67)
    d = DenseTargets({"great": 2.0, "film": -1.0, "end": 0.5}, num_latents=3, max_length=16)
    t, m = d(["a great film end"])  # great at 3 -> 0, film at 9 -> 1, end at 14 -> 2 (cut at 16: [SEP] at 15)
    assert t[..., 0].tolist() == [[2.0, -1.0, 0.5]] and m.tolist() == [[1, 1, 1]]
    t, m = d(["great"])  # 7 tokens: latents 0 and 1 (7 * 3 / 16 = 1.3)
    assert t[..., 0].tolist() == [[2.0, 0.0, 0.0]] and m.tolist() == [[1, 1, 0]]
