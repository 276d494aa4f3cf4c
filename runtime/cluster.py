"""pcv-batch --engine ray: the same job on a Ray cluster, through Ray Data.

The driver (this process) checks the options, the model and the output directory as the local
engine does, reads every input once (digests, shard boundaries: runtime.shards), writes
OUT/manifest.json, and hands the shards to Ray Data as a dataset of one row per shard, mapped by an
actor pool (`map_batches` with a callable class, `concurrency` actors of `num_cpus`/`num_gpus`
each). Every actor loads the model once, from bytes the driver put in Ray's object store, and
classifies whole shards with pcv's readers, tokenizer, planner and ONNX Runtime session, its
intra-op threads set to the actor's CPUs. A shard's files are committed atomically before the
actor returns; the driver records each returned shard in the manifest, and once all are in, writes
the manifest as complete and then OUT/_SUCCESS.

What Ray gives: a lost actor or node is replaced and the shard it held is run again (Ray Data's
actor pools restart actors and retry their tasks). What pcv adds: bad records never fail a task;
a shard run twice writes the same bytes under the same names (nothing doubled); --resume skips the
shards the manifest holds after checking their files; the exit status and messages of pcv-batch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputError, PcvError
from .readers import ReaderConfig
from .shards import OWN_PART, OWN_TMP, OutDir, Shard, classify_shard, dumps, is_uri, plan, read_shard, scan, shard_lines

MANIFEST, SUCCESS = "manifest.json", "_SUCCESS"
MANIFEST_FORMAT, MANIFEST_VERSION = "pcv-batch-ray", 1
RAY_RANGE = ">=2.50,<3"  # the extra's range; tested with 2.60.0
# actors that crash while starting, in a row, before Ray Data stops the job (a model or provider that cannot
# load is not a crash: ShardWorker reports it, and the driver stops at the first report)
INIT_DEATHS = 3


def import_ray():
    # Ray Data's own notes (progress bars off, dataset finished) stay out of pcv-batch's stderr unless asked for
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "INFO" if os.environ.get("PCV_RAY_LOG") == "1" else "ERROR")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError('--engine ray needs Ray Data: pip install "pcv[ray]"') from None
    return ray


# -- the worker side ----------------------------------------------------------------------------------------


class ShardWorker:
    """One actor of the pool: loads the model once; each call classifies one shard and commits its files.
    A problem that stops the whole job (the model or provider cannot be used, an input cannot be read)
    comes back as {"fatal": message}, so that the driver stops with pcv's message, not a Ray traceback."""

    def __init__(self, model: list, model_sha256: str, engine: dict, reader: dict, out_dir: str,
                 out_format: str) -> None:
        import ray

        from .api import TextClassifier

        self.fatal: str | None = None
        self.reader = ReaderConfig(**reader)
        self.out = OutDir(out_dir)
        self.out_format = out_format
        self.node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
        try:
            data = ray.get(model[0])
            if hashlib.sha256(data).hexdigest() != model_sha256:
                raise PcvError("the model bytes that reached this worker differ from the driver's model")
            self.tmp = tempfile.TemporaryDirectory(prefix="pcv-model-")
            path = Path(self.tmp.name) / "model.onnx"
            path.write_bytes(data)
            self.tc = TextClassifier(path, **engine)
            eng = self.tc.engine
            self.provider, self.threads = self.tc.session.provider, f"{eng.concurrent_runs} run(s) x {eng.threads}"
        except PcvError as e:
            self.fatal = f"on worker {self.node}: {e}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for item in batch["shard"]:
            shard = Shard.from_dict(json.loads(str(item)))
            if self.fatal is not None:
                out.append(dumps({"index": shard.index, "fatal": self.fatal}))
                continue
            try:
                result = classify_shard(shard, self.tc, self.reader, self.out, self.out_format)
            except PcvError as e:
                result = {"index": shard.index, "fatal": str(e)}
            except OSError as e:
                from .console import describe_os_error

                result = {"index": shard.index, "fatal": f"on worker {self.node}: {describe_os_error(e)}"}
            result.update(node=self.node, provider=self.provider, threads=self.threads)
            out.append(dumps(result))
        return {"result": np.array(out, dtype=object)}


# -- the driver side ----------------------------------------------------------------------------------------


def check_options(args: argparse.Namespace) -> None:
    """What --engine ray cannot take, refused before anything starts."""
    if args.output in (None, "-"):
        raise ConfigError("--engine ray writes a directory of parts: name it with -o OUT_DIR")
    if "-" in args.inputs:
        raise ConfigError("--engine ray reads files its workers can open: stdin (-) cannot be shared out")
    for flag, value in (("--errors", args.errors), ("--threads", args.threads), ("--concurrent-runs", args.concurrent_runs)):
        if value is not None:
            why = {"--errors": "errors go to OUT_DIR/errors-NNNNN.jsonl",
                   "--threads": "each actor's ONNX Runtime threads are its --cpus-per-actor",
                   "--concurrent-runs": "each actor runs one session at a time; use --actors"}[flag]
            raise ConfigError(f"{flag} does not apply to --engine ray: {why}")
    if args.output_format == "csv" or (args.output_format is None and args.output.endswith(".csv")):
        raise ConfigError("--engine ray writes JSONL or Parquet parts (--output-format jsonl|parquet)")
    if args.gpus_per_actor is not None and args.gpus_per_actor < 0:
        raise ConfigError("--gpus-per-actor: 0 or more")
    for path in args.inputs:
        if not (is_uri(path) or os.path.isfile(path)):
            raise InputError(f"{path}: no such file" if not os.path.exists(path) else
                             f"{path}: --engine ray reads regular files (not a directory, FIFO or device)")


def _options(args: argparse.Namespace, out_format: str) -> dict[str, Any]:
    """The resume key: what changes the answers or the files (not --actors, --ray-address, -q)."""
    options = {"text_field": args.text_field, "id_field": args.id_field, "format": args.format,
               "batch_size": args.batch_size, "max_tokens": args.max_tokens, "window": args.window,
               "max_line_bytes": args.max_line_bytes, "long_text": args.long_text, "shifts": list(args.shifts),
               "label_field": args.label_field, "output_format": out_format, "provider": args.provider}
    return options


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from .cli import TEXT_FIELD_PROBE
    from .formats import output_format
    from .modelfile import file_sha256, scan_onnx
    from .outputs import OutputLock, check_distinct
    from .session import resolve_model

    t0 = time.perf_counter()
    check_options(args)
    out_format = output_format(args.output, args.output_format or ("parquet" if args.output.endswith(".parquet") else
                                                                   "jsonl"), stream=False)
    ray = import_ray()
    from .api import TextClassifier

    model_path = resolve_model(args.model)
    if scan_onnx(model_path).refs:  # only the .onnx file's bytes travel to the workers
        raise ConfigError(f"--model {model_path}: its weights are in external data files; --engine ray ships one "
                          f".onnx file to its workers: save the model with its weights inside")
    out = OutDir(args.output)
    if out.fs is None:
        if os.path.exists(out.base) and not os.path.isdir(out.base):
            raise ConfigError(f"-o {args.output}: is a file; --engine ray writes a directory of parts")
        local_inputs = [p for p in args.inputs if not is_uri(p)]
        check_distinct([("-o", out.base)], [("input", p) for p in local_inputs] + [("--model", str(model_path))])
        for p in [*local_inputs, str(model_path)]:
            if os.path.realpath(p).startswith(os.path.realpath(out.base) + os.sep):
                raise ConfigError(f"{p} is inside the output directory {args.output}; name another -o")
    # The model is checked here first: a model that cannot load fails at once with pcv's message.
    engine = {"provider": args.provider, "batch_size": args.batch_size, "max_tokens": args.max_tokens,
              "window": args.window, "long_text": args.long_text, "shifts": tuple(args.shifts)}
    try:
        local = TextClassifier(model_path, **{**engine, "provider": "cpu"})
    except ValueError as e:
        raise PcvError(f"--shifts: {e}") from None
    labels = local.labels
    del local  # the check is done: the driver holds no session while the job runs
    if not args.ray_address and args.provider not in ("auto", "cpu"):
        # a local instance runs on this machine: a provider it cannot start fails here, before Ray starts
        TextClassifier(model_path, **engine)
    reader = ReaderConfig(text_field=args.text_field, id_field=args.id_field or None, format=args.format,
                          max_line_bytes=args.max_line_bytes, label_field=args.label_field, label_required=False,
                          probe_text_field=TEXT_FIELD_PROBE)

    lock = OutputLock(Path(os.path.realpath(out.base)), "-o") if out.fs is None else None
    with contextlib.ExitStack() as stack:
        if lock is not None:
            lock.acquire()
            stack.callback(lock.release)
        before = out.names()
        ours = all(OWN_TMP.fullmatch(n) for n in before)  # new, empty, or only the temporaries of a killed run
        created = not before and not out.exists("")
        out.makedirs()
        manifest: dict | None = None
        try:
            ts = time.perf_counter()
            scans = [scan(p, args.format) for p in args.inputs]
            for s in scans:
                _probe(s, reader)
            model_sha = file_sha256(model_path)
            fingerprint = {"inputs": [{"path": s.path if is_uri(s.path) else os.path.abspath(s.path), "size": s.size,
                                       "sha256": s.sha256} for s in scans],
                           "model_sha256": model_sha, "options": _options(args, out_format)}
            manifest, done = _start(out, args, fingerprint)
            if manifest is not None and manifest["status"] == "complete" and out.exists(SUCCESS):
                return _already_complete(args, manifest, labels)
            actors = 0
            if manifest is None or len(done) < len(manifest["shards"]):
                if _init_ray(ray, args):
                    stack.callback(ray.shutdown)
                actors = _actors(ray, args)
            if manifest is None:
                per_shard = shard_lines(scans, actors, args.shard_records)
                shards = plan(scans, per_shard)
                manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "status": "running",
                            **fingerprint, "labels": list(labels), "model": str(model_path), "shard_lines": per_shard,
                            "shards": [s.to_dict() for s in shards], "parts": {}}
                _save(out, manifest)
            shards = [Shard.from_dict(d) for d in manifest["shards"]]
            todo = [s for s in shards if s.name not in done]
            print(f"pcv-batch: {len(scans)} input(s), {sum(s.size for s in scans) / 2**20:.1f} MiB read in "
                  f"{time.perf_counter() - ts:.1f}s; {len(shards)} shard(s)" +
                  (f", {len(shards) - len(todo)} already committed" if len(todo) < len(shards) else ""), file=sys.stderr)
            if args.shard_records and len(todo) < len(shards) and shard_lines(scans, actors, args.shard_records) != \
                    manifest.get("shard_lines"):
                print(f"pcv-batch: --shard-records {args.shard_records} does not apply to a resumed job: its shards "
                      f"were planned when it started", file=sys.stderr)
            if todo:
                _execute(ray, args, out, out_format, manifest, todo, min(actors, len(todo)), model_path, model_sha,
                         engine, reader)
            return _finish(args, out, manifest, labels, t0)
        except BaseException as e:
            if ours and not (manifest and manifest["parts"]):
                if ray.is_initialized():
                    ray.shutdown()  # its actors stop first: none commits a part after the discard
                _discard(out, created)  # a fresh job that committed nothing leaves no trace
            elif isinstance(e, KeyboardInterrupt):
                import shlex

                print("pcv-batch: the committed shards stand; resume with: " +
                      shlex.join(["pcv-batch", *argv, *([] if "--resume" in argv else ["--resume"])]), file=sys.stderr)
            raise


def _actors(ray, args: argparse.Namespace) -> int:
    """--actors, else as many as the cluster's CPUs (or GPUs, with --gpus-per-actor) hold; an actor no node
    can hold is refused (Ray would wait for such a node for ever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for flag, key, want in (("--cpus-per-actor", "CPU", args.cpus_per_actor or 1), ("--gpus-per-actor", "GPU",
                                                                                      args.gpus_per_actor or 0)):
        most = max((r.get(key, 0) for r in nodes), default=0)
        if want and want > most:
            raise ConfigError(f"{flag} {want:g}: no node of the cluster has that many {key}s (the largest has {most:g})")
    if args.actors:
        return args.actors
    have = ray.cluster_resources()
    if args.gpus_per_actor:
        return max(1, int(have.get("GPU", 0) // args.gpus_per_actor))
    return max(1, int(have.get("CPU", 1) // (args.cpus_per_actor or 1)))


def _probe(s, reader: ReaderConfig) -> None:
    """A wrong --text-field (or an unreadable file) is found on the driver, before a worker starts."""
    from .cli import TEXT_FIELD_PROBE

    for k, _ in enumerate(read_shard(plan([s], 2**62)[0], reader)):
        if k >= TEXT_FIELD_PROBE:
            break


def _save(out: OutDir, manifest: dict) -> None:
    out.write_atomic(MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _load(out: OutDir) -> dict | None:
    if not out.exists(MANIFEST):
        return None
    try:
        m = json.loads(out.read(MANIFEST))
    except (ValueError, UnicodeDecodeError) as e:
        raise PcvError(f"{out.given}/{MANIFEST} is damaged ({e}); use another -o, or remove the directory") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or m.get("version") != MANIFEST_VERSION:
        raise PcvError(f"{out.given}/{MANIFEST} is not a pcv-batch --engine ray manifest of this version")
    if not isinstance(m.get("shards"), list) or not isinstance(m.get("parts"), dict):
        raise PcvError(f"{out.given}/{MANIFEST} is damaged (no shards or parts); use another -o")
    return m


def _start(out: OutDir, args: argparse.Namespace, fingerprint: dict) -> tuple[dict | None, set[str]]:
    """The manifest to go on from (--resume, its committed parts verified) or None for a fresh job in an
    empty directory."""
    old = _load(out)
    if old is None:
        others = [n for n in out.names() if not OWN_TMP.fullmatch(n)]
        if others:
            raise PcvError(f"-o {args.output}: the directory holds files that are not a pcv job ({', '.join(others[:3])}"
                           f"{', ...' if len(others) > 3 else ''}); name a new or empty directory")
        if args.resume:
            print(f"pcv-batch: no manifest in {args.output}; starting from the beginning", file=sys.stderr)
        return None, set()
    if not args.resume:
        state = "a complete job" if old.get("status") == "complete" else "an unfinished job"
        raise PcvError(f"-o {args.output} holds {state} (its {MANIFEST}); add --resume to "
                       f"{'check' if state == 'a complete job' else 'finish'} it, or name another directory")
    for key, what in (("inputs", "input files"), ("model_sha256", "model"), ("options", "options")):
        was, now = old.get(key), fingerprint.get(key)
        if was != now:
            if key == "options" and isinstance(was, dict):
                diff = ", ".join(f"{k}: was {json.dumps(was.get(k))}, now {json.dumps(now.get(k))}"
                                 for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
            else:
                diff = f"was {json.dumps(was)[:200]}"
            raise PcvError(f"{args.output}: cannot resume: the {what} differ from the interrupted job "
                           f"({diff}); name another -o to start again")
    done = set()
    for name, part in list(old["parts"].items()):
        if _intact(out, part):
            done.add(name)
        else:
            print(f"pcv-batch: shard {name}: its committed files are missing or changed; classifying it again",
                  file=sys.stderr)
            del old["parts"][name]
            old["status"] = "running"
    if done:
        print(f"pcv-batch: resuming: {len(done)} of {len(old['shards'])} shard(s) committed and verified", file=sys.stderr)
    return old, done


def _intact(out: OutDir, part: dict) -> bool:
    try:
        for key in ("part", "errors"):
            if part.get(key) and out.digest(part[key]) != (part[f"{key}_bytes"], part[f"{key}_sha256"]):
                return False
    except (OSError, KeyError, TypeError):
        return False
    return True


def _init_ray(ray, args: argparse.Namespace) -> bool:
    """Connect to --ray-address, or start a local instance (True: this process started it)."""
    verbose = os.environ.get("PCV_RAY_LOG") == "1"  # Ray's own logs and the workers' output on stderr
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("ray").setLevel(level)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": level, "log_to_driver": verbose}
    if ray.is_initialized():
        return False
    try:
        if args.ray_address:
            ray.init(address=args.ray_address, **kwargs)
        else:
            ray.init(address="local", **kwargs)  # never a cluster found through RAY_ADDRESS or an earlier `ray start`
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray instance"
        raise PcvError(f"cannot start or reach {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return True


def _execute(ray, args, out: OutDir, out_format: str, manifest: dict, todo: list[Shard], actors: int,
             model_path: Path, model_sha: str, engine: dict, reader: ReaderConfig) -> None:
    from dataclasses import asdict

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_consecutive_actor_init_deaths = INIT_DEATHS
    ctx.verbose_stats_logs = False
    cpus = args.cpus_per_actor or 1
    gpus = args.gpus_per_actor or 0
    have = ray.cluster_resources()
    print(f"pcv-batch: Ray cluster of {len(ray.nodes())} node(s), {have.get('CPU', 0):g} CPU(s)"
          + (f", {have.get('GPU', 0):g} GPU(s)" if have.get("GPU") else "") +
          f"; {actors} actor(s) x {cpus} CPU(s)" + (f" + {gpus:g} GPU(s)" if gpus else "") +
          f", {len(todo)} shard(s) to classify", file=sys.stderr)
    # The model travels in Ray's object store (owned by this driver, on its node): no node needs the file.
    model_ref = ray.put(Path(model_path).read_bytes())
    items = [{"shard": json.dumps(s.to_dict())} for s in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # a block per shard: a task per shard
    # ONNX Runtime's threads in all = the actor's CPUs (never its default of every host core): on CPU one
    # thread per run and a run per CPU, as the local engine's default; on GPU one run of `cpus` threads.
    split = {"threads": cpus, "concurrent_runs": 1} if gpus else {"threads": 1, "concurrent_runs": cpus}
    ds = ds.map_batches(ShardWorker, batch_size=1, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus or None,
                        # the reference in a list: Ray passes it on as it is, and each actor fetches the bytes
                        fn_constructor_kwargs={"model": [model_ref], "model_sha256": model_sha,
                                               "engine": {**engine, **split},
                                               "reader": asdict(reader), "out_format": out_format,
                                               "out_dir": out.given if out.fs is not None else out.base})
    seen: set[str] = set()
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(manifest["shards"]), initial=len(manifest["shards"]) - len(todo), unit="shard",
                   desc="pcv-batch", file=sys.stderr)
    try:
        for row in ds.iter_rows():
            res = json.loads(str(row["result"]))
            if "fatal" in res:
                raise PcvError(res["fatal"])
            name = f"{res['index']:05d}"
            seen.add(f"provider {res.get('provider')}, {res.get('threads')} thread(s)")
            manifest["parts"][name] = {k: v for k, v in res.items() if k != "index"}
            _save(out, manifest)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(records=f"{sum(p['records'] for p in manifest['parts'].values()):,}", refresh=False)
    except PcvError:
        raise
    except Exception as e:  # a Ray error: its first line, not its traceback
        raise PcvError(f"the Ray job failed: {_ray_message(e)}; the committed shards stand: rerun with --resume") from None
    finally:
        if bar is not None:
            bar.close()
    nodes = {manifest["parts"][f"{s.index:05d}"].get("node", "?") for s in todo if f"{s.index:05d}" in manifest["parts"]}
    print(f"pcv-batch: workers ran {', '.join(sorted(seen))} on {len(nodes)} node(s)", file=sys.stderr)
    manifest["workers"] = sorted(seen)


def _discard(out: OutDir, created: bool) -> None:
    """A fresh job that committed nothing: its manifest and temporary files go (and the directory, if it made it)."""
    for name in out.names():  # the directory was empty or new: what matches is this run's
        if name == MANIFEST or OWN_TMP.fullmatch(name) or OWN_PART.fullmatch(name):
            with contextlib.suppress(OSError):
                out.remove(name)
    if created and out.fs is None:
        with contextlib.suppress(OSError):
            os.rmdir(out.base)


def _ray_message(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, PcvError):
        return str(cause)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def _totals(manifest: dict) -> dict[str, int]:
    parts = manifest["parts"].values()
    return {k: sum(int(p[k]) for p in parts) for k in ("records", "classified", "failed", "truncated")}


def _confusion(manifest: dict, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    for p in manifest["parts"].values():
        if p.get("confusion"):
            m += np.array(p["confusion"], np.int64)
    return m


def _finish(args, out: OutDir, manifest: dict, labels, t0: float) -> int:
    from .cli import EXIT_OK, EXIT_SOME_FAILED

    missing = [s["index"] for s in manifest["shards"] if f"{s['index']:05d}" not in manifest["parts"]]
    if missing:
        raise PcvError(f"{len(missing)} shard(s) came back from no worker (first: {missing[0]}); rerun with --resume")
    for name in out.names():  # what killed workers left behind
        if OWN_TMP.fullmatch(name):
            with contextlib.suppress(OSError):
                out.remove(name)
    tot = _totals(manifest)
    manifest["status"], manifest["totals"] = "complete", tot
    _save(out, manifest)
    out.write_atomic(SUCCESS, b"")
    dt = time.perf_counter() - t0
    print(f"pcv-batch: classified {tot['classified']}, failed {tot['failed']}, truncated {tot['truncated']} in "
          f"{dt:.1f}s ({tot['classified'] / dt if dt > 0 else 0:.1f} records/s); parts in {args.output}"
          + (f", errors in {args.output}/errors-*.jsonl" if tot["failed"] else ""), file=sys.stderr)
    _score(args, manifest, labels)
    return EXIT_SOME_FAILED if tot["failed"] else EXIT_OK


def _score(args, manifest: dict, labels) -> None:
    """The local engine's score (cli.Score) of the merged shards: accuracy, what was not scored, per-class metrics."""
    from .cli import Score
    from .metrics import format_report, report, write_report

    if not args.label_field:
        return
    score = Score(tuple(labels), None)
    score.matrix = _confusion(manifest, len(labels))
    for name in sorted(manifest["parts"]):
        part = manifest["parts"][name]
        score.unlabelled += part.get("unlabelled", 0)
        score.unusable += part.get("unusable", 0)
        score.first_unusable = score.first_unusable or part.get("first_unusable", "")
    print(f"pcv-batch: {score.summary(args.label_field, resumed=False)}", file=sys.stderr)
    if not score.scored:
        return
    rep = report(score.matrix, score.names)
    print(format_report(rep), file=sys.stderr)
    if args.metrics:
        write_report(rep, args.metrics)
        print(f"pcv-batch: per-class metrics in {args.metrics}", file=sys.stderr)


def _already_complete(args, manifest: dict, labels) -> int:
    from .cli import EXIT_OK, EXIT_SOME_FAILED

    tot = _totals(manifest)
    print(f"pcv-batch: {args.output} is already complete ({tot['records']:,} records: {tot['classified']:,} classified, "
          f"{tot['failed']:,} failed); its parts were checked against the manifest", file=sys.stderr)
    _score(args, manifest, labels)
    return EXIT_SOME_FAILED if tot["failed"] else EXIT_OK

