"""The byte n-gram head: its hash against a plain-Python reference, its ONNX graph and variants,
loading and its untrusted config, adding and dropping it, and pcv-train's default."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_model
from pcv.export.modeling import build_classifier, build_config, check_config, load_classifier
from pcv.export.ngrams import BASE, ORDER_SALT, ByteNgrams, PerceiverWithNgrams, has_ngrams, with_ngram_head
from pcv.export.onnx_export import ExportConfig, export_onnx
from pcv.export.sizes import ModelSize
from pcv.export.variants import VariantConfig, build_variant, variant_path
from pcv.runtime import ModelError, PerceiverByteTokenizer
from pcv.runtime.session import OnnxClassifier

SIZE = ModelSize(num_latents=16, d_latents=64, d_model=64, num_layers=2, self_heads=2, cross_heads=2, max_length=512)
LABELS = {0: "a", 1: "b", 2: "c"}


def ngram_model(seed: int = 0) -> PerceiverWithNgrams:
    torch.manual_seed(seed)
    m = build_classifier(build_config(SIZE, LABELS, ngrams=True)).eval()
    with torch.no_grad():
        m.ngram.weight.normal_(0, 0.3)  # a trained head is not zero: every bucket carries weight
    return m


def reference_head(weight: np.ndarray, ids: list[int], orders, buckets: int) -> np.ndarray:
    """The head's logits for one unpadded token sequence, in plain Python integers."""
    total = np.zeros(weight.shape[1])
    count = 0
    for n in orders:
        for p in range(len(ids) - n + 1):
            h = 0
            for t in ids[p : p + n]:
                h = h * BASE + t
            total += weight[(h + n * ORDER_SALT) % buckets]
            count += 1
    return total / math.sqrt(max(count, 1))


def test_head_matches_the_reference_with_padding(review_texts):
    m = ngram_model()
    texts = ["", "a", "ab", "naïve café ☕", *review_texts[:3]]
    enc = PerceiverByteTokenizer()(texts, max_length=300, truncation=True, padding="longest")
    with torch.no_grad():
        got = m.ngram(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)).numpy()
    w = m.ngram.weight.detach().numpy().astype(np.float64)
    for i in range(len(texts)):
        ids = enc.input_ids[i][enc.attention_mask[i] == 1].tolist()
        np.testing.assert_allclose(got[i], reference_head(w, ids, m.ngram.orders, m.ngram.buckets), rtol=1e-5, atol=1e-6)


def test_logits_are_the_sum_of_the_parts_and_a_fresh_head_adds_nothing(review_texts):
    m = ngram_model()
    enc = PerceiverByteTokenizer()(review_texts[:4], max_length=512, truncation=True, padding="longest")
    x, mask = torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)
    with torch.no_grad():
        net, head = m.parts(x, mask)
        torch.testing.assert_close(m(inputs=x, attention_mask=mask).logits, net + head)
        assert head.abs().max() > 0.1
        y = torch.tensor([0, 1, 2, 1])
        loss = m(inputs=x, attention_mask=mask, labels=y).loss
        torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(net + head, y))
        fresh = build_classifier(build_config(SIZE, LABELS, ngrams=True)).eval()
        assert fresh.ngram.weight.abs().max() == 0


def test_save_load_and_onnx_parity_at_every_short_length(tmp_path, review_texts):
    m = ngram_model()
    m.save_pretrained(tmp_path / "m")
    back = load_classifier(str(tmp_path / "m"))
    assert isinstance(back, PerceiverWithNgrams) and torch.equal(back.ngram.weight, m.ngram.weight)
    rep = export_onnx(back, tmp_path / "m.onnx", ExportConfig())  # verified against torch (raises if not)
    assert rep.max_scaled_diff <= 1e-4
    clf = OnnxClassifier(tmp_path / "m.onnx")
    texts = ["", "x", "xy", "xyz", "wxyz", *review_texts[:3]]  # shorter than the longest order, and padded
    enc = PerceiverByteTokenizer()(texts, max_length=512, truncation=True, padding="longest")
    with torch.no_grad():
        ref = back(inputs=torch.from_numpy(enc.input_ids), attention_mask=torch.from_numpy(enc.attention_mask)).logits.numpy()
    np.testing.assert_allclose(clf.logits(enc.input_ids, enc.attention_mask), ref, atol=1e-4)
    for t in texts[:5]:  # alone, unpadded
        e = PerceiverByteTokenizer()([t], max_length=512, truncation=True, padding="longest")
        np.testing.assert_allclose(clf.logits(e.input_ids, e.attention_mask), ref[texts.index(t)][None], atol=1e-4)


@pytest.mark.parametrize("kind,tol", [("optimized", 1e-4), ("fp16", 2e-2), ("int8", 0.15), ("int8-static", 0.5)])
def test_variants_keep_the_head(tmp_path_factory, review_texts, kind, tol):
    d = tmp_path_factory.getbasetemp() / "ngram-variants"
    d.mkdir(exist_ok=True)
    m = ngram_model()
    src = d / "m.onnx"
    if not src.exists():
        export_onnx(m, src, ExportConfig(verify=False))
    out = variant_path(src, kind)
    build_variant(kind, src, out, VariantConfig(calibration_texts=tuple(review_texts[:16]), max_length=512))
    enc = PerceiverByteTokenizer()(review_texts[:4], max_length=512, truncation=True, padding="longest")
    with torch.no_grad():
        net, head = (t.numpy() for t in m.parts(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)))
    got = OnnxClassifier(out).logits(enc.input_ids, enc.attention_mask)
    err = np.abs(got - (net + head)).max()
    assert err <= tol
    assert err < 0.25 * np.abs(head).max()  # the head is in the variant's graph, not dropped


@pytest.mark.parametrize("value", [
    {"orders": [1, 2], "buckets": 0}, {"orders": [], "buckets": 5}, {"orders": [0, 2], "buckets": 5},
    {"orders": [2, 2], "buckets": 5}, {"orders": [9], "buckets": 5}, {"orders": [1], "buckets": 1 << 30},
    {"orders": [1], "buckets": True}, {"orders": "12", "buckets": 5}, {"orders": [1]}, [1, 2, 3],
    {"orders": [1], "buckets": 5, "code": "x"}, {"orders": [[1]], "buckets": 5}, {"orders": [{"a": 1}], "buckets": 5},
])
def test_an_untrusted_ngram_config_is_refused_before_loading(tmp_path, value):
    m = tiny_model()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["pcv_ngram"] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="pcv_ngram"):
        check_config(tmp_path / "config.json")
    with pytest.raises(ModelError, match="pcv_ngram"):
        load_classifier(str(tmp_path))


def test_a_head_too_large_for_its_labels_is_refused(tmp_path):
    m = tiny_model()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["pcv_ngram"] = {"orders": [1, 2], "buckets": 1 << 22}
    cfg["id2label"] = {str(i): f"l{i}" for i in range(100)}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="refusing to build it"):
        check_config(tmp_path / "config.json")


def test_label_fields_beside_a_head_are_checked(tmp_path):
    m = ngram_model()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for field, value, says in (("id2label", 5, "id2label = 5"), ("num_labels", "3", "num_labels = '3'")):
        bad = dict(cfg, **{field: value})
        if field == "num_labels":
            bad.pop("id2label")
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ModelError, match=says):
            load_classifier(str(tmp_path))


def test_weights_and_config_must_agree_on_the_head(tmp_path):
    from safetensors.torch import load_file, save_file

    m = ngram_model()
    m.save_pretrained(tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    # the config says there is a head, the weights have none: refused, not a silent zero head
    (tmp_path / "nohead").mkdir()
    save_file({k: v for k, v in weights.items() if not k.startswith("ngram.")}, tmp_path / "nohead" / "model.safetensors")
    (tmp_path / "nohead" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="have none"):
        load_classifier(str(tmp_path / "nohead"))
    # the weights hold a head the config does not describe: refused, not dropped without a word
    (tmp_path / "noconfig").mkdir()
    save_file(weights, tmp_path / "noconfig" / "model.safetensors")
    (tmp_path / "noconfig" / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "pcv_ngram"}))
    with pytest.raises(ModelError, match="no pcv_ngram"):
        load_classifier(str(tmp_path / "noconfig"))
    # a table of another size than the config's
    (tmp_path / "small").mkdir()
    save_file(weights | {"ngram.weight": weights["ngram.weight"][:1000].clone()}, tmp_path / "small" / "model.safetensors")
    (tmp_path / "small" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"hold \(1000, 3\)"):
        load_classifier(str(tmp_path / "small"))


def test_a_fresh_head_for_many_other_labels_is_sized_for_them(tmp_path):
    from pcv.export.ngrams import default_settings

    ngram_model().save_pretrained(tmp_path)
    many = load_classifier(str(tmp_path), labels={i: f"l{i}" for i in range(400)})
    assert many.ngram.buckets == default_settings(400)["buckets"] < 262_139
    assert tuple(many.ngram.weight.shape) == (many.ngram.buckets, 400) and many.ngram.weight.abs().max() == 0


def test_the_hash_never_leaves_int32():
    from pcv.export.ngrams import MAX_BUCKETS, MAX_ORDER

    assert (MAX_BUCKETS - 1) * BASE + 261 < 2**31 and (MAX_BUCKETS - 1) + MAX_ORDER * ORDER_SALT < 2**31


def test_adding_and_dropping_the_head_keeps_the_perceiver(review_texts):
    plain = tiny_model()
    enc = PerceiverByteTokenizer()(review_texts[:3], max_length=256, truncation=True, padding="longest")
    x, mask = torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)
    with torch.no_grad():
        ref = plain(inputs=x, attention_mask=mask).logits
        added = with_ngram_head(plain, True).eval()
        assert has_ngrams(added.config) and isinstance(added.ngram, ByteNgrams)
        torch.testing.assert_close(added(inputs=x, attention_mask=mask).logits, ref)  # a zero head: same logits
        added.ngram.weight.normal_()
        dropped = with_ngram_head(added, False).eval()
        assert not has_ngrams(dropped.config) and not hasattr(dropped, "ngram")
        torch.testing.assert_close(dropped(inputs=x, attention_mask=mask).logits, ref)


def test_many_labels_get_fewer_buckets():
    from pcv.export.ngrams import BUCKETS, MAX_WEIGHTS, default_settings

    assert default_settings(64)["buckets"] == BUCKETS
    b = default_settings(1000)["buckets"]
    assert b * 1000 <= MAX_WEIGHTS and b > 0.99 * MAX_WEIGHTS // 1000
    assert all(b % d for d in range(2, int(b**0.5) + 1))  # a prime, as the hash wants


def test_the_head_fit_stops_at_its_share_of_a_time_budget(tmp_path, three, capsys, monkeypatch):
    from pcv.train import train as train_module
    from pcv.train.cli import train_main

    monkeypatch.setattr(train_module, "HEAD_FIT_SHARE", 0.0)
    assert train_main([str(three), "--out", str(tmp_path / "m"), "--max-minutes", "0.05", *TINY]) == 0
    said = capsys.readouterr().out
    assert "n-gram head fitted alone first: 0 passes over 108 texts" in said and "cut at its 0% of the time budget" in said


def test_the_head_trains_at_its_own_rate():
    from pcv.train.loop import param_groups

    m = build_classifier(build_config(SIZE, LABELS, ngrams=True))
    groups = param_groups(torch.nn.ModuleDict({"model": m}), {m.ngram: 10.0})
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 10.0]
    assert groups[1]["params"] == [m.ngram.weight]
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_a_checkpoint_loaded_for_other_labels_gets_a_zero_head(tmp_path):
    m = ngram_model()
    m.save_pretrained(tmp_path)
    four = load_classifier(str(tmp_path), labels={0: "w", 1: "x", 2: "y", 3: "z"})
    assert isinstance(four, PerceiverWithNgrams) and tuple(four.ngram.weight.shape) == (m.ngram.buckets, 4)
    assert four.ngram.weight.abs().max() == 0  # not left uninitialised, nor the old labels' weights


TINY = ["--num-latents", "8", "--d-latents", "32", "--d-model", "64", "--num-layers", "1", "--self-heads", "2",
        "--cross-heads", "2", "--max-length", "128", "--batch-size", "8"]


@pytest.fixture
def three(tmp_path):
    words = {"sport": "goal match team score", "music": "song guitar album band", "food": "bread soup cook taste"}
    rows = [{"text": f"the {words[k].split()[i % 4]} was {words[k].split()[(i + 1) % 4]}", "label": k}
            for i in range(40) for k in words]
    p = tmp_path / "three.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_pcv_train_adds_the_head_to_a_fresh_model_and_reports_its_parts(tmp_path, three, capsys):
    from pcv.train.cli import train_main

    out = tmp_path / "m"
    assert train_main([str(three), "--out", str(out), "--epochs", "2", *TINY]) == 0
    said = capsys.readouterr().out
    assert "+ a byte n-gram head (786,417 weights: orders 1,2,3,4,5" in said
    assert "n-gram head fitted alone first: 4 passes over 108 texts" in said  # before the first joint step
    assert "accuracy of its parts alone: the Perceiver" in said
    assert json.loads((out / "run.json").read_text())["settings"]["ngram_head"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]["parts"]) == {"perceiver", "ngram_head"}
    assert metrics["history"][0]["step"] == 0  # the fitted head's start is scored (and may be the saved model)
    # a longer budget goes on from the checkpoint: the trained head is not fitted again
    assert train_main([str(three), "--out", str(out), "--epochs", "3", *TINY]) == 0
    assert "fitted alone first" not in capsys.readouterr().out
    model = load_classifier(str(out))
    assert isinstance(model, PerceiverWithNgrams) and model.ngram.weight.abs().max() > 0  # it trained
    # another choice is another run: refused into the same dir
    assert train_main([str(three), "--out", str(out), "--epochs", "2", "--no-ngram-head", *TINY]) == 2
    assert "ngram_head True → False" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert train_main([str(three), "--out", str(plain), "--epochs", "1", "--no-ngram-head", *TINY]) == 0
    assert "n-gram" not in capsys.readouterr().out
    assert not has_ngrams(load_classifier(str(plain)).config)
    # a fine-tune keeps what its checkpoint has, unless asked
    ft = tmp_path / "ft"
    assert train_main([str(three), "--out", str(ft), "--init-from", str(plain), "--epochs", "1", "--ngram-head",
                       "--batch-size", "8"]) == 0
    assert "a fresh byte n-gram head added (it starts at zero: same logits)" in capsys.readouterr().out
    assert has_ngrams(load_classifier(str(ft)).config)
    ft2 = tmp_path / "ft2"
    assert train_main([str(three), "--out", str(ft2), "--init-from", str(out), "--epochs", "1", "--batch-size", "8"]) == 0
    assert has_ngrams(load_classifier(str(ft2)).config)
    # asking for what the checkpoint has is the same run: it resumes
    assert train_main([str(three), "--out", str(ft2), "--init-from", str(out), "--epochs", "1", "--batch-size", "8",
                       "--ngram-head"]) == 0
    assert "the run is complete" in capsys.readouterr().out
    # a run recorded before the head existed had none: --no-ngram-head resumes it
    run = json.loads((plain / "run.json").read_text())
    del run["settings"]["ngram_head"]
    (plain / "run.json").write_text(json.dumps(run))
    assert train_main([str(three), "--out", str(plain), "--epochs", "1", "--no-ngram-head", *TINY]) == 0
    assert "the run is complete" in capsys.readouterr().out
