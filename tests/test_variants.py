"""Variants (optimized, fp16, int8, int8-static, tensorrt options) and pcv-check parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_model
from pcv.export.check import TOLERANCES, compare
from pcv.export.cli import check_main, export_main
from pcv.export.onnx_export import ExportConfig, export_onnx
from pcv.export.variants import VariantConfig, build_variant, byte_side_matmuls, trt_profiles, trt_provider_options, variant_path
from pcv.runtime import PcvError, PerceiverByteTokenizer, ProviderError
from pcv.runtime.session import OnnxClassifier


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("var")
    m = tiny_model(num_latents=16, d=64, layers=2, max_length=512)
    export_onnx(m, d / "m.onnx", ExportConfig(verify=False))
    return m, d / "m.onnx"


@pytest.mark.parametrize("batch", [1, 4], ids=["b1", "b4"])
@pytest.mark.parametrize("seq", [16, 200, 512], ids=["s16", "s200", "s512"])
@pytest.mark.parametrize("kind,tol", [("optimized", 1e-4), ("fp16", 1e-2), ("int8", 0.15), ("int8-static", 0.5)])
def test_variant_parity(src, review_texts, kind, tol, batch, seq):
    model, path = src
    out = variant_path(path, kind)
    if not out.exists():
        rep = build_variant(kind, path, out, VariantConfig(calibration_texts=tuple(review_texts[:32]), max_length=512))
        assert rep.path == out
    clf = OnnxClassifier(out)
    assert clf.info.variant == kind
    enc = PerceiverByteTokenizer()(review_texts[:batch], max_length=seq, truncation=True, padding="max_length")
    got = clf.logits(enc.input_ids, enc.attention_mask)
    with torch.no_grad():
        ref = model(inputs=torch.from_numpy(enc.input_ids), attention_mask=torch.from_numpy(enc.attention_mask)).logits.numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tol


@pytest.mark.parametrize("kind", ["int8", "int8-static"])
def test_int8_kinds_leave_the_byte_side_projections_float(src, review_texts, kind):
    """The encoder cross-attention's key/value MatMuls read byte + position embeddings of every
    token; both int8 kinds keep them float (quantized, they cost the bundled model 0.56 pt)."""
    _, path = src
    out = variant_path(path, kind)
    if not out.exists():
        build_variant(kind, path, out, VariantConfig(calibration_texts=tuple(review_texts[:32]), max_length=512))
    byte_side = byte_side_matmuls(onnx.load(str(path)))
    assert len(byte_side) == 2 and all("/encoder/cross_attention/" in n for n in byte_side)
    q = onnx.load(str(out)).graph
    float_weights = {i.name for i in q.initializer if i.data_type == onnx.TensorProto.FLOAT}
    kept = {n.name: n for n in q.node}
    for name in byte_side:  # still a MatMul, fed its float weight directly (no DequantizeLinear in between)
        assert kept[name].op_type == "MatMul" and any(i in float_weights for i in kept[name].input)
    quantized = {"MatMulInteger", "DynamicQuantizeMatMul"} if kind == "int8" else {"DequantizeLinear"}
    assert any(n.op_type in quantized for n in q.node)  # and the rest was quantized


def test_optimized_reports_fusions(src):
    _, path = src
    rep = build_variant("optimized", path, variant_path(path, "optimized"))
    assert rep.fused.get("Attention", 0) == 2  # the two latent self-attention layers (ORT's fusion)
    assert rep.fused.get("MultiHeadAttention", 0) == 2  # encoder and decoder cross-attention (ours)
    assert "Softmax" not in {n.op_type for n in onnx.load(str(rep.path)).graph.node}
    assert rep.fused.get("SkipLayerNormalization", 0) > 0
    meta = {p.key: p.value for p in onnx.load(str(rep.path)).metadata_props}
    assert json.loads(meta["pcv.fused"]) == rep.fused and meta["pcv.variant"] == "optimized"
    assert len(meta["pcv.variant_of"]) == 64


def test_int8_static_needs_calibration_text(src):
    _, path = src
    with pytest.raises(PcvError, match="calibration"):
        build_variant("int8-static", path, variant_path(path, "int8-static-x"))
    with pytest.raises(PcvError, match="unknown"):
        build_variant("int4", path, path)


def test_tensorrt_without_gpu_fails_clearly_and_profiles_cover_batches(src):
    _, path = src
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderError, match="TensorRT"):
            build_variant("tensorrt", path, variant_path(path, "tensorrt"))
    prof = trt_profiles(2048, 64)
    assert prof["trt_profile_min_shapes"] == "input_ids:1x2,attention_mask:1x2"
    assert prof["trt_profile_max_shapes"] == "input_ids:64x2048,attention_mask:64x2048"
    opts = trt_provider_options(512, 8, fp16=True, cache_dir="/tmp/c")
    assert opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"] is True
    assert opts["trt_profile_opt_shapes"] == "input_ids:8x512,attention_mask:8x512"


def test_check_tolerances():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 0, 1])
    ok = compare("a", "fp32", ref + 1e-6, ref, labels, 1.0, 1.0, TOLERANCES["fp32"])
    assert ok.passed and ok.agreement == 1.0
    flipped = ref.copy()
    flipped[0] = [0.0, 1.0]
    bad = compare("b", "int8", flipped, ref, labels, 1.0, 1.0, TOLERANCES["int8"])
    assert not bad.passed and "accuracy -25.00 pt" in bad.failures[0]


def test_export_variants_and_pcv_check_cli(tmp_path, tiny_dir, reviews, capsys):
    data = tmp_path / "lab.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": ["neg", "pos"][r["label"]]}) + "\n" for r in reviews[:40]))
    out = tmp_path / "m.onnx"
    assert export_main([str(tiny_dir), str(out), "--variant", "fp32", "optimized", "int8", "fp16"]) == 0
    assert all(variant_path(out, k).is_file() for k in ("optimized", "int8", "fp16"))
    capsys.readouterr()
    js = tmp_path / "check.json"
    rc = check_main([str(tiny_dir), str(out), str(variant_path(out, "optimized")), str(variant_path(out, "fp16")),
                     "--data", str(data), "--json", str(js)])
    table = capsys.readouterr().out
    assert rc == 0, table
    rows = json.loads(js.read_text())
    assert [r["variant"] for r in rows] == ["torch", "fp32", "optimized", "fp16"]
    assert rows[1]["agreement"] == 1.0 and rows[1]["max_abs_logit"] <= 1e-4
    assert set(rows[1]["per_class"]) == {"neg", "pos"} and "per-class F1" in table
    # an impossible tolerance makes the check fail with exit 1
    assert check_main([str(tiny_dir), str(out), "--data", str(data), "--max-abs-logit", "0"]) == 1
    # a variant of a kind pcv-check has no tolerances for is refused, unless they are given
    import onnx

    weird = tmp_path / "weird.onnx"
    proto = onnx.load(str(out))
    next(p for p in proto.metadata_props if p.key == "pcv.variant").value = "int4"
    onnx.save(proto, str(weird))
    capsys.readouterr()
    assert check_main([str(tiny_dir), str(weird), "--data", str(data)]) == 2
    assert "variant kind 'int4'" in capsys.readouterr().err
    assert check_main([str(tiny_dir), str(weird), "--data", str(data), "--max-abs-logit", "1e-4"]) == 0


def test_a_fusion_that_changes_answers_is_refused(src, monkeypatch, tmp_path):
    import pcv.export.fusion as fusion

    real = fusion.fuse_cross_attention

    def broken(model):
        n = real(model)
        for node in model.graph.node:
            if node.op_type == "MultiHeadAttention":
                for a in node.attribute:
                    if a.name == "scale":
                        a.f *= 3.0  # a wrong softmax temperature
        return n

    monkeypatch.setattr(fusion, "fuse_cross_attention", broken)
    _, path = src
    out = tmp_path / "m.optimized.onnx"
    with pytest.raises(PcvError, match="differ"):
        build_variant("optimized", path, out)
    assert not out.exists()


@pytest.mark.parametrize("qk,v", [(None, None), (16, 32)], ids=["default-channels", "qk16-v32"])
def test_cross_attention_fusion_is_exact_with_padding(tmp_path, review_texts, qk, v):
    """Our pass runs on ORT's optimized graph (its Reshape shapes are constants by then)."""
    m = tiny_model(num_latents=8, d=32, layers=1, max_length=128, qk_channels=qk, v_channels=v)
    path = tmp_path / "m.onnx"
    export_onnx(m, path, ExportConfig(verify=False))
    rep = build_variant("optimized", path, variant_path(path, "optimized"))
    assert rep.fused.get("MultiHeadAttention") == 2  # encoder cross-attention + classification decoder
    enc = PerceiverByteTokenizer()(review_texts[:4], max_length=128, truncation=True, padding="max_length")
    enc.attention_mask[1, 10:] = 0  # ragged padding through the key_padding_mask
    enc.input_ids[1, 10:] = 0
    outs = [OnnxClassifier(p).logits(enc.input_ids, enc.attention_mask) for p in (path, rep.path)]
    assert np.abs(outs[0] - outs[1]).max() < 1e-5


@pytest.mark.parametrize("qk,v", [(None, None), (16, 32)], ids=["default-channels", "qk16-v32"])
def test_mask_fold_is_exact_with_padding(tmp_path, review_texts, qk, v):
    """The key-padding bias carried by the scores' MatMul gives the graph's answers, padded rows too."""
    from pcv.export.fusion import fold_mask_into_scores
    from pcv.export.onnx_export import save_onnx

    m = tiny_model(num_latents=8, d=32, layers=1, max_length=128, qk_channels=qk, v_channels=v)
    path, folded_path = tmp_path / "m.onnx", tmp_path / "folded.onnx"
    export_onnx(m, path, ExportConfig(verify=False))
    folded = onnx.load(str(path))
    assert fold_mask_into_scores(folded) == 1  # the encoder cross-attention; the others have no mask
    save_onnx(folded, folded_path)
    producer = {o: n for n in folded.graph.node for o in n.output}
    assert all(producer[sm.input[0]].op_type == "Div" for sm in folded.graph.node if sm.op_type == "Softmax")
    enc = PerceiverByteTokenizer()(review_texts[:4], max_length=128, truncation=True, padding="max_length")
    enc.attention_mask[1, 10:] = 0
    enc.input_ids[1, 10:] = 0
    outs = [OnnxClassifier(p).logits(enc.input_ids, enc.attention_mask) for p in (path, folded_path)]
    assert np.abs(outs[0] - outs[1]).max() < 1e-5
    with torch.no_grad():  # the padded row is the row of its unpadded text
        alone = m(inputs=torch.from_numpy(enc.input_ids[1:2, :10])).logits.numpy()
    assert np.abs(outs[1][1] - alone[0]).max() < 1e-4


def test_int8_carries_the_mask_in_the_scores(src, review_texts):
    _, path = src
    out = variant_path(path, "int8")
    if not out.exists():
        build_variant("int8", path, out)
    g = onnx.load(str(out)).graph
    assert sum(n.name.endswith("_masked") and n.op_type == "MatMul" for n in g.node) == 1


def test_the_fold_leaves_soft_biases_and_old_opsets_alone(tmp_path, review_texts):
    from pcv.export.fusion import fold_mask_into_scores

    m = tiny_model(num_latents=8, d=32, layers=1, max_length=128)
    path = tmp_path / "m.onnx"
    export_onnx(m, path, ExportConfig(verify=False))
    soft = onnx.load(str(path))
    for init in soft.graph.initializer:  # the bias's dtype-min factor -> -10: a soft bias, not a mask
        value = onnx.numpy_helper.to_array(init)
        if value.size == 1 and value.dtype == np.float32 and value.item() < -1e30:
            init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(-10.0, np.float32).reshape(value.shape), init.name))
    for node in soft.graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.t.data_type == onnx.TensorProto.FLOAT:
                value = onnx.numpy_helper.to_array(a.t)
                if value.size == 1 and value.item() < -1e30:
                    a.t.CopyFrom(onnx.numpy_helper.from_array(np.asarray(-10.0, np.float32).reshape(value.shape)))
    assert fold_mask_into_scores(soft) == 0
    old = tmp_path / "m12.onnx"
    export_onnx(m, old, ExportConfig(verify=False, opset=12))
    assert fold_mask_into_scores(onnx.load(str(old))) == 0
    rep = build_variant("int8", old, variant_path(old, "int8"))  # still builds, unfolded
    assert "folded into 0" in rep.format()
    enc = PerceiverByteTokenizer()(review_texts[:2], max_length=128, truncation=True, padding="max_length")
    assert OnnxClassifier(rep.path).logits(enc.input_ids, enc.attention_mask).shape == (2, 2)


def test_a_mask_fold_that_changes_answers_is_refused(src, monkeypatch, tmp_path):
    import pcv.export.fusion as fusion

    monkeypatch.setattr(fusion, "FOLDED_MASK", 0.0)  # padded keys no longer masked
    _, path = src
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(PcvError, match="key-padding bias"):
        build_variant("int8", path, out)
    assert not out.exists()


def test_calibration_stays_within_the_models_positions(src, review_texts, tmp_path):
    # Review texts longer than the model's positions must not reach ORT as longer calibration
    # batches (ORT: "indices element out of data bounds"); VariantConfig's max_length defaults to
    # the source's pcv.max_length (it once defaulted to 2,048).
    _, path = src  # 512 positions
    assert max(len(t.encode()) for t in review_texts[:16]) > 512
    out = tmp_path / "m.int8-static.onnx"
    rep = build_variant("int8-static", path, out, VariantConfig(calibration_texts=tuple(review_texts[:16])))
    assert out.is_file() and rep.kind == "int8-static"


@pytest.mark.parametrize("flags,machine,bits", [
    (["avx2", "avx512_vnni", "avx512f"], "x86_64", 8),  # VNNI: 32-bit sums, full-range weights
    (["avx2", "avx_vnni"], "x86_64", 8),
    (["amx_int8", "avx2"], "AMD64", 8),
    (["avx2", "fma"], "x86_64", 7),  # AVX2 only: 16-bit pair sums saturate on full-range weights
    ([], "x86_64", 7),  # unknown: the weights that cannot saturate
    ([], "aarch64", 8),  # not x86: no such saturation
])
def test_int8_weight_bits_follow_the_exporting_cpu(flags, machine, bits):
    from pcv.export.variants import int8_weight_bits

    got, why = int8_weight_bits("auto", flags, machine)
    assert got == bits and why
    assert int8_weight_bits("7bit", flags, machine)[0] == 7 and int8_weight_bits("8bit", flags, machine)[0] == 8
    with pytest.raises(PcvError, match="int8 weights"):
        int8_weight_bits("6bit", flags, machine)


def test_int8_weights_are_recorded_and_a_saturating_cpu_is_warned_once(src, tmp_path, monkeypatch, capsys):
    from pcv.runtime import cpu, session

    _, path = src
    meta = {}
    for choice in ("7bit", "8bit"):
        out = tmp_path / f"m.{choice}.onnx"
        rep = build_variant("int8", path, out, VariantConfig(int8_weights=choice))
        assert f"{choice[0]}-bit weights" in rep.format()
        meta[choice] = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert meta[choice]["pcv.int8_weight_bits"] == choice[0]
    # 7-bit weights (reduce_range) quantize to 7 bits: no weight past ±64
    q7 = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "m.7bit.onnx")).graph.initializer
          if t.data_type == onnx.TensorProto.INT8 and t.dims]
    q8 = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "m.8bit.onnx")).graph.initializer
          if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert max(np.abs(a.astype(int)).max() for a in q7) <= 64 < max(np.abs(a.astype(int)).max() for a in q8)
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": ["avx2", "fma"])
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(session, "_WARNED", set())
    capsys.readouterr()
    OnnxClassifier(tmp_path / "m.7bit.onnx")
    assert "VNNI" not in capsys.readouterr().err  # 7-bit weights cannot saturate
    for _ in range(2):  # a process that opens the model twice (pcv-bench, pcv-check): said once
        OnnxClassifier(tmp_path / "m.8bit.onnx")
    err = capsys.readouterr().err
    assert err.count("full-range 8-bit int8 weights") == 1 and "--int8-weights 7bit" in err
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": ["avx2", "avx512_vnni"])
    monkeypatch.setattr(session, "_WARNED", set())
    OnnxClassifier(tmp_path / "m.8bit.onnx")
    assert "VNNI" not in capsys.readouterr().err


def test_cpu_flags_reads_the_flags_line(tmp_path):
    from pcv.runtime.cpu import cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma avx512_vnni ht\n")
    assert cpu_flags(str(info)) == ["avx2", "avx512_vnni", "fma", "sse4_2"]
    assert cpu_flags(str(tmp_path / "none")) == []
