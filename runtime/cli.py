"""pcv-batch: classify whole files of reviews with an ONNX Perceiver model."""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import time
from collections.abc import Iterator

from .api import TextClassifier
from .errors import PcvError
from .pipeline import LONG_TEXT, Result, classify_records
from .readers import ReaderConfig, Record, detect_format, label_index, read_records
from .resume import State
from .writer import LazyFile, error_line, prediction_line

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """examples:
  pcv-batch examples/reviews.jsonl                      # bundled model, predictions to stdout
  pcv-batch reviews.csv.gz -o preds.jsonl --text-field review
  cat reviews.txt | pcv-batch - --format txt --model my.onnx --provider cuda
  pcv-batch val.jsonl -o preds.jsonl --label-field label  # also the accuracy against the file's labels

exit status: 0 every record classified; 1 some records failed (see the errors file), the rest
were classified; 2 nothing could run (bad option, unreadable input, unusable model or provider);
130 interrupted."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcv-batch", description="Classify reviews in JSONL, CSV or text files.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL/CSV/TXT files (.gz ok), or - for stdin")
    p.add_argument("-o", "--output", default="-", help="predictions JSONL (default: stdout)")
    p.add_argument("--errors", help="errors JSONL (default: OUTPUT.errors.jsonl, or pcv-errors.jsonl for stdout)")
    p.add_argument("--model", help="an .onnx file or a dir holding model.onnx (default: the bundled IMDB model)")
    p.add_argument("--provider", default="auto", help="auto | cpu | cuda | tensorrt (default: auto)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads per run (default: 1 on cpu, all on gpu)")
    p.add_argument("--concurrent-runs", type=int, help="session.run calls in flight (default: one per core on cpu, 1 on gpu)")
    p.add_argument("--batch-size", type=int, help="texts per session.run (default: 1 on cpu, 64 on cuda/tensorrt)")
    p.add_argument("--max-tokens", type=int, default=65_536, help="padded tokens per session.run")
    p.add_argument("--window", type=int, default=4096, help="records length-sorted together")
    p.add_argument("--long-text", choices=LONG_TEXT, default="head",
                   help="texts longer than the model reads: classify their first max_length tokens (head, the "
                        "default), or also their last ones and average the two (head-tail: one more run per long text)")
    p.add_argument("--shifts", default="0", type=_shifts, metavar="S,S,...",
                   help="read each text once per shift, after S leading spaces, and average the probabilities: "
                        "0,4 moves every byte by half of the bundled model's 8-byte latent patch (+0.8 pt on its "
                        "validation reviews at half the records/s; default 0: one read)")
    p.add_argument("--format", choices=["jsonl", "csv", "txt"], help="input format (default: from the suffix; stdin: jsonl)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id")
    p.add_argument("--label-field", help="score the predictions against this field (label names or ids) and "
                   "print the accuracy; records without it are classified and left out of the score")
    p.add_argument("--max-line-bytes", type=int, default=ReaderConfig().max_line_bytes,
                   help="a longer input line is reported as an error, not read (default: 16 MiB)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command (needs -o); refuses other inputs/model/options")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _shifts(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: comma-separated byte counts, e.g. 0,4") from None


def _all_records(inputs: list[str], rc: ReaderConfig) -> Iterator[tuple[str, Record]]:
    for path in inputs:
        for rec in read_records(path, rc):
            yield path, rec


class Score:
    """Accuracy of the predictions against the records' own labels (pcv-batch --label-field); the counts
    live in the resume state, so a resumed run scores the whole file."""

    def __init__(self, names: tuple[str, ...], state: State | None) -> None:
        self.names = names
        self.scored, self.correct = (state.scored, state.correct) if state else (0, 0)
        self.unlabelled = 0  # this run only
        self.unusable = 0
        self.first_unusable = ""

    def add(self, res: Result, source: str) -> None:
        raw = res.record.label
        if raw is None or raw == "":
            self.unlabelled += 1
            return
        gold, why = label_index(raw, self.names)
        if gold is None:
            self.unusable += 1
            self.first_unusable = self.first_unusable or f"{source}: line {res.record.line}: {why}"
            return
        self.scored += 1
        self.correct += int(res.probs.argmax()) == gold

    def summary(self, field: str, resumed: bool) -> str:
        if not self.scored:
            msg = f"no record had a usable {field!r} to score against"
        else:
            msg = f"accuracy {100 * self.correct / self.scored:.2f} % ({self.correct:,} of {self.scored:,} labelled records)"
        since = " (since the resume)" if resumed else ""
        if self.unlabelled:
            msg += f"; {self.unlabelled:,} without {field!r}{since}, not scored"
        if self.unusable:
            msg += f"; {self.unusable:,} with an unusable label{since}, not scored (first: {self.first_unusable})"
        return msg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except PcvError as e:
        print(f"pcv-batch: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = ""
        if args.output != "-":
            argv_ = sys.argv[1:] if argv is None else argv
            hint = "; resume with: pcv-batch " + " ".join(argv_) + ("" if "--resume" in argv_ else " --resume")
        print(f"pcv-batch: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if min(args.batch_size or 1, args.threads or 1, args.concurrent_runs or 1, args.max_tokens, args.window, args.max_line_bytes) < 1:
        raise PcvError("--batch-size, --threads, --concurrent-runs, --max-tokens, --window and --max-line-bytes must be positive")
    if args.inputs.count("-") > 1:
        raise PcvError("stdin (-) can be given once")
    for path in args.inputs:  # fail early on a missing file or unknown format, before loading the model
        detect_format(path, args.format)
        if path != "-":
            if not os.path.isfile(path):
                raise PcvError(f"{path}: no such file")
    try:
        tc = TextClassifier(args.model, provider=args.provider, batch_size=args.batch_size, threads=args.threads,
                            concurrent_runs=args.concurrent_runs, max_tokens=args.max_tokens, window=args.window,
                            long_text=args.long_text, shifts=args.shifts)
    except ValueError as e:  # the options argparse cannot check before the model's max_length is known
        raise PcvError(f"--shifts: {e}") from None
    model_path, engine, clf, cfg = tc.path, tc.engine, tc.session, tc.config
    info = clf.info
    print(f"pcv-batch: model {model_path} (variant {info.variant}, max_length {info.max_length}), "
          f"provider {clf.provider}" + (" (picked by auto)" if args.provider == "auto" else "") +
          f", batch {engine.batch_size}, {engine.concurrent_runs} concurrent run(s) x "
          f"{engine.threads or 'all'} thread(s)", file=sys.stderr)
    if info.defaults:
        print(f"pcv-batch: model has no pcv metadata for {', '.join(info.defaults)}; using defaults", file=sys.stderr)

    rc = ReaderConfig(text_field=args.text_field, id_field=args.id_field or None, format=args.format,
                      max_line_bytes=args.max_line_bytes, label_field=args.label_field, label_required=False)
    errors_path = args.errors or (f"{args.output}.errors.jsonl" if args.output != "-" else "pcv-errors.jsonl")
    from . import resume as rs

    durable = args.output != "-" and "-" not in args.inputs
    if args.resume and not durable:
        raise PcvError("--resume needs -o FILE and file inputs (not stdin/stdout)")
    state = None
    if durable:
        # Batch composition is in the fingerprint too: it moves logits in the last bits (and int8
        # activation scales per batch), and a resumed run must give the uninterrupted run's answers.
        options = {"text_field": args.text_field, "id_field": args.id_field, "format": args.format,
                   "errors": os.path.abspath(errors_path), "batch_size": engine.batch_size,
                   "max_tokens": args.max_tokens, "window": args.window, "max_line_bytes": args.max_line_bytes,
                   "long_text": args.long_text}
        if args.shifts != (0,):
            options["shifts"] = list(args.shifts)
        if args.label_field:  # the score carries over a resume (State.scored/correct): same field only
            options["label_field"] = args.label_field
        fp = rs.fingerprint(args.inputs, model_path, options)
        state = rs.load_state(args.output) if args.resume else None
        if args.resume and state is None:
            print(f"pcv-batch: no resume state for {args.output}; starting from the beginning", file=sys.stderr)
        if state is not None:
            rs.check_resumable(state, fp, args.output)
            if state.complete:
                print(f"pcv-batch: {args.output} is already complete ({state.records} records)", file=sys.stderr)
                return EXIT_OK
            rs.truncate_to(args.output, state.out_bytes)
            rs.truncate_to(errors_path, state.err_bytes)
            print(f"pcv-batch: resuming after {state.records} records", file=sys.stderr)
        else:
            state = rs.State(fingerprint=fp)
            for path in (args.output, errors_path):  # a fresh run never mixes with old files
                if os.path.exists(path):
                    os.remove(path)
            rs.save_state(args.output, state)
    resuming = bool(state and state.records)
    out = LazyFile(args.output, append=resuming, size=state.out_bytes if state else 0)
    err = LazyFile(errors_path, append=resuming, size=state.err_bytes if state else 0)
    skip = state.records if state else 0
    multi = len(args.inputs) > 1
    pairs = _all_records(args.inputs, rc)
    # The pipeline sees plain records; the source path travels in a parallel FIFO of the same order
    # (popped as results come out, so it holds at most the records in flight).
    sources: collections.deque[str] = collections.deque()
    n_read = 0

    def records() -> Iterator[Record]:
        nonlocal n_read
        for src, rec in itertools.islice(pairs, skip, None):
            sources.append(src)
            n_read += 1
            yield rec

    show = not args.quiet and sys.stderr.isatty()
    n_ok = n_bad = n_trunc = 0
    score = Score(tc.labels, state)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(unit="rec", file=sys.stderr, desc="pcv-batch", mininterval=0.5)

    def commit(done: int, complete: bool = False) -> None:
        out.flush(durable=True)
        err.flush(durable=True)
        state.records, state.out_bytes, state.err_bytes, state.complete = skip + done, out.size, err.size, complete
        state.scored, state.correct = score.scored, score.correct
        rs.save_state(args.output, state)

    try:
        for k, res in enumerate(classify_records(records(), clf, cfg)):
            src = sources.popleft()
            if res.probs is None:
                n_bad += 1
                err.write_line(error_line(res, src))
            else:
                n_ok += 1
                n_trunc += res.truncated
                out.write_line(prediction_line(res, info.id2label, src if multi else None))
                if args.label_field:
                    score.add(res, src)
            if bar is not None:
                bar.update(1)
            if state is not None and (k + 1) % cfg.window == 0:
                commit(k + 1)
        if state is not None:
            commit(n_read, complete=True)
    finally:
        if bar is not None:
            bar.close()
        out.close()
        err.close()
    dt = time.perf_counter() - t0
    rate = n_ok / dt if dt > 0 else 0.0
    msg = (f"pcv-batch: classified {n_ok}, failed {n_bad}, truncated {n_trunc} (longer than {info.max_length} "
           f"tokens) in {dt:.1f}s ({rate:.1f} records/s)")
    if n_bad:
        msg += f"; errors in {errors_path}"
    print(msg, file=sys.stderr)
    if args.label_field:
        print(f"pcv-batch: {score.summary(args.label_field, resumed=bool(skip))}", file=sys.stderr)
    return EXIT_SOME_FAILED if n_bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
