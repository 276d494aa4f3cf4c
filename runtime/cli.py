"""pcv-batch: classify whole files of reviews with an ONNX Perceiver model.

The run, top to bottom: parse the options into a frozen Job; check inputs and outputs (nothing is
written to a path that is an input, the model or another output); lock the outputs; load the
model; start fresh or resume from the verified state; classify window by window, committing after
each; publish the staged files; exit with the status of the whole job.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import resume as rs
from .api import TextClassifier
from .console import console_script, describe_os_error, show_defaults
from .errors import InputError, PcvError
from .formats import FORMATS, convert, output_format
from .metrics import format_report, report, write_report
from .modelfile import file_sha256
from .outputs import LineSink, OutputLock, Target, check_distinct, fsync_dir, new_part_name, remove_stale, target
from .pipeline import LONG_TEXT, Result, classify_records
from .readers import FieldNotFoundError, ReaderConfig, ReadProgress, Record, check_input_path, detect_format, is_stream, label_index, read_records
from .writer import error_line, prediction_line

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGHUP: 129, signal.SIGTERM: 143}
EXIT_BROKEN_PIPE = 141  # as a shell reports a process ended by SIGPIPE: the reader went away
TEXT_FIELD_PROBE = 1000  # leading JSONL records without the text field that mean a wrong --text-field
MAX_THREADS = 1024  # --threads / --concurrent-runs: more threads than any machine has cores only thrash

EPILOG = """examples:
  pcv-batch examples/reviews.jsonl                      # bundled model, predictions to stdout
  pcv-batch reviews.csv.gz -o preds.jsonl --text-field review
  cat reviews.txt | pcv-batch - --format txt --model my.onnx --provider cuda
  pcv-batch val.jsonl -o preds.jsonl --label-field label  # also the accuracy against the file's labels
  pcv-batch in/*.jsonl -o out/ --engine ray --ray-address auto  # on a Ray cluster (docs/cluster.md)

exit status: 0 every record classified; 1 some records failed (see the errors file), the rest
were classified; 2 nothing could run or the run stopped (bad option, unreadable input, an output
that names an input or is locked by another run, unusable model or provider, an OS error);
130 / 143 / 129 interrupted by Ctrl-C / SIGTERM / SIGHUP (resumable with --resume);
141 the reader of stdout went away. A resumed or already complete job exits with the status
of the whole job."""


def _positive(value: str, most: int | None = None) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1 or (most is not None and n > most):
        raise argparse.ArgumentTypeError(f"{value} must be from 1 to {most:,}" if most else f"{value} must be at least 1")
    return n


def _threads(value: str) -> int:
    return _positive(value, MAX_THREADS)


def _shifts(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: comma-separated byte counts, e.g. 0,4") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcv-batch", description="Classify texts in JSONL, CSV or text files with an ONNX Perceiver classifier.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL/CSV/TXT files (.gz ok), Parquet files, or - for stdin")
    p.add_argument("-o", "--output", default="-", help="predictions JSONL (default: - , stdout); with --engine ray a "
                   "directory")
    p.add_argument("--output-format", choices=FORMATS,
                   help="jsonl, csv or parquet (default: from -o's suffix, else jsonl); csv and parquet are written "
                        "once the job is done (staged as JSON lines until then), parquet needs pyarrow")
    p.add_argument("--errors", help="errors JSONL (default: OUTPUT.errors.jsonl; for stdout or a device, "
                   "pcv-errors-DATE-TIME-PID.jsonl in the working directory, made only when a record fails)")
    p.add_argument("--model", help="an .onnx file or a dir holding model.onnx (default: the bundled IMDB model)")
    p.add_argument("--provider", default="auto", help="auto | cpu | cuda | tensorrt (default: auto)")
    p.add_argument("--threads", type=_threads, help="onnxruntime intra-op threads per run (default: 1 on cpu, all on gpu)")
    p.add_argument("--concurrent-runs", type=_threads,
                   help="session.run calls in flight (default: one per core on cpu, 1 on gpu)")
    p.add_argument("--batch-size", type=_positive, help="texts per session.run (default: 1 on cpu, 64 on cuda/tensorrt)")
    p.add_argument("--max-tokens", type=_positive, default=65_536, help="padded tokens per session.run (default: 65536)")
    p.add_argument("--window", type=_positive, default=4096, help="records length-sorted together (default: 4096)")
    p.add_argument("--long-text", choices=LONG_TEXT, default="head",
                   help="texts longer than the model reads: classify their first max_length tokens (head, the "
                        "default), or also their last ones and average the two (head-tail: one more run per long text)")
    p.add_argument("--shifts", default="0", type=_shifts, metavar="S,S,...",
                   help="read each text once per shift, after S leading spaces, and average the probabilities: "
                        "0,4 moves every byte by half of the bundled model's 8-byte latent patch (twice the work; "
                        "its gain is not established on unseen texts; default 0: one read)")
    p.add_argument("--format", choices=["jsonl", "csv", "txt", "parquet"], help="input format (default: from the suffix; stdin: jsonl)")
    p.add_argument("--text-field", default="text", help="JSONL key / CSV column of the text (default: text)")
    p.add_argument("--id-field", default="id", help="JSONL key / CSV column of the id, else the line number (default: id)")
    p.add_argument("--label-field", help="score the predictions against this field (label names or ids) and "
                   "print the accuracy; records without it are classified and left out of the score")
    p.add_argument("--metrics", metavar="FILE.json",
                   help="with --label-field: write accuracy, per-class precision/recall/F1/support and the confusion "
                        "matrix here as JSON")
    p.add_argument("--max-line-bytes", type=_positive, default=ReaderConfig().max_line_bytes,
                   help="a longer input line is reported as an error, not read (default: 16777216, 16 MiB)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command (needs -o FILE and file inputs); "
                        "refuses other inputs/model/options")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("on a Ray cluster (pip install \"pcv[ray]\"; docs/cluster.md)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray Data actors on a Ray cluster, -o names a directory "
                        "of part-NNNNN.jsonl|parquet, errors-NNNNN.jsonl, manifest.json and _SUCCESS")
    g.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="the cluster to join (default: start a local Ray instance)")
    g.add_argument("--actors", type=_positive, help="actors classifying at once (default: as many as the cluster's "
                   "CPUs, or GPUs with --gpus-per-actor, hold)")
    g.add_argument("--cpus-per-actor", type=_positive, help="CPUs per actor, ONNX Runtime's threads in all (default: 1)")
    g.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (default: 0); with --provider cuda or tensorrt")
    g.add_argument("--shard-records", type=_positive, metavar="N",
                   help="lines (Parquet: rows) per shard, the unit a worker commits and a retry repeats (default: about "
                        "4 shards per actor, 512 to 32768, rounded up to a multiple of 256)")
    return p


@dataclass(frozen=True)
class Job:
    """One pcv-batch job, built once from the command line; its options are the resume key."""

    inputs: tuple[str, ...]
    output: Target
    errors: Target
    model: str | None
    reader: ReaderConfig
    resume: bool
    quiet: bool
    argv: tuple[str, ...]  # to print the resume command
    metrics: str | None = None  # --metrics FILE.json
    out_format: str = "jsonl"  # of the published output (formats.FORMATS)

    @property
    def durable(self) -> bool:
        """Resumable: a regular output file and inputs that can be read again."""
        return not self.output.stream and not any(is_stream(p) for p in self.inputs)

    def why_not_durable(self) -> str:
        if self.output.stream:
            return f"-o {self.output.given} is {self.output.kind()}, written as a stream"
        src = next(p for p in self.inputs if is_stream(p))
        return f"input {src} is {'stdin' if src == '-' else 'a stream (FIFO, device or process substitution)'}, read once"

    def resume_hint(self) -> str:
        argv = list(self.argv)
        return "; resume with: " + shlex.join(["pcv-batch", *argv, *([] if "--resume" in argv else ["--resume"])])


def _job(args: argparse.Namespace, argv: list[str]) -> Job:
    if args.inputs.count("-") > 1:
        raise InputError("stdin (-) can be given once")
    for path in args.inputs:  # fail early on a missing file or unknown format, before loading the model
        detect_format(path, args.format)
        check_input_path(path)
    output = target(args.output, "-o")
    if args.errors == "-":
        raise InputError("--errors -: error records would mix with the predictions; name a file")
    # A stream output (stdout, a device, a FIFO) has no folder of its own: its errors go to a file of
    # this run's own in the working directory, made only when a record fails.
    errors = args.errors or (f"{args.output}.errors.jsonl" if not output.stream else
                             f"pcv-errors-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl")
    reader = ReaderConfig(text_field=args.text_field, id_field=args.id_field or None, format=args.format,
                          max_line_bytes=args.max_line_bytes, label_field=args.label_field, label_required=False,
                          probe_text_field=TEXT_FIELD_PROBE)
    if args.metrics and not args.label_field:
        raise InputError("--metrics needs --label-field: the per-class figures compare predictions with the file's labels")
    if args.metrics:
        target(args.metrics, "--metrics")  # a directory, or a parent that is a file: say so now
    out_format = output_format(args.output, args.output_format, output.stream)
    return Job(tuple(args.inputs), output, target(errors, "--errors"), args.model, reader,
               args.resume, args.quiet, tuple(argv), args.metrics, out_format)


def _resume_options(job: Job, args: argparse.Namespace, batch_size: int) -> dict:
    # Batch composition is in the key too: it moves logits in the last bits (and int8 activation
    # scales per batch), and a resumed run must give the uninterrupted run's answers.
    options = {"text_field": args.text_field, "id_field": args.id_field, "format": args.format,
               "errors": str(job.errors.path), "batch_size": batch_size, "max_tokens": args.max_tokens,
               "window": args.window, "max_line_bytes": args.max_line_bytes, "long_text": args.long_text}
    if args.shifts != (0,):
        options["shifts"] = list(args.shifts)
    if args.label_field:  # the score carries over a resume (State.confusion): same field only
        options["label_field"] = args.label_field
    if job.out_format != "jsonl":
        options["output_format"] = job.out_format
    return options


def _check_outputs(job: Job, model_path: str) -> list[OutputLock]:
    """Outputs against inputs, the model and each other; then the locks of the regular outputs."""
    writes: list[tuple[str, str]] = [(job.output.role, job.output.given), (job.errors.role, job.errors.given)]
    for tgt in (job.output, job.errors):
        if not tgt.stream:
            writes += [(f"the lock of {tgt.given}", str(tgt.beside(".pcv-lock")))]
    if not job.output.stream:
        writes.append((f"the resume state of {job.output.given}", str(rs.state_path(job.output.path))))
    if job.metrics:
        writes.append(("--metrics", job.metrics))
    reads = [("input", p) for p in job.inputs] + [("--model", model_path)]
    check_distinct(writes, reads)
    return [OutputLock(t.path, t.role) for t in (job.output, job.errors) if not t.stream]


def _all_records(inputs: tuple[str, ...], rc: ReaderConfig, progress: ReadProgress | None = None
                 ) -> Iterator[tuple[str, Record]]:
    for path in inputs:
        for rec in read_records(path, rc, progress):
            yield path, rec


class Score:
    """The predictions against the records' own labels (pcv-batch --label-field): a confusion matrix
    kept in the resume state, so a resumed run scores the whole file."""

    def __init__(self, names: tuple[str, ...], state: rs.State | None) -> None:
        self.names = names
        n = len(names)
        saved = state.confusion if state is not None and len(state.confusion) == n else None
        self.matrix = np.array(saved, dtype=np.int64) if saved else np.zeros((n, n), dtype=np.int64)
        self.unlabelled = 0  # this run only
        self.unusable = 0
        self.first_unusable = ""

    @property
    def scored(self) -> int:
        return int(self.matrix.sum())

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
        self.matrix[gold, int(res.probs.argmax())] += 1

    def summary(self, field: str, resumed: bool) -> str:
        if not self.scored:
            msg = f"no record had a usable {field!r} to score against"
        else:
            correct = int(np.trace(self.matrix))
            msg = f"accuracy {100 * correct / self.scored:.2f} % ({correct:,} of {self.scored:,} labelled records)"
        since = " (since the resume)" if resumed else ""
        if self.unlabelled:
            msg += f"; {self.unlabelled:,} without {field!r}{since}, not scored"
        if self.unusable:
            msg += f"; {self.unusable:,} with an unusable label{since}, not scored (first: {self.first_unusable})"
        return msg


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: the last commit stands, the resume command is printed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise _Signalled(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (pcv-batch is; an embedding caller may not be)
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@console_script("pcv-batch")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = show_defaults(_parser()).parse_args(argv)
    job: Job | None = None
    with _signals_as_interrupts():
        try:
            if args.engine == "ray":
                from .cluster import run

                return run(args, argv)
            for flag in ("ray_address", "actors", "cpus_per_actor", "gpus_per_actor", "shard_records"):
                if getattr(args, flag) is not None:
                    raise InputError(f"--{flag.replace('_', '-')} needs --engine ray")
            job = _job(args, argv)
            return _run(job, args)
        except PcvError as e:
            print(f"pcv-batch: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, _Signalled) else signal.SIGINT
            hint = job.resume_hint() if job is not None and job.durable else ""
            print(f"pcv-batch: interrupted ({signal.Signals(signum).name}){hint}", file=sys.stderr)
            return EXIT_SIGNAL[signum]
        except BrokenPipeError:
            with contextlib.suppress(OSError):  # no second error from the interpreter's flush at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            with contextlib.suppress(OSError):
                sys.stderr.write("pcv-batch: stdout was closed by its reader; not every prediction was written\n")
            return EXIT_BROKEN_PIPE
        except OSError as e:
            hint = where = ""
            if job is not None and job.durable and rs.state_path(job.output.path).is_file():
                hint = job.resume_hint()
            if e.filename is None and job is not None:  # a failed write names no file: the outputs are where it wrote
                where = f" (writing {job.output.given} or its errors file)"
            print(f"pcv-batch: error: {describe_os_error(e)}{where}{hint}", file=sys.stderr)
            return EXIT_USAGE


def _run(job: Job, args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.resume and not job.durable:
        raise PcvError(f"--resume needs -o FILE and file inputs: {job.why_not_durable()}")
    from .session import resolve_model

    model_path = resolve_model(job.model)
    locks = _check_outputs(job, str(model_path))
    with contextlib.ExitStack() as stack:
        for lock in locks:
            lock.acquire()
            stack.callback(lock.release)
        if not job.output.stream:
            rs.remove_stale_tmp(job.output.path)  # state files a killed run was writing
        if not job.durable and (job.output.given != "-" if job.output.stream else "-" not in job.inputs):
            # a named device, FIFO or stream input (stdin and stdout go without saying)
            print(f"pcv-batch: {job.why_not_durable()}: not resumable", file=sys.stderr)
        return _classify(job, args, t0)


@dataclass
class Tally:
    classified: int = 0
    failed: int = 0
    truncated: int = 0

    def plus(self, other: Tally) -> Tally:
        return Tally(self.classified + other.classified, self.failed + other.failed, self.truncated + other.truncated)


def _classify(job: Job, args: argparse.Namespace, t0: float) -> int:
    try:
        tc = TextClassifier(job.model, provider=args.provider, batch_size=args.batch_size, threads=args.threads,
                            concurrent_runs=args.concurrent_runs, max_tokens=args.max_tokens, window=args.window,
                            long_text=args.long_text, shifts=args.shifts)
    except ValueError as e:  # the options argparse cannot check before the model's max_length is known
        raise PcvError(f"--shifts: {e}") from None
    engine, clf, cfg = tc.engine, tc.session, tc.config
    info = clf.info
    print(f"pcv-batch: model {tc.path} (variant {info.variant}, max_length {info.max_length}), "
          f"provider {clf.provider}" + (" (picked by auto)" if args.provider == "auto" else "") +
          f", batch {engine.batch_size}, {engine.concurrent_runs} concurrent run(s) x "
          f"{engine.threads or 'all'} thread(s)", file=sys.stderr)
    if info.defaults:
        print(f"pcv-batch: model has no pcv metadata for {', '.join(info.defaults)}; using defaults", file=sys.stderr)

    state, hashers = None, (None, None)
    if job.durable:
        fp = rs.fingerprint(list(job.inputs), tc.path, _resume_options(job, args, engine.batch_size))
        state, hashers = _start_state(job, fp, tc.path)
        if state.complete:
            return _finish_complete(job, state, tc.labels)
    before = Tally(state.classified, state.failed, state.truncated) if state else Tally()
    out = LineSink(job.output, part=(state.out_part or None) if state else None,
                   size=state.out_bytes if state else 0, hasher=hashers[0])
    err = LineSink(job.errors, part=(state.err_part or None) if state else None, lazy=True,
                   size=state.err_bytes if state else 0, hasher=hashers[1])
    run = Tally()
    score = Score(tc.labels, state)
    skip = state.records if state else 0

    def commit(done: int, complete: bool = False) -> None:
        assert state is not None and out.part is not None
        out.flush(durable=True)
        err.flush(durable=True)
        total = before.plus(run)
        state.records, state.complete = skip + done, complete
        state.classified, state.failed, state.truncated = total.classified, total.failed, total.truncated
        state.out_part, state.out_bytes, state.out_sha256 = out.part.name, out.size, out.hasher.hexdigest()
        state.err_part = err.part.name if err.started and err.part is not None else ""
        state.err_bytes, state.err_sha256 = err.size, err.hasher.hexdigest()
        state.confusion = score.matrix.tolist()
        rs.save_state(job.output.path, state)

    try:
        if state is not None:
            commit(0)  # the staged files are named in the state before a line is written
        n_read = _classify_stream(job, clf, cfg, skip, out, err, run, score, commit if state else None, info.id2label)
        if state is not None:
            commit(n_read, complete=True)  # complete first: a kill before the renames is finished by --resume
        if job.out_format == "jsonl":
            out.publish()
        else:
            out.close()
            _publish_converted(job, out.part, tc.labels, state)
        if err.started:
            err.publish()
        elif not job.output.stream and remove_stale(job.errors):
            print(f"pcv-batch: removed {job.errors.given}, the errors of an earlier run (this one had none)",
                  file=sys.stderr)
    except BaseException as e:
        # Nothing to resume (or only the errors of a wrong --text-field): leave no trace of this run.
        if state is None or state.records == 0 or isinstance(e, FieldNotFoundError):
            out.discard()
            err.discard()
            if state is not None:
                rs.state_path(job.output.path).unlink(missing_ok=True)
        else:
            out.close()
            err.close()
        raise
    return _report(job, before, run, score, t0, info.max_length)


def _start_state(job: Job, fp: dict, model_path: Path) -> tuple[rs.State, tuple]:
    """The state to go on from: a verified interrupted job (--resume), or a fresh one."""
    out_dir, err_dir = job.output.path.parent, job.errors.path.parent
    if job.resume:
        state = rs.load_state(job.output.path, job.errors.path.name)
        if state is None:
            print(f"pcv-batch: no resume state for {job.output.given}; starting from the beginning", file=sys.stderr)
        else:
            rs.check_resumable(state, fp, job.output.given)
            if state.complete:
                return state, (None, None)
            ho = _verified(out_dir, state.out_part, state.out_bytes, state.out_sha256, "staged predictions", state.classified)
            he = _verified(err_dir, state.err_part, state.err_bytes, state.err_sha256, "staged errors", state.failed)
            print(f"pcv-batch: resuming after {state.records:,} records "
                  f"({state.classified:,} classified, {state.failed:,} failed)", file=sys.stderr)
            return state, (ho, he)
    else:
        try:
            old = rs.load_state(job.output.path, job.errors.path.name)
        except PcvError:
            old = None  # a damaged state is replaced; the files it names cannot be trusted, so they stay
        if old is not None:  # a fresh run never mixes with an earlier run's staged files
            for folder, part in ((out_dir, old.out_part), (err_dir, old.err_part)):
                if part and (folder / part).is_file():
                    check_distinct([("a staged file of the earlier run", folder / part)],
                                   [("input", p) for p in job.inputs] + [("--model", str(model_path))])
                    (folder / part).unlink()
    return rs.State(fingerprint=fp), (None, None)


def _verified(folder, part: str, size: int, sha256: str, what: str, lines: int):
    if not part:
        if size or lines:
            raise PcvError(f"{folder}: the resume state counts {size:,} bytes of {what} but names no file; "
                           f"rerun without --resume to start again")
        return None
    return rs.verify_prefix(folder / part, size, sha256, what, lines)


def _publish_converted(job: Job, part: Path, labels: tuple[str, ...], state: rs.State | None) -> None:
    """CSV or Parquet: the staged JSON lines converted beside the output, renamed over it, then the
    staged file removed (the state keeps the converted file's digest for a later --resume)."""
    tgt = job.output
    conv = tgt.path.parent / f"{new_part_name(tgt.path)[:-5]}.conv"
    try:
        convert(part, conv, job.out_format, labels, multi=len(job.inputs) > 1)
        os.replace(conv, tgt.path)
        fsync_dir(tgt.path.parent)
    finally:
        conv.unlink(missing_ok=True)
    if state is not None:
        state.final_sha256 = file_sha256(tgt.path)
        rs.save_state(tgt.path, state)
    part.unlink(missing_ok=True)


def n_records(job: Job) -> int:
    """The records of the inputs (read, not classified): what a complete job must have consumed."""
    return sum(1 for _ in _all_records(job.inputs, job.reader))


def _finish_complete(job: Job, state: rs.State, labels: tuple[str, ...]) -> int:
    """--resume of a finished job: check its files (and do the renames a kill may have cut short)."""
    for tgt, part, size, sha, what, lines in (
            (job.output, state.out_part, state.out_bytes, state.out_sha256, "predictions", state.classified),
            (job.errors, state.err_part, state.err_bytes, state.err_sha256, "errors", state.failed)):
        if not part:
            continue
        if tgt is job.output and job.out_format != "jsonl":
            staged = tgt.path.parent / part
            if state.final_sha256 and tgt.path.is_file() and file_sha256(tgt.path) == state.final_sha256:
                staged.unlink(missing_ok=True)
                continue
            if staged.is_file() and rs.verify_whole(staged, size, sha, lines) and n_records(job) == state.records:
                _publish_converted(job, staged, labels, state)  # a kill came between the state and the conversion
                continue
            raise PcvError(f"{tgt.given}: the job was complete, but its {what} file is missing or changed since; "
                           f"rerun without --resume to classify again")
        staged = tgt.path.parent / part
        if staged.is_file() and rs.verify_whole(staged, size, sha, lines):
            if (have := n_records(job)) != state.records:
                raise PcvError(f"{job.output.given}: the resume state says the job is complete after {state.records:,} "
                               f"records, but the inputs hold {have:,}; rerun without --resume to start again")
            os.replace(staged, tgt.path)
        if not rs.verify_whole(tgt.path, size, sha, lines):
            raise PcvError(f"{tgt.given}: the job was complete, but its {what} file is missing or changed since "
                           f"(not the {size:,} bytes it wrote); rerun without --resume to classify again")
    print(f"pcv-batch: {job.output.given} is already complete ({state.records:,} records: {state.classified:,} "
          f"classified, {state.failed:,} failed" + (f", errors in {job.errors.given}" if state.failed else "") + ")",
          file=sys.stderr)
    if job.reader.label_field and state.confusion:
        score = Score(labels, state)
        print(f"pcv-batch: {score.summary(job.reader.label_field, resumed=False)}", file=sys.stderr)
        rep = report(score.matrix, score.names)
        print(format_report(rep), file=sys.stderr)
        if job.metrics:
            write_report(rep, job.metrics)
    return EXIT_SOME_FAILED if state.failed else EXIT_OK


def _classify_stream(job: Job, clf, cfg, skip: int, out: LineSink, err: LineSink, run: Tally, score: Score,
                     commit, id2label: dict[int, str]) -> int:
    """Classify every record after the first `skip`, writing lines and committing after each window;
    returns the records read."""
    multi = len(job.inputs) > 1
    progress = ReadProgress()
    pairs = _all_records(job.inputs, job.reader, progress)
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

    bar = None
    if not job.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        # bytes read of the inputs' total size (an ETA), records in the postfix; streams have no size
        total = None if any(is_stream(p) for p in job.inputs) else sum(os.path.getsize(p) for p in job.inputs)
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="pcv-batch",
                   mininterval=0.5)
    try:
        for k, res in enumerate(classify_records(records(), clf, cfg)):
            src = sources.popleft()
            if res.probs is None:
                err.write_line(error_line(res, src))
                run.failed += 1
            else:
                out.write_line(prediction_line(res, id2label, src if multi else None))
                run.classified += 1
                run.truncated += res.truncated
                if job.reader.label_field:
                    score.add(res, src)
            if bar is not None and (k % 64 == 0 or res.probs is None):
                bar.update(max(0, progress.bytes - bar.n))
                bar.set_postfix(records=f"{skip + k + 1:,}", refresh=False)
            if commit is not None and (k + 1) % cfg.window == 0:
                commit(k + 1)
    finally:
        if bar is not None:
            bar.update(max(0, progress.bytes - bar.n))
            bar.set_postfix(records=f"{skip + n_read:,}", refresh=False)
            bar.close()
    return n_read


def _report(job: Job, before: Tally, run: Tally, score: Score, t0: float, max_length: int) -> int:
    dt = time.perf_counter() - t0
    rate = run.classified / dt if dt > 0 else 0.0
    msg = (f"pcv-batch: classified {run.classified}, failed {run.failed}, truncated {run.truncated} (longer than "
           f"{max_length} tokens) in {dt:.1f}s ({rate:.1f} records/s)")
    total = before.plus(run)
    if total.failed:
        msg += f"; errors in {job.errors.given}"
    print(msg, file=sys.stderr)
    resumed = before != Tally()
    if resumed:
        print(f"pcv-batch: the whole job: classified {total.classified}, failed {total.failed}, truncated "
              f"{total.truncated}", file=sys.stderr)
    if job.reader.label_field:
        print(f"pcv-batch: {score.summary(job.reader.label_field, resumed=resumed)}", file=sys.stderr)
        if score.scored:
            rep = report(score.matrix, score.names)
            print(format_report(rep), file=sys.stderr)
            if job.metrics:
                write_report(rep, job.metrics)
                print(f"pcv-batch: per-class metrics in {job.metrics}", file=sys.stderr)
    return EXIT_SOME_FAILED if total.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
