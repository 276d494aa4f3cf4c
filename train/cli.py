"""Console scripts of the training side: pcv-train, pcv-pretrain and pcv-soup."""

from __future__ import annotations

import argparse

from pcv.runtime.console import console_script, show_defaults
from pcv.runtime.console import fail as _fail
from pcv.runtime.errors import PcvError

# Size flags of a fresh model (pcv-train, pcv-pretrain) -> ModelSize fields; unset ones come from --size.
_SIZE_FLAGS = ("num_latents", "d_latents", "d_model", "num_layers", "self_heads", "cross_heads", "cross_widening",
               "self_widening", "qk_channels", "v_channels")


def _add_size_flags(p: argparse.ArgumentParser, default_size: str) -> None:
    from pcv.export import SIZE_PRESETS

    sizes = "; ".join(f"{name}: {s.num_latents} latents x {s.d_latents}, d_model {s.d_model}, {s.num_layers} layers, "
                      f"{s.max_length} bytes" for name, s in SIZE_PRESETS.items())
    p.add_argument("--size", choices=list(SIZE_PRESETS), default=default_size,
                   help=f"a fresh model's size ({sizes}); the flags below change single fields")
    for field in _SIZE_FLAGS:
        p.add_argument("--" + field.replace("_", "-"), type=int, help="(default: from --size)")


def _size(a: argparse.Namespace):
    """The fresh model's size: the preset with the flags given, checked (None and a message when it cannot be built)."""
    from pcv.export import size_problem, sized

    size = sized(a.size, max_length=a.max_length, **{f: getattr(a, f) for f in _SIZE_FLAGS})
    return size, size_problem(size, patch_init=a.init == "patch")


def _add_run_flags(p: argparse.ArgumentParser, *, lr: float | None, warmup: int | None, epochs: float | None,
                   eval_every: int, limit_help: str, max_length: int | None = 2048) -> None:
    """The step-loop flags pcv-train and pcv-pretrain share (their defaults differ)."""
    p.add_argument("--max-length", type=int, default=max_length,
                   help=None if max_length else "longest input in tokens (default: --size's for a fresh model, the "
                        "model's positions with --init-from; more than those extends them)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr,
                   help=None if lr else "peak learning rate (default: 5e-5 with --init-from, the reference fine-tuning "
                        "recipe; 1e-3 for a fresh model)")
    p.add_argument("--warmup-steps", type=int, default=warmup,
                   help=None if warmup else "linear warm-up steps (default: --warmup-fraction of the run)")
    if warmup is None:
        p.add_argument("--warmup-fraction", type=float, default=0.05,
                       help="warm-up as a share of the planned steps, or of --max-minutes when time-boxed")
    p.add_argument("--epochs", type=float, default=epochs,
                   help=None if epochs else "passes over the data (default: 3 with --init-from, 10 for a fresh "
                        "model; with --max-minutes, as many as the time allows)")
    p.add_argument("--max-minutes", type=float, help="time-box the run; the schedule then follows the clock")
    p.add_argument("--eval-every", type=int, default=eval_every)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="train in fp32 (default: bf16 autocast on CUDA and on CPUs with bf16 instructions)")
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="batches of any lengths (default: batches of similar lengths, less padding)")
    p.add_argument("--attention-dropout", type=float, metavar="P",
                   help="dropout on the attention probabilities while training (default: 0 for a fresh model, the "
                        "model's own with --init-from, 0.1 in the released configs); 0 makes CPU steps about 3x faster")
    p.add_argument("--limit", type=int, help=limit_help)


def _check_run_args(a: argparse.Namespace) -> str | None:
    """A message for a run flag out of range, else None."""
    if a.attention_dropout is not None and not 0.0 <= a.attention_dropout < 1.0:
        return f"--attention-dropout {a.attention_dropout}: a probability in [0, 1)"
    return None


_RUN_FIELDS = ("max_length", "batch_size", "lr", "warmup_steps", "epochs", "max_minutes", "eval_every",
               "checkpoint_every", "seed", "device", "bf16", "group_by_length", "limit", "attention_dropout")


def _run_args(a: argparse.Namespace) -> dict:
    return {f: getattr(a, f) for f in _RUN_FIELDS}


@console_script("pcv-train")
def train_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pcv-train",
        description="Fine-tune or train a Perceiver byte-level classifier on labelled JSONL/CSV.",
        epilog="examples:\n  pcv-train train.jsonl --out m --size tiny --max-minutes 6      # a fresh model, labels from the data\n"
        "  pcv-train train.jsonl --init-from deepmind/language-perceiver --out ft   # fine-tune (AdamW 5e-5, 3 epochs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="labelled JSONL or CSV files (.gz ok)")
    p.add_argument("--out", help="output model dir; rerun the same command to resume (required unless --write-split)")
    p.add_argument("--write-split", metavar="DIR",
                   help="write the seeded split instead of training: DIR/train.jsonl and DIR/val.jsonl, and with "
                        "--val-limit DIR/val-sample.jsonl (what a run selects on) and DIR/val-rest.jsonl (the rest); "
                        "labels as names, each record's index in the data kept")
    p.add_argument("--init-from", help="pretrained HF dir or hub id (default: a fresh model sized by the flags below)")
    p.add_argument("--init", choices=["patch", "default"], default="patch", help="initialisation of a fresh model")
    p.add_argument("--grow-layers", type=int, metavar="N",
                   help="with --init-from: deepen its latent transformer to N self-attention layers; each new layer "
                        "starts as the identity (same logits), a copy of the layer before it with zeroed outputs")
    _add_size_flags(p, "small")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--labels", help="label names for ids 0,1,... in order, e.g. neg,pos (default: the labels in the "
                   "data, sorted; with --init-from, the model's own names); a label outside them is an error")
    p.add_argument("--unlabelled", nargs="*", default=[], help="text-only files for distillation")
    from .teacher import KINDS  # numpy only: the teachers' names

    p.add_argument("--teacher", choices=["none", *KINDS], default="none",
                   help="distil from an n-gram teacher: ngram (TF-IDF word 1-2-grams + logistic regression) or "
                        "ngram-nb (word 1-3-grams scaled by naive-Bayes log-count ratios, NBSVM-style; stronger, "
                        "slower to fit)")
    p.add_argument("--teacher-cache", metavar="FILE.npz",
                   help="keep the teacher's outputs here and reuse them while the data and settings match "
                        "(fitting it takes a minute or more on IMDB; a resume or another run skips that)")
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--ngram-head", action=argparse.BooleanOptionalAction, default=None,
                   help="add a byte n-gram head: a linear model over hashed byte 1-5-grams whose logits add to the "
                        "Perceiver's, in the same ONNX graph (it learns a task's words in seconds; a model with it "
                        "needs pcv to load). Default: on for a fresh model; with --init-from, what the checkpoint has")
    p.add_argument("--dense-weight", type=float, metavar="W",
                   help="dense distillation: weight of a per-latent word-lexicon loss, for any number of labels "
                        "(default: 1 for a fresh patch-initialised model, else 0 = off)")
    p.add_argument("--shift-augment", type=int, metavar="W",
                   help="train on each text after 0..W-1 leading spaces (drawn per example and step), so that the "
                        "model reads a text alike wherever its bytes fall in the latents' patches (pcv-batch "
                        "--shifts shows the sensitivity). Default: a fresh patch-initialised model's patch width "
                        "(8 bytes at the preset sizes), else 0 = off")
    p.add_argument("--splice-augment", type=float, default=0.0, metavar="P",
                   help="replace this share of each batch (0-1) by splices: the start of one pool text and the end "
                        "of another, cut at whitespace, labelled by the n-gram teacher (--teacher ngram or ngram-nb): "
                        "texts nobody wrote, whose labels cannot be memorised. Default 0: off")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-limit", type=int)
    p.add_argument("--split-seed", type=int, default=0,
                   help="seeds the train/validation split and --val-limit's sample (default 0); --seed seeds the "
                        "initialisation, batch order and augmentation, so runs with other --seed values are scored "
                        "on the same validation texts and share a --teacher-cache")
    p.add_argument("--average-last", type=int, default=0, metavar="N",
                   help="keep the weights of the last N checkpoints; at the end, their mean is scored and saved "
                        "as the model if it beats the best single step (default 0: off)")
    p.add_argument("--test", nargs="+", default=[], metavar="FILE",
                   help="labelled files to score the final model on (per-class metrics; never trained on)")
    p.add_argument("--overwrite", action="store_true",
                   help="OUT holds a run with other settings: replace it (default: refuse; the same command resumes)")
    _add_run_flags(p, lr=None, warmup=None, epochs=None, eval_every=500, max_length=None,
                   limit_help="use only the first N labelled records")
    a = show_defaults(p).parse_args(argv)
    if not (a.out or a.write_split):
        p.error("the following arguments are required: --out (or --write-split DIR)")
    size, problem = _size(a)
    max_length = a.max_length or (None if a.init_from else size.max_length)
    if a.dense_weight is not None and a.dense_weight < 0:
        return _fail(f"--dense-weight {a.dense_weight}: 0 (off) or a positive weight")
    if a.shift_augment is not None and (a.shift_augment < 0 or (max_length and a.shift_augment > max_length // 4)):
        return _fail(f"--shift-augment {a.shift_augment}: 0 (off) to a quarter of --max-length ({(max_length or 0) // 4})")
    if not 0 <= a.splice_augment <= 1:
        return _fail(f"--splice-augment {a.splice_augment}: a share of each batch, 0 (off) to 1")
    if a.splice_augment and a.teacher == "none":
        return _fail(f"--splice-augment needs --teacher {' or '.join(KINDS)}: the teacher labels the spliced texts")
    if a.average_last < 0 or a.average_last == 1:
        return _fail(f"--average-last {a.average_last}: 0 (off) or the number of checkpoints to average, at least 2")
    if bad := _check_run_args(a):
        return _fail(bad)
    if a.grow_layers is not None and (a.init_from is None or a.grow_layers < 1):
        return _fail(f"--grow-layers {a.grow_layers}: deepens a trained model to N >= 1 layers; give --init-from too")
    if a.labels is not None and (len(names := [x.strip() for x in a.labels.split(",")]) < 2 or len(set(names)) != len(names)
                                 or not all(names)):
        return _fail(f"--labels {a.labels!r}: at least two distinct, comma-separated names")
    if not 0 <= a.warmup_fraction < 1:
        return _fail(f"--warmup-fraction {a.warmup_fraction}: a share of the run, from 0 to below 1")
    if problem and not a.init_from:
        return _fail(problem)
    from .train import TrainConfig, train, write_split

    cfg = TrainConfig(
        data=tuple(a.data), out=a.out or "", init_from=a.init_from, grow_layers=a.grow_layers, init=a.init,
        size=size, text_field=a.text_field, label_field=a.label_field,
        labels=tuple(x.strip() for x in a.labels.split(",")) if a.labels else (), test=tuple(a.test), overwrite=a.overwrite,
        warmup_fraction=a.warmup_fraction,
        unlabelled=tuple(a.unlabelled), teacher=a.teacher, teacher_cache=a.teacher_cache, distill_weight=a.distill_weight,
        ngram_head=a.ngram_head, dense_weight=a.dense_weight, shift_augment=a.shift_augment, splice_augment=a.splice_augment,
        val_fraction=a.val_fraction, val_limit=a.val_limit, split_seed=a.split_seed, average_last=a.average_last, **_run_args(a),
    )
    try:
        if a.write_split:
            counts = write_split(cfg, a.write_split)
            print(", ".join(f"{a.write_split}/{name}.jsonl {n:,}" for name, n in counts.items()))
            return 0
        m = train(cfg)
    except PcvError as e:
        return _fail(str(e))
    best = max(m["history"], key=lambda h: h["val_accuracy"], default={"step": m["steps"]})
    print(f"best validation accuracy {m['best_val_accuracy']:.4f} (step {best['step']} of {m['steps']}); model in {a.out}")
    return 0


@console_script("pcv-pretrain")
def pretrain_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pcv-pretrain",
        description="Masked-byte pretraining of a Perceiver encoder on text-only files (span masking); "
        "fine-tune it with pcv-train --init-from OUT.",
        epilog="example: pcv-pretrain unsup.jsonl.gz train.jsonl.gz --out runs/mlm --max-minutes 60\n"
        "         pcv-train train.jsonl.gz --init-from runs/mlm --out runs/clf --lr 1e-4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="JSONL/CSV/TXT text files (.gz ok); labels, if any, are ignored")
    p.add_argument("--out", required=True, help="output dir (PerceiverForMaskedLM); rerun the same command to resume")
    p.add_argument("--init", choices=["patch", "default"], default="patch", help="encoder initialisation")
    _add_size_flags(p, "base")
    p.add_argument("--text-field", default="text")
    p.add_argument("--mask-rate", type=float, default=0.15, help="fraction of content bytes masked")
    p.add_argument("--mean-span", type=float, default=3.0, help="mean masked span in bytes")
    _add_run_flags(p, lr=5e-4, warmup=500, epochs=1.0, eval_every=1000, limit_help="use only the first N texts")
    a = show_defaults(p).parse_args(argv)
    if bad := _check_run_args(a):
        return _fail(bad)
    size, problem = _size(a)
    if problem:
        return _fail(problem)
    from .pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        data=tuple(a.data), out=a.out, init=a.init, size=size, text_field=a.text_field, mask_rate=a.mask_rate,
        mean_span=a.mean_span, **_run_args(a),
    )
    try:
        m = pretrain(cfg)
    except PcvError as e:
        return _fail(str(e))
    print(f"masked-byte accuracy {m['best_masked_byte_accuracy']:.4f} after {m['steps']} steps; encoder in {a.out}")
    return 0


@console_script("pcv-soup")
def soup_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pcv-soup",
        description="Average the weights of classifiers trained on from one start (a model soup): one model, "
                    "no extra inference cost. Uniform by default; --greedy keeps an ingredient only if the soup "
                    "scores no worse with it on a held-out labelled file.",
        epilog="example: pcv-soup soup runs/a runs/b runs/c && pcv-export soup soup/model.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="the soup's model dir (config.json, model.safetensors, soup.json)")
    p.add_argument("models", nargs="+", help="ingredients: model dirs or .safetensors weights of one architecture; "
                                             "the first a dir (its config describes the soup)")
    p.add_argument("--greedy", metavar="DATA", help="labelled JSONL/CSV to select ingredients on: texts no ingredient "
                                                    "was selected on (a run's best step scores high on its own "
                                                    "selection sample, and greedy then keeps it alone) and not the "
                                                    "ones you report")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--limit", type=int, help="score on the first N records of DATA")
    p.add_argument("--batch-size", type=int, default=32)
    a = show_defaults(p).parse_args(argv)
    try:
        from .soup import SoupConfig, make_soup

        rec = make_soup(SoupConfig(models=tuple(a.models), out=a.out, data=a.greedy, text_field=a.text_field,
                                   label_field=a.label_field, limit=a.limit, batch_size=a.batch_size))
    except PcvError as e:
        return _fail(str(e))
    kept = [i["source"] for i in rec["ingredients"] if i["kept"]]
    acc = f", accuracy {rec['soup_accuracy']:.4f} on {rec['data']}" if rec["soup_accuracy"] is not None else ""
    print(f"wrote {a.out}: the {rec['method']} soup of {len(kept)} of {len(rec['ingredients'])} ingredients{acc}")
    return 0
