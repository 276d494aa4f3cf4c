"""Console scripts of the export side: pcv-export and pcv-check."""

from __future__ import annotations

import argparse

from pcv.runtime.console import console_script, show_defaults
from pcv.runtime.console import fail as _fail
from pcv.runtime.errors import PcvError

# Real-text samples for export verification when no --verify-data is given: English reviews of
# several lengths, non-ASCII, emoji and a literal special token.
SAMPLE_TEXTS = (
    "A wonderful, warm film. The cast is superb and the ending made me cry. Highly recommended!",
    "Terrible. The plot makes no sense, the dialogue is wooden and the effects look cheap. " * 6,
    "Ein großartiger Film – die Musik, die Bilder… einfach wunderschön. 😀👍",
    "映画はとても良かったです。俳優の演技が素晴らしい。",
    "I expected more [SEP] from this director; the second half drags and the twist is obvious. " * 30,
    "",
)


@console_script("pcv-export")
def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pcv-export",
        description="Export a PerceiverForSequenceClassification to ONNX (dynamic batch and seq) and verify it.",
        epilog="example: pcv-export models/imdb-perceiver out/model.onnx\n"
        "         pcv-export deepmind/language-perceiver lp.onnx   (needs the Hub, or a local copy)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="HF model dir (config.json + model.safetensors) or hub id")
    p.add_argument("out", help="output .onnx path")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--max-length", type=int, help="longest input in tokens (default: the model's positions)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading a pickle (.bin) checkpoint; only for files you trust")
    p.add_argument("--no-verify", action="store_true", help="skip the torch-vs-onnxruntime comparison")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max |Δlogit| accepted by verification, relative: |Δ| <= T * max(1, max |logit|)")
    p.add_argument("--verify-data", help="JSONL/CSV/TXT of real texts for verification (first 32 used)")
    p.add_argument("--text-field", default="text")
    from .variants import VARIANTS

    p.add_argument("--variant", nargs="+", default=["fp32"], metavar="KIND", choices=VARIANTS,
                   help=f"{' '.join(VARIANTS)} (several allowed; default: fp32); "
                   "OUT.onnx is always the fp32 graph, others are written as OUT.<kind>.onnx")
    p.add_argument("--calibration", help="int8-static: JSONL/CSV/TXT of real review text for calibration")
    p.add_argument("--calibration-size", type=int, default=128, help="int8-static: texts used (default 128)")
    from pcv.runtime.cpu import INT8_WEIGHTS

    p.add_argument("--int8-weights", choices=INT8_WEIGHTS, default="auto",
                   help="int8: full-range 8-bit weights, or 7-bit ones that cannot saturate ONNX Runtime's int8 sums "
                        "on x86 CPUs without VNNI (AVX2 only); auto: 8-bit when the exporting CPU has VNNI "
                        "(avx512_vnni, avx_vnni, amx_int8) or is not x86, else 7-bit. Export for the CPU that runs it")
    p.add_argument("--trt-fp16", action="store_true", help="tensorrt: build fp16 engines")
    p.add_argument("--batch-size", type=int, default=64, help="tensorrt: largest batch in the shape profile")
    a = show_defaults(p).parse_args(argv)
    if a.int8_weights != "auto" and "int8" not in a.variant:
        p.error(f"--int8-weights {a.int8_weights} is for --variant int8")
    try:
        from pcv.runtime import ReaderConfig, read_records

        from .modeling import load_classifier
        from .onnx_export import ExportConfig, export_onnx

        texts: tuple[str, ...] = SAMPLE_TEXTS
        if a.verify_data:
            recs = (r.text for r in read_records(a.verify_data, ReaderConfig(text_field=a.text_field, id_field=None)))
            texts = tuple(t for t, _ in zip((t for t in recs if t is not None), range(32)))
        model = load_classifier(a.model, allow_pickle=a.allow_pickle)
        report = export_onnx(model, a.out, ExportConfig(opset=a.opset, max_length=a.max_length, verify=not a.no_verify,
                                                        tolerance=a.tolerance, verify_texts=texts))
        if report is not None:
            print(report.format())
        print(f"wrote {a.out} (fp32, opset {a.opset}){'' if report else ', not verified'}")
        from pathlib import Path

        from .variants import VariantConfig, build_variant, variant_path

        calib: tuple[str, ...] = ()
        if "int8-static" in a.variant and a.calibration:
            rc = ReaderConfig(text_field=a.text_field, id_field=None)
            calib = tuple(t for t, _ in zip((r.text for r in read_records(a.calibration, rc) if r.text), range(a.calibration_size)))
        vcfg = VariantConfig(calibration_texts=calib, calibration_size=a.calibration_size, trt_fp16=a.trt_fp16,
                             batch_size=a.batch_size, int8_weights=a.int8_weights)  # max_length: the exported model's pcv.max_length
        for kind in dict.fromkeys(k for k in a.variant if k != "fp32"):
            print(build_variant(kind, Path(a.out), variant_path(Path(a.out), kind), vcfg).format())
    except PcvError as e:
        return _fail(str(e))
    return 0


@console_script("pcv-check")
def check_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pcv-check",
        description="Accuracy parity: run the torch model and every ONNX variant on the same labelled texts.",
        epilog="example: pcv-check models/imdb-perceiver out/m.onnx out/m.int8.onnx --data val.jsonl --limit 500\n"
        "exit status: 0 all variants within tolerance, 1 a variant broke its tolerance, 2 usage error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="HF model dir (the torch reference)")
    p.add_argument("variants", nargs="+", help="ONNX files to check")
    p.add_argument("--data", required=True, help="labelled JSONL/CSV (labels as ids or names)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--limit", type=int, help="use the first N records")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    p.add_argument("--json", help="write the table as JSON here")
    p.add_argument("--max-abs-logit", type=float, help="override every variant's max |Δlogit| tolerance")
    p.add_argument("--min-agreement", type=float, help="override every variant's label agreement tolerance (0-1)")
    p.add_argument("--max-acc-drop", type=float, help="override every variant's accuracy drop tolerance (points)")
    p.add_argument("--allow-pickle", action="store_true")
    a = show_defaults(p).parse_args(argv)
    try:
        from dataclasses import replace
        from pathlib import Path

        from pcv.runtime.errors import ModelError

        from .check import TOLERANCES, Tolerance, compare, format_table, labelled_texts, onnx_logits, rows_json, torch_logits
        from .modeling import load_classifier

        model = load_classifier(a.model, allow_pickle=a.allow_pickle)
        texts, labels = labelled_texts(model, a.data, text_field=a.text_field, label_field=a.label_field, limit=a.limit)
        max_length = int(model.config.max_position_embeddings)
        ref, speed = torch_logits(model, texts, max_length=max_length, batch_size=a.batch_size)
        names = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
        rows = [compare(Path(a.model).name, "torch", ref, ref, labels, speed, 0.0, Tolerance(), names)]
        for path in map(Path, a.variants):
            logits, vspeed, variant = onnx_logits(path, texts, max_length=max_length, batch_size=a.batch_size, provider=a.provider)
            over = {k: v for k, v in (("max_abs_logit", a.max_abs_logit), ("min_agreement", a.min_agreement),
                                       ("max_acc_drop", a.max_acc_drop)) if v is not None}
            if variant not in TOLERANCES and not over:
                raise ModelError(f"{path}: variant kind {variant!r} (its pcv.variant metadata) has no tolerances; known "
                                 f"kinds: {', '.join(TOLERANCES)}; set them with --max-abs-logit / --min-agreement / "
                                 f"--max-acc-drop")
            tol = replace(TOLERANCES.get(variant, Tolerance()), **over)
            rows.append(compare(path.name, variant, logits, ref, labels, vspeed, path.stat().st_size / 2**20, tol, names))
    except PcvError as e:
        return _fail(str(e))
    print(format_table(rows, len(texts)))
    if a.json:
        Path(a.json).write_text(rows_json(rows))
    return 0 if all(r.passed for r in rows) else 1
