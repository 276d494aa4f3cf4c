"""Untrusted model files: each is refused with a clear error before anything runs or is read."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from pcv.runtime import ModelError
from pcv.runtime.cli import main
from pcv.runtime.modelfile import DIGEST_KEY, graph_digest, scan_onnx
from pcv.runtime.session import OnnxClassifier

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _external_model(folder, location: str, *, length: int = 64) -> str:
    """A one-MatMul model whose weight W lives in external data at `location`."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("MatMul", ["input_ids", "W"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [w])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return str(path)


@pytest.fixture()
def secret(tmp_path):
    p = tmp_path / "secret.bin"
    p.write_bytes(np.full((4, 4), 7, np.float32).tobytes())
    (tmp_path / "m").mkdir()
    return p


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path, secret, how):
    folder = tmp_path / "m"
    if how == "dotdot":
        loc = "../secret.bin"
    elif how == "absolute":
        loc = str(secret)
    else:
        os.symlink(secret, folder / "weights.bin")
        loc = "weights.bin"
    model = _external_model(folder, loc)
    with pytest.raises(ModelError, match="outside the model's folder|absolute path") as e:
        OnnxClassifier(model)
    assert "'W'" in str(e.value)  # names the tensor


def test_external_data_missing_or_short_is_refused(tmp_path, secret):
    folder = tmp_path / "m"
    with pytest.raises(ModelError, match="missing"):
        OnnxClassifier(_external_model(folder, "nope.bin"))
    shutil.copy(secret, folder / "w.bin")
    with pytest.raises(ModelError, match="past its end"):
        OnnxClassifier(_external_model(folder, "w.bin", length=4096))


def test_external_data_inside_the_folder_is_found(tmp_path, secret):
    folder = tmp_path / "m"
    shutil.copy(secret, folder / "w.bin")
    (ref,) = scan_onnx(_external_model(folder, "w.bin")).refs
    assert (ref.tensor, ref.location, ref.offset, ref.length) == ("W", "w.bin", 0, 64)


@pytest.mark.parametrize("cut", [0, 100, 0.5, -10], ids=["empty", "header", "half", "tail"])
def test_truncated_onnx_is_refused_by_pcv_batch(tmp_path, tiny_dir, cut, capsys):
    data = (tiny_dir / "model.onnx").read_bytes()
    n = {0: 0, 100: 100, 0.5: len(data) // 2, -10: len(data) - 10}[cut]
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[:n])
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "x"}\n')
    assert main([str(src), "--model", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and ("empty" in err or "not a complete ONNX file" in err)


def test_export_records_a_digest_and_a_flipped_weight_byte_is_caught(tmp_path, tiny_dir):
    path = tiny_dir / "model.onnx"
    meta = scan_onnx(path).metadata
    assert meta[DIGEST_KEY] == graph_digest(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the weights: still valid protobuf
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupted or was edited"):
        OnnxClassifier(bad)
    OnnxClassifier(path)  # the intact file loads


def test_variants_carry_their_own_digest(tmp_path, tiny_dir):
    pytest.importorskip("onnxruntime.quantization")
    from pcv.export.variants import build_variant

    path = build_variant("int8", tiny_dir / "model.onnx", tmp_path / "m.int8.onnx").path
    assert scan_onnx(path).metadata[DIGEST_KEY] == graph_digest(path)
    OnnxClassifier(path)


def test_pickle_only_dir_is_refused_by_pcv_export(tmp_path, capsys):
    from conftest import save_pickle_only, tiny_model
    from pcv.export.cli import export_main

    save_pickle_only(tiny_model(), tmp_path / "m")
    assert export_main([str(tmp_path / "m"), str(tmp_path / "out.onnx")]) == 2
    assert "pickle" in capsys.readouterr().err and not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("field,value,match", [
    ("num_latents", 10**9, "num_latents"),
    ("d_model", -4, "d_model"),
    ("num_self_attends_per_block", "6", "num_self_attends_per_block"),
    ("d_latents", 60000, "parameters"),
    ("model_type", "bert", "model_type"),
], ids=["huge-latents", "negative", "string", "too-many-params", "not-perceiver"])
def test_absurd_configs_are_refused_before_allocation(tmp_path, field, value, match):
    from conftest import tiny_model
    from pcv.export.modeling import load_classifier

    d = tmp_path / "m"
    tiny_model().save_pretrained(d, safe_serialization=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    if field == "d_latents":
        cfg["num_self_attends_per_block"] = 26
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=match):
        load_classifier(str(d))


def test_external_data_format_round_trip_with_digest(tmp_path, monkeypatch, review_texts):
    """The >2 GB path on a tiny model: weights in OUT.data, digest over them, variants from it."""
    import pcv.export.onnx_export as ox
    from conftest import tiny_model
    from pcv.export.onnx_export import ExportConfig, export_onnx
    from pcv.export.variants import build_variant
    from pcv.runtime import PerceiverByteTokenizer

    monkeypatch.setattr(ox, "TWO_GB", 2**26 + 1)  # every model counts as "too big for one protobuf"
    out = tmp_path / "m" / "model.onnx"
    export_onnx(tiny_model(), out, ExportConfig())  # verification (torch vs ORT) included
    assert (out.parent / "model.onnx.data").is_file() and scan_onnx(out).refs
    enc = PerceiverByteTokenizer()(review_texts[:3], max_length=256, truncation=True, padding="longest")
    ref = OnnxClassifier(out).logits(enc.input_ids, enc.attention_mask)
    for kind in ("optimized", "fp16"):
        v = build_variant(kind, out, out.with_name(f"model.{kind}.onnx")).path
        assert scan_onnx(v).refs and scan_onnx(v).metadata[DIGEST_KEY] == graph_digest(v)
        assert np.abs(OnnxClassifier(v).logits(enc.input_ids, enc.attention_mask) - ref).max() < 1e-2
    data = bytearray((out.parent / "model.onnx.data").read_bytes())
    data[len(data) // 3] ^= 0x10  # a weight changed in the external file only
    (out.parent / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupted or was edited"):
        OnnxClassifier(out)
