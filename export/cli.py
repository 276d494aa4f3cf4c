"""Console scripts of the export side: pcv-train and pcv-export."""

from __future__ import annotations

import argparse
import sys

from pcv.runtime.errors import PcvError


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def train_main(argv: list[str] | None = None) -> int:
    from .modeling import ModelSize

    p = argparse.ArgumentParser(
        prog="pcv-train",
        description="Fine-tune or train a Perceiver byte-level classifier on labelled JSONL/CSV.",
        epilog="example: pcv-train train.jsonl.gz --out models/mine --epochs 3 --lr 5e-4\n"
        "         pcv-train train.jsonl --init-from deepmind/language-perceiver --out ft --lr 5e-5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="labelled JSONL or CSV files (.gz ok)")
    p.add_argument("--out", required=True, help="output model dir; rerun the same command to resume")
    p.add_argument("--init-from", help="pretrained HF dir or hub id (default: a fresh model sized by the flags below)")
    p.add_argument("--init", choices=["patch", "default"], default="patch", help="initialisation of a fresh model")
    p.add_argument("--num-latents", type=int, default=256)
    p.add_argument("--d-latents", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--self-heads", type=int, default=8)
    p.add_argument("--cross-heads", type=int, default=8)
    p.add_argument("--cross-widening", type=int, default=1)
    p.add_argument("--self-widening", type=int, default=1)
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--labels", default="neg,pos", help="label names for ids 0,1,... (default: neg,pos)")
    p.add_argument("--unlabelled", nargs="*", default=[], help="text-only files for distillation")
    p.add_argument("--teacher", choices=["none", "ngram"], default="none")
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-limit", type=int)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="use only the first N labelled records")
    a = p.parse_args(argv)
    from .train import TrainConfig, train

    cfg = TrainConfig(
        data=tuple(a.data), out=a.out, init_from=a.init_from, init=a.init,
        size=ModelSize(num_latents=a.num_latents, d_latents=a.d_latents, d_model=a.d_model, num_layers=a.num_layers,
                       self_heads=a.self_heads, cross_heads=a.cross_heads, max_length=a.max_length,
                       cross_widening=a.cross_widening, self_widening=a.self_widening),
        text_field=a.text_field, label_field=a.label_field, labels=tuple(a.labels.split(",")),
        unlabelled=tuple(a.unlabelled), teacher=a.teacher, distill_weight=a.distill_weight,
        max_length=a.max_length, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps, epochs=a.epochs,
        max_minutes=a.max_minutes, val_fraction=a.val_fraction, val_limit=a.val_limit, eval_every=a.eval_every,
        checkpoint_every=a.checkpoint_every, seed=a.seed, device=a.device, limit=a.limit,
    )
    try:
        m = train(cfg)
    except PcvError as e:
        return _fail(str(e))
    print(f"best validation accuracy {m['best_val_accuracy']:.4f} after {m['steps']} steps; model in {a.out}")
    return 0


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
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |Δlogit| accepted by verification")
    p.add_argument("--verify-data", help="JSONL/CSV/TXT of real texts for verification (first 32 used)")
    p.add_argument("--text-field", default="text")
    a = p.parse_args(argv)
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
    except PcvError as e:
        return _fail(str(e))
    if report is not None:
        print(report.format())
    print(f"wrote {a.out} (opset {a.opset}){'' if report else ', not verified'}")
    return 0
