"""Export parity on tiny in-test models (several sizes and lengths), metadata, and refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import save_pickle_only, tiny_model
from pcv.export.modeling import load_classifier
from pcv.export.onnx_export import ExportConfig, export_onnx, verify_onnx
from pcv.runtime import ModelError
from pcv.runtime.session import OnnxClassifier

SIZES = {
    "1layer-16lat": dict(num_latents=16, d=32, layers=1, max_length=128),
    "2layer-32lat": dict(num_latents=32, d=64, layers=2, max_length=512),
    "qk-channels": dict(num_latents=8, d=32, layers=1, max_length=256, qk_channels=16, v_channels=32),
}


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_export_matches_torch(tmp_path, review_texts, size):
    m = tiny_model(**SIZES[size])
    out = tmp_path / "m.onnx"
    report = export_onnx(m, out, ExportConfig(verify_texts=tuple(review_texts[:16])))
    assert report is not None and report.ok(1e-4)
    ml = SIZES[size]["max_length"]
    assert {c["seq"] for c in report.cases} == {8, min(130, ml), ml}
    assert {c["batch"] for c in report.cases} == {1, 3, 8}


def test_metadata_and_contract(tmp_path):
    m = tiny_model()
    out = tmp_path / "m.onnx"
    export_onnx(m, out, ExportConfig(verify=False))
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["pcv.id2label"]) == {"0": "neg", "1": "pos"}
    assert meta["pcv.max_length"] == "256" and meta["pcv.variant"] == "fp32"
    assert len(meta["pcv.source_sha256"]) == 64 and meta["pcv.tokenizer"] == "perceiver-bytes"
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert ins == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    clf = OnnxClassifier(out)
    assert clf.info.id2label == {0: "neg", 1: "pos"} and clf.info.max_length == 256


def test_verification_catches_a_wrong_graph(tmp_path):
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    out = tmp_path / "a.onnx"
    export_onnx(a, out, ExportConfig(verify=False))
    report = verify_onnx(b, out, max_length=256, texts=["some text"] * 4)
    assert not report.ok(1e-4)


def test_eval_mode_is_kept(tmp_path):
    m = tiny_model()
    m.train()  # export must not be affected by dropout, and must leave the model in eval mode
    export_onnx(m, tmp_path / "m.onnx", ExportConfig())
    assert not m.training


def test_pickle_only_dir_is_refused_unless_allowed(tmp_path):
    m = tiny_model().eval()
    save_pickle_only(m, tmp_path)
    with pytest.raises(ModelError, match="pickle"):
        load_classifier(str(tmp_path))
    loaded = load_classifier(str(tmp_path), allow_pickle=True)
    ids = torch.randint(6, 262, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs=ids).logits, m(inputs=ids).logits)


def test_missing_dir_and_offline_hub_id_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model dir"):
        load_classifier(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="local dir"):
        load_classifier("deepmind/language-perceiver-not-cached")


def test_safetensors_roundtrip(tmp_path):
    m = tiny_model()
    m.save_pretrained(tmp_path, safe_serialization=True)
    back = load_classifier(str(tmp_path))
    x = torch.randint(6, 262, (2, 40))
    with torch.no_grad():
        np.testing.assert_allclose(m(inputs=x).logits.numpy(), back(inputs=x).logits.numpy(), atol=1e-6)


def test_export_cli(tmp_path, tiny_dir, capsys):
    from pcv.export.cli import export_main

    assert export_main([str(tiny_dir), str(tmp_path / "cli.onnx")]) == 0
    assert "label agreement 100.0%" in capsys.readouterr().out
    assert export_main([str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 2
    assert "no such model dir" in capsys.readouterr().err


def test_a_failed_export_leaves_no_file_and_keeps_an_older_one(tmp_path, tiny_dir, capsys):
    from pcv.export.cli import export_main

    out = tmp_path / "m.onnx"
    out.write_bytes(b"an older model")
    assert export_main([str(tiny_dir), str(out), "--tolerance", "1e-30"]) == 2  # no export meets this
    assert "verification failed" in capsys.readouterr().err
    assert out.read_bytes() == b"an older model" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert export_main([str(tiny_dir), str(tmp_path / "new.onnx"), "--tolerance", "1e-30"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_int8_weights_without_the_int8_variant_is_refused(tmp_path, tiny_dir, capsys):
    from pcv.export.cli import export_main

    with pytest.raises(SystemExit) as e:
        export_main([str(tiny_dir), str(tmp_path / "m.onnx"), "--int8-weights", "8bit"])
    assert e.value.code == 2 and "--int8-weights 8bit is for --variant int8" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
