"""Variants of an exported fp32 graph: optimized (fusions), fp16, int8 (dynamic), int8-static (QDQ,
calibrated on real text), tensorrt (engine cache + shape profiles). One builder per kind, in a table.

Every variant records its kind and provenance in the ONNX metadata and is checked by the ONNX
checker; numerical parity with the torch model is pcv-check's job.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from pcv.runtime.errors import PcvError, ProviderError
from pcv.runtime.modelfile import file_sha256, scan_onnx
from pcv.runtime.session import INT8_BITS_KEY
from pcv.runtime.tokenizer import DEFAULT_MAX_LENGTH, PerceiverByteTokenizer

from .onnx_export import save_onnx, set_metadata

# Ops we count as evidence that a fusion happened (ORT contrib ops, or our own).
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
             "LayerNormalization", "EmbedLayerNormalization", "QAttention", "MatMulInteger", "DynamicQuantizeMatMul")
# Kept in float32 in the fp16 variant: overflow-prone normalisations, softmax and reductions.
FP16_KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Erf"]


@dataclass(frozen=True, kw_only=True)
class VariantConfig:
    calibration_texts: tuple[str, ...] = ()  # int8-static: real review text
    calibration_size: int = 128  # texts used for calibration
    calibration_batch: int = 8
    per_channel: bool = True  # int8-static: per-channel weight scales
    max_length: int | None = None  # calibration and tensorrt profiles; None or longer: the source's pcv.max_length
    batch_size: int = 64  # tensorrt profiles: the largest batch pcv-batch sends
    trt_fp16: bool = False
    trt_cache_dir: str | None = None
    int8_weights: str = "auto"  # int8: "8bit", "7bit", or "auto" (8-bit where this CPU has VNNI: int8_weight_bits)


@dataclass
class VariantReport:
    kind: str
    path: Path
    fused: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        fused = ", ".join(f"{k} {v}" for k, v in self.fused.items() if v) or "none"
        extra = f"; {'; '.join(self.notes)}" if self.notes else ""
        return f"{self.kind:12s} {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB) fused: {fused}{extra}"


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def finish_variant(proto: onnx.ModelProto, src: Path, out: Path, kind: str, extra: dict[str, str] | None = None) -> None:
    """Write a variant of src: contrib-op domains declared, kind and provenance in its metadata, the
    digest recorded (save_onnx), the ONNX checker passed."""
    domains = {n.domain for n in proto.graph.node if n.domain} - {o.domain for o in proto.opset_import}
    for d in sorted(domains):  # ORT contrib ops need their domain declared for the checker
        proto.opset_import.append(onnx.helper.make_opsetid(d, 1))
    meta = {"pcv.variant": kind, "pcv.variant_of": file_sha256(src)}
    meta.update(extra or {})
    set_metadata(proto, meta)
    save_onnx(proto, out)
    try:
        onnx.checker.check_model(str(out))
    except onnx.checker.ValidationError as e:
        raise PcvError(f"{out}: the {kind} graph fails the ONNX checker: {e}") from e


def _copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    set_metadata(dst, {p.key: p.value for p in src.metadata_props})


def build_optimized(src: Path, out: Path, cfg: VariantConfig) -> VariantReport:
    """Fuse attention, bias+GELU and residual+LayerNorm with ORT's transformer optimizer, then the
    cross-attentions with our own pass (export/fusion.py).

    ORT has no 'perceiver' model type; its BERT fusions match the latent self-attention blocks
    (same Q/K/V input and length). The encoder and decoder cross-attentions (Q from one tensor,
    K/V from another of another length) it leaves as loose nodes: we fuse those into
    MultiHeadAttention. We count the fused ops and refuse to call a graph optimized when nothing
    fused.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from .fusion import fuse_cross_attention

    base = onnx.load(str(src))
    before = op_counts(base)
    opts = FusionOptions("bert")
    opt = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, optimization_options=opts, opt_level=0)
    proto = opt.model
    fuse_cross_attention(proto)
    after = op_counts(proto)
    fused = {op: after[op] - before.get(op, 0) for op in FUSED_OPS if after[op] - before.get(op, 0) > 0}
    if not fused:
        raise PcvError(f"{src}: no fusion applied by onnxruntime's optimizer; not writing an 'optimized' variant")
    _copy_metadata(base, proto)
    finish_variant(proto, src, out, "optimized", {"pcv.fused": json.dumps(fused)})
    _verify_same(src, out, tolerance=1e-4)  # fusions must not change answers: padded rows included
    notes = [f"{len(base.graph.node)} -> {len(proto.graph.node)} nodes"]
    if after.get("Softmax", 0):
        notes.append(f"{after['Softmax']} softmax left unfused")
    return VariantReport("optimized", out, fused, notes)


def _verify_same(src: Path, out: Path, *, tolerance: float) -> None:
    """Run source and variant on random bytes with ragged padding; refuse the variant if they differ."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    ids = rng.integers(6, 262, (3, 37), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 20:] = 0  # padded rows exercise the attention masks the fusions rewrote
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    got = []
    for path in (src, out):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        got.append(sess.run(None, dict(zip(names, (ids, mask))))[0])
    if (diff := float(np.abs(got[0] - got[1]).max())) > tolerance:
        for f in (out, out.with_name(out.name + ".data")):
            f.unlink(missing_ok=True)
        raise PcvError(f"{out}: the variant's logits differ from {src} by {diff:.2e} (> {tolerance}); not keeping it")


def build_fp16(src: Path, out: Path, cfg: VariantConfig) -> VariantReport:
    """float16 weights and compute, float32 inputs/outputs; normalisations and softmax in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    base = onnx.load(str(src))
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = convert_float_to_float16(base, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    OnnxModel(proto).topological_sort()  # the converter appends its Cast nodes out of order
    _copy_metadata(base, proto)
    finish_variant(proto, src, out, "fp16")
    casts = op_counts(proto)["Cast"]
    return VariantReport("fp16", out, {}, [f"{casts} Cast nodes at fp16/fp32 borders", f"kept fp32: {', '.join(FP16_KEEP_FP32[:4])}, ..."])


def byte_side_matmuls(model: onnx.ModelProto) -> list[str]:
    """The encoder cross-attention's key and value projections: the only MatMuls that read the byte
    side (byte + position embeddings of every input token) rather than the latents."""
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)
            and any(f"/encoder/cross_attention/attention/self/{p}/" in n.name for p in ("key", "value"))]


def int8_weight_bits(choice: str, flags: list[str] | None = None, machine: str | None = None) -> tuple[int, str]:
    """The int8 variant's weight bits for `choice` and why: auto is 8 on a CPU whose int8 sums do not
    saturate (x86 with VNNI, or not x86), 7 on an x86 CPU without VNNI or whose flags are unknown."""
    from pcv.runtime.cpu import INT8_WEIGHTS, VNNI_FLAGS, cpu_flags, int8_saturates

    if choice not in INT8_WEIGHTS:
        raise PcvError(f"int8 weights {choice!r}: one of {', '.join(INT8_WEIGHTS)}")
    if choice != "auto":
        return int(choice[0]), f"--int8-weights {choice}"
    flags = cpu_flags() if flags is None else flags
    saturates = int8_saturates(flags, machine)
    if saturates is False:
        have = [f for f in VNNI_FLAGS if f in flags]
        return 8, f"this CPU has {', '.join(have)}" if have else "this CPU is not x86"
    return 7, "this CPU has no VNNI" if saturates else "this CPU's instruction sets are unknown"


def build_int8(src: Path, out: Path, cfg: VariantConfig) -> VariantReport:
    """Dynamic int8 quantization of the MatMul weights (activations quantized at run time), for CPU.

    Per-channel weight scales: per-tensor scales changed 0.75 % of the bundled model's labels on
    400 validation reviews, per-channel none, at the same speed (measured with pcv-check). The
    byte-side projections (byte_side_matmuls) stay float: their input, byte + position embeddings
    of up to 2,048 tokens, shares one dynamic scale per batch; quantized, they cost the 2.58M
    bundled model 0.56 pt on the 2,500 validation reviews (1.04 % of labels changed, over
    pcv-check's ±0.5 pt), float 0.04 pt (0.44 %), at ~7 % less speed (pcv-check, one run each).
    With 7-bit weights (below) quantizing them too no longer costs accuracy (88.96 % against
    88.76 %) but changes 1.80 % of labels against 0.64 % (pcv-check), and with 8-bit weights on a
    VNNI CPU it costs 0.32 pt and changes 0.48 % of labels against 0.20 % for ~2 % more speed
    (pcv-check; mean |Δlogit| 0.035 against 0.014), so they stay float.

    The encoder's key-padding bias is folded into its score MatMul first (fusion.py,
    fold_mask_into_scores, checked exact on padded rows): it removes a pass over the heads ×
    latents × bytes score map. Same answers on the 2,500 validation reviews (pcv-check: 90.12 %,
    99.80 % agreement, mean |Δlogit| 0.0142 either way), 116.8 against 103.1 ex/s in that run.

    7-bit weights (reduce_range): ONNX Runtime multiplies uint8 activations by int8 weights, and a CPU
    without VNNI (AVX2 only) sums pairs of those products in 16 bits, which saturate at full range.
    On such a CPU (an AVX2-only AMD EPYC), pcv-check on the 2,500 validation reviews (batches
    of 32): full-range weights moved the bundled model's logits by 0.092 on average (max 0.79), 7-bit
    weights by 0.020 (max 0.14); labels were level (99.48 / 99.36 % agreement, 88.80 / 88.76 %).
    A CPU with VNNI sums in 32 bits, and there full-range weights are the more exact ones: on an
    AVX-512 VNNI Intel Xeon, the same 2,500 reviews, mean |Δlogit| 0.0142 against 0.0184 and 99.80
    % label agreement against 99.56 % (90.12 / 89.96 %, fp32 90.08 %). So the weight range follows
    the CPU that exports (int8_weight_bits), is recorded as pcv.int8_weight_bits, and a model with
    8-bit weights says so when it is loaded on a CPU without VNNI."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .fusion import fold_mask_into_scores

    bits, why = int8_weight_bits(cfg.int8_weights)
    base = onnx.load(str(src))
    with tempfile.TemporaryDirectory() as tmp:
        folded_path, tmp_out = Path(tmp) / "folded.onnx", Path(tmp) / "q.onnx"
        folded = onnx.ModelProto()
        folded.CopyFrom(base)  # the source read once
        masks = fold_mask_into_scores(folded)
        save_onnx(folded, folded_path)
        try:
            _verify_same(src, folded_path, tolerance=1e-4)
        except Exception as e:  # a wrong answer, or a folded graph ONNX Runtime refuses: ours, not the model's
            raise PcvError(f"{src}: folding the key-padding bias into the scores failed ({e}); "
                           "please report it") from e
        quantize_dynamic(str(folded_path), str(tmp_out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                         per_channel=True, reduce_range=bits == 7, nodes_to_exclude=byte_side_matmuls(base))
        proto = onnx.load(str(tmp_out))
    _copy_metadata(base, proto)
    counts = op_counts(proto)
    fused = {op: counts[op] for op in ("DynamicQuantizeMatMul", "MatMulInteger", "QAttention") if counts[op]}
    if not fused:
        raise PcvError(f"{src}: dynamic quantization quantized nothing")
    finish_variant(proto, src, out, "int8", {INT8_BITS_KEY: str(bits)})
    weights = ("8-bit weights (" + why + "; on a CPU without VNNI, export with --int8-weights 7bit)" if bits == 8 else
               "7-bit weights (reduce_range: no saturation on CPUs without VNNI; " + why + ")")
    return VariantReport("int8", out, fused, [weights, f"{counts['MatMul']} MatMul left in float (the byte-side "
                                                       "key/value projections and the activation products)",
                                              f"key-padding bias folded into {masks} attention score MatMul"])


class _TextReader:
    """onnxruntime CalibrationDataReader over tokenized real reviews."""

    def __init__(self, texts: list[str], names: tuple[str, str], max_length: int, batch: int) -> None:
        tok = PerceiverByteTokenizer(model_max_length=max_length)
        self._batches: Iterator[dict[str, np.ndarray]] = iter([
            dict(zip(names, (e.input_ids, e.attention_mask)))
            for e in (tok(texts[i : i + batch], max_length=max_length, truncation=True, padding="longest")
                      for i in range(0, len(texts), batch))
        ])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - newer ORT versions call it
        pass


def build_int8_static(src: Path, out: Path, cfg: VariantConfig) -> VariantReport:
    """QDQ static int8 quantization of the weight MatMuls, calibrated on real text.

    MinMax calibration, per-channel int8 weights, asymmetric uint8 activations (post-GELU and
    post-softmax values are one-sided; a symmetric range wastes half of it). The attention
    products (Q·Kᵀ and softmax·V) stay float: both of their inputs are activations, and quantizing
    them changed 10 % of the bundled model's labels, against 0 % without them (measured with
    pcv-check on 400 validation reviews).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    texts = [t for t in cfg.calibration_texts if t][: cfg.calibration_size]
    if len(texts) < 8:
        raise PcvError("int8-static needs calibration text: pass --calibration FILE (a JSONL/CSV/TXT of real reviews)")
    base = onnx.load(str(src))
    names = tuple(i.name for i in base.graph.input)
    weights = {i.name for i in base.graph.initializer}
    act_products = [n.name for n in base.graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]
    # The decoder (one query over the latents, then the logits) stays float: quantized, its output
    # is clipped to the calibration range, so a review more confident than any calibration text got
    # its logits cut (|Δ| 0.6 on a fixture review). 7 of the bundled model's 49 MatMuls.
    decoder = [n.name for n in base.graph.node if n.op_type == "MatMul" and "/decoder/" in n.name and n.name not in act_products]
    byte_side = byte_side_matmuls(base)  # as in build_int8
    reader = _TextReader(texts, names, cfg.max_length, cfg.calibration_batch)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / "q.onnx"
        quantize_static(str(src), str(tmp_out), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        nodes_to_exclude=act_products + decoder + byte_side, per_channel=cfg.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(tmp_out))
    _copy_metadata(base, proto)
    counts = op_counts(proto)
    if not counts["QuantizeLinear"]:
        raise PcvError(f"{src}: static quantization inserted no QuantizeLinear nodes")
    finish_variant(proto, src, out, "int8-static", {"pcv.calibration_texts": str(len(texts))})
    return VariantReport("int8-static", out, {"QuantizeLinear": counts["QuantizeLinear"], "DequantizeLinear": counts["DequantizeLinear"]},
                         [f"calibrated on {len(texts)} texts", f"per-channel={cfg.per_channel}",
                          f"{len(act_products)} activation x activation, {len(decoder)} decoder and {len(byte_side)} byte-side "
                          "MatMuls left in float"])


def trt_profiles(max_length: int, batch_size: int, names: tuple[str, str] = ("input_ids", "attention_mask")) -> dict[str, str]:
    """TensorRT optimization profile (min/opt/max shapes) covering every batch pcv-batch can send:
    1..batch_size rows, 2..max_length tokens; opt at a full batch of median IMDB length (~1 kB)."""
    opt_len = min(max_length, 1024)

    def shapes(b: int, t: int) -> str:
        return ",".join(f"{n}:{b}x{t}" for n in names)

    return {"trt_profile_min_shapes": shapes(1, 2), "trt_profile_opt_shapes": shapes(batch_size, opt_len),
            "trt_profile_max_shapes": shapes(batch_size, max_length)}


def trt_provider_options(max_length: int, batch_size: int, *, fp16: bool, cache_dir: str,
                         names: tuple[str, str] = ("input_ids", "attention_mask")) -> dict[str, str | bool]:
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir, "trt_fp16_enable": fp16,
            "trt_timing_cache_enable": True, **trt_profiles(max_length, batch_size, names)}


def build_tensorrt(src: Path, out: Path, cfg: VariantConfig) -> VariantReport:
    """An fp32 graph tagged for TensorRT, with its profiles in the metadata; the engine is built
    (and cached) here once, which needs a GPU with TensorRT."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise ProviderError("the tensorrt variant needs onnxruntime-gpu with TensorRT libraries and an NVIDIA GPU; "
                            f"this machine has {ort.get_available_providers()}")
    base = onnx.load(str(src))
    names = tuple(i.name for i in base.graph.input)
    cache = cfg.trt_cache_dir or str(out.parent / (out.stem + ".trt_cache"))
    opts = trt_provider_options(cfg.max_length, cfg.batch_size, fp16=cfg.trt_fp16, cache_dir=cache, names=names)  # type: ignore[arg-type]
    finish_variant(base, src, out, "tensorrt", {"pcv.trt_options": json.dumps(opts)})
    sess = ort.InferenceSession(str(out), providers=[("TensorrtExecutionProvider", opts), "CUDAExecutionProvider"])
    ids = np.full((1, 16), 10, dtype=np.int64)
    sess.run(None, dict(zip(names, (ids, np.ones_like(ids)))))  # builds and caches the engine
    return VariantReport("tensorrt", out, {}, [f"engine cache {cache}", f"fp16={cfg.trt_fp16}"])


BUILDERS: dict[str, Callable[[Path, Path, VariantConfig], VariantReport]] = {
    "optimized": build_optimized,
    "fp16": build_fp16,
    "int8": build_int8,
    "int8-static": build_int8_static,
    "tensorrt": build_tensorrt,
}
VARIANTS = ("fp32", *BUILDERS)


def variant_path(out: Path, kind: str) -> Path:
    """out.onnx -> out.onnx for fp32, out.<kind>.onnx otherwise."""
    return out if kind == "fp32" else out.with_name(f"{out.stem}.{kind}.onnx")


def build_variant(kind: str, src: Path, out: Path, cfg: VariantConfig = VariantConfig()) -> VariantReport:
    if kind not in BUILDERS:
        raise PcvError(f"variant {kind!r} is unknown: use one of {', '.join(VARIANTS)}")
    longest = int(scan_onnx(src).metadata.get("pcv.max_length", DEFAULT_MAX_LENGTH))
    if cfg.max_length is None or cfg.max_length > longest:
        cfg = dataclasses.replace(cfg, max_length=longest)  # no calibration batch or profile beyond the positions
    return BUILDERS[kind](Path(src), Path(out), cfg)
