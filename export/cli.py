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
