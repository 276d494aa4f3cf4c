"""Shards: the units of work of a distributed pcv-batch job (--engine ray), and the work on one.

The driver reads each input once (scan): its sha256 for the manifest, and for uncompressed JSONL
and TXT the byte offset of every GRAIN-th line, so that a shard is a byte range that starts at a
known line number. CSV (a quoted field may hold line breaks), .gz and a TXT file with lone CR line
breaks are one shard each; Parquet is cut at row groups. A worker reads its shard with pcv's own
readers, classifies it with pcv's pipeline and commits the predictions as OUT/part-NNNNN.EXT and
the bad records as OUT/errors-NNNNN.jsonl: each written under a hidden temporary name, then
renamed, errors first. A shard done twice (a retry after a lost worker) writes the same bytes
under the same names, so the committed parts hold every record once.

Inputs and the output directory may be local paths (on a cluster: a filesystem every node mounts)
or URIs that pyarrow.fs opens (s3://, gs://, hdfs://, with their packages installed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import InputError
from .outputs import fsync_dir
from .readers import ReaderConfig, Record, detect_format, read_stream

GRAIN = 256  # lines between the offsets a scan keeps: shards are cut at multiples of it
BLOCK = 8 * 2**20  # bytes read at a time by a scan
MIN_SHARD_LINES, MAX_SHARD_LINES = 512, 32_768
SHARDS_PER_ACTOR = 4  # a lost actor costs at most about a quarter of its share; a slow one is balanced out
TMP_PREFIX = ".tmp-"  # a temporary name never ends in .jsonl/.parquet: a reader of OUT/*.jsonl never sees one
# The files of a job: its parts, and the temporary names pcv writes them under (FINAL-XXXXXXXX)
OWN_PART = re.compile(r"(part-\d{5,}\.(jsonl|parquet)|errors-\d{5,}\.jsonl)")
OWN_TMP = re.compile(r"\.tmp-(part-\d{5,}\.(jsonl|parquet)(\.jsonl)?|errors-\d{5,}\.jsonl|manifest\.json|_SUCCESS)-[0-9a-f]{8}")


def is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(path: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(path)
    except Exception as e:  # pyarrow: an unknown scheme, or a filesystem whose package is not installed
        raise InputError(f"{path}: cannot open this URI ({type(e).__name__}: {e})") from None


def open_input(path: str) -> IO[bytes]:
    """A seekable binary file: a local path, or a URI through pyarrow.fs."""
    if not is_uri(path):
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file on {socket.gethostname()} (on a cluster, inputs must be on "
                             f"storage every node sees: a shared filesystem or s3://...)") from None
    filesystem, inner = _filesystem(path)
    try:
        return filesystem.open_input_file(inner)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None


class _Range(io.RawIOBase):
    """Bytes [start, end) of a file, as a stream of their own."""

    def __init__(self, f: IO[bytes], start: int, end: int) -> None:
        f.seek(start)
        self.f, self.left = f, end - start

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        if n <= 0:
            return 0
        data = self.f.read(n)
        b[: len(data)] = data
        self.left -= len(data)
        return len(data)


@dataclass(frozen=True)
class Shard:
    index: int
    input: str  # as given on the command line
    fmt: str  # jsonl | txt | csv | parquet
    kind: str  # "bytes" (a line-aligned byte range), "rows" (Parquet row groups [start, end)), "file" (all of it)
    start: int
    end: int
    first_line: int  # line (row) number of the shard's first record
    path: str = ""  # what a worker opens: the absolute path (a worker's working directory is not the driver's), or the URI

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Shard:
        return Shard(**{k: d[k] for k in ("index", "input", "fmt", "kind", "start", "end", "first_line", "path")})

    @property
    def source(self) -> str:
        return self.path or self.input

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


@dataclass
class Scan:
    """One input as the driver read it."""

    path: str
    fmt: str
    size: int
    sha256: str
    lines: int  # line breaks (+1 for a last line without one); rows for Parquet
    offsets: list[int]  # byte offset of line k * GRAIN + 1 (k >= 1), when the file can be cut; row-group sizes for Parquet
    splittable: bool


def scan(path: str, fmt_option: str | None = None) -> Scan:
    fmt = detect_format(path, fmt_option)
    splittable = fmt in ("jsonl", "txt") and not path.endswith(".gz")
    sha, size, lines, offsets = hashlib.sha256(), 0, 0, []
    with open_input(path) as f:  # UTF-16, or gzip without .gz: one shard, whose reader reports the file once
        if f.read(4).startswith((b"\xff\xfe", b"\xfe\xff", b"\x1f\x8b")):
            splittable = False
    lone_cr, last = False, b"\n"
    with open_input(path) as f:
        while block := f.read(BLOCK):
            sha.update(block)
            if splittable:
                nl = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
                # line k*GRAIN + 1 starts after the (k*GRAIN)-th line break
                take = np.arange(GRAIN - lines % GRAIN - 1, len(nl), GRAIN)
                offsets += (size + nl[take] + 1).tolist()
                lines += len(nl)
                if fmt == "txt" and block.count(b"\r") != block.count(b"\r\n"):
                    lone_cr = True  # (a CR at the end of a block counts as lone: the file is then read whole)
            size += len(block)
            last = block[-1:]
    if splittable and size and last != b"\n":
        lines += 1
    if offsets and offsets[-1] >= size:
        offsets.pop()  # a break at the very end starts no line
    if fmt == "parquet":
        offsets, lines = _row_groups(path)
    return Scan(path, fmt, size, sha.hexdigest(), lines, offsets, splittable and not lone_cr)


def _row_groups(path: str) -> tuple[list[int], int]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f'{path}: reading Parquet needs pyarrow: pip install "pcv[parquet]"') from None
    try:
        with open_input(path) as f:
            meta = pq.ParquetFile(f).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except InputError:
        raise
    except Exception:
        return [], 0  # not readable as Parquet: one shard, whose reader reports the file as one bad record
    return sizes, sum(sizes)


def shard_lines(scans: list[Scan], actors: int, asked: int | None = None) -> int:
    """Lines per shard, a multiple of GRAIN: `asked` rounded up, else about SHARDS_PER_ACTOR shards per
    actor within [MIN_SHARD_LINES, MAX_SHARD_LINES]."""
    if asked is None:
        total = sum(s.lines for s in scans)
        asked = min(MAX_SHARD_LINES, max(MIN_SHARD_LINES, -(-total // max(1, SHARDS_PER_ACTOR * actors))))
    return -(-asked // GRAIN) * GRAIN


def plan(scans: list[Scan], lines_per_shard: int) -> list[Shard]:
    shards: list[Shard] = []

    def add(s: Scan, kind: str, start: int, end: int, first_line: int) -> None:
        where = s.path if is_uri(s.path) else os.path.abspath(s.path)
        shards.append(Shard(len(shards), s.path, s.fmt, kind, start, end, first_line, where))

    step = lines_per_shard // GRAIN
    for s in scans:
        if s.fmt == "parquet" and s.offsets:
            group, row, n = 0, 1, 0
            for k, rows in enumerate(s.offsets):
                n += rows
                if n >= lines_per_shard or k == len(s.offsets) - 1:
                    add(s, "rows", group, k + 1, row)
                    group, row, n = k + 1, row + n, 0
        elif s.splittable and s.size:
            cuts = s.offsets[step - 1 :: step]  # offsets[i] starts line (i + 1) * GRAIN + 1
            starts, lines = [0, *cuts], [1, *((k + 1) * lines_per_shard + 1 for k in range(len(cuts)))]
            for k, (a, first) in enumerate(zip(starts, lines)):
                add(s, "bytes", a, starts[k + 1] if k + 1 < len(starts) else s.size, first)
        else:
            add(s, "file", 0, s.size, 1)
    return shards


def read_shard(shard: Shard, cfg: ReaderConfig) -> Iterator[Record]:
    f = open_input(shard.source)
    try:
        if shard.kind == "rows":
            yield from read_stream(f, shard.input, cfg, fmt="parquet", first_line=shard.first_line,
                                   row_groups=range(shard.start, shard.end))
            return
        if shard.kind == "file":
            stream: IO[bytes] = gzip.GzipFile(fileobj=f) if shard.input.endswith(".gz") else io.BufferedReader(
                _Range(f, 0, shard.end), 2**20)  # type: ignore[assignment]
            if shard.fmt == "parquet":
                stream = f
        else:
            stream = io.BufferedReader(_Range(f, shard.start, shard.end), 2**20)  # type: ignore[assignment]
        yield from read_stream(stream, shard.input, cfg, fmt=shard.fmt, first_line=shard.first_line)
    finally:
        f.close()


# -- the output directory ------------------------------------------------------------------------------------


class OutDir:
    """The job's output directory, local (writes fsynced, renames atomic) or a pyarrow.fs URI."""

    def __init__(self, given: str) -> None:
        self.given = given.rstrip("/") or given
        if is_uri(given):
            self.fs, self.base = _filesystem(given)
        else:
            self.fs, self.base = None, os.path.abspath(given)

    def path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def makedirs(self) -> None:
        if self.fs is None:
            os.makedirs(self.base, exist_ok=True)
        else:
            self.fs.create_dir(self.base, recursive=True)

    def names(self) -> list[str]:
        if self.fs is None:
            return sorted(os.listdir(self.base)) if os.path.isdir(self.base) else []
        from pyarrow import fs

        info = self.fs.get_file_info(self.base)
        if info.type == fs.FileType.NotFound:
            return []
        return sorted(i.base_name for i in self.fs.get_file_info(fs.FileSelector(self.base)))

    def exists(self, name: str) -> bool:
        if self.fs is None:
            return os.path.exists(self.path(name))
        from pyarrow import fs

        return self.fs.get_file_info(self.path(name)).type != fs.FileType.NotFound

    def read(self, name: str) -> bytes:
        if self.fs is None:
            with open(self.path(name), "rb") as f:
                return f.read()
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def digest(self, name: str) -> tuple[int, str]:
        sha, n = hashlib.sha256(), 0
        opener = open(self.path(name), "rb") if self.fs is None else self.fs.open_input_stream(self.path(name))
        with opener as f:
            while block := f.read(BLOCK):
                sha.update(block)
                n += len(block)
        return n, sha.hexdigest()

    def open_write(self, name: str) -> IO[bytes]:
        if self.fs is None:
            return open(self.path(name), "wb")
        return self.fs.open_output_stream(self.path(name))

    def commit(self, tmp: str, final: str) -> None:
        """Rename tmp over final (atomic on a local filesystem; an object store's move is a copy whose result
        appears whole)."""
        if self.fs is None:
            with open(self.path(tmp), "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.path(tmp), self.path(final))
            fsync_dir(Path(self.base))
        else:
            self.fs.move(self.path(tmp), self.path(final))

    def write_atomic(self, name: str, data: bytes) -> None:
        tmp = f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        with self.open_write(tmp) as f:
            f.write(data)
        self.commit(tmp, name)

    def remove(self, name: str) -> None:
        if self.fs is None:
            os.unlink(self.path(name))
        else:
            self.fs.delete_file(self.path(name))


class _HashedWriter:
    """Lines to a temporary file of OutDir, with their sha256 and count (opened on the first line when lazy)."""

    def __init__(self, out: OutDir, final: str, lazy: bool) -> None:
        self.out, self.final = out, final
        self.tmp = f"{TMP_PREFIX}{final}-{uuid.uuid4().hex[:8]}"
        self.sha, self.size, self.lines = hashlib.sha256(), 0, 0
        self.f: IO[bytes] | None = None if lazy else out.open_write(self.tmp)

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if self.f is None:
            self.f = self.out.open_write(self.tmp)
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        self.lines += 1

    def close(self) -> None:
        if self.f is not None:
            self.f.close()

    def discard(self) -> None:
        self.close()
        if self.f is not None:
            try:
                self.out.remove(self.tmp)
            except OSError:
                pass


def part_name(shard: Shard, out_format: str) -> str:
    return f"part-{shard.name}.{'parquet' if out_format == 'parquet' else 'jsonl'}"


def errors_name(shard: Shard) -> str:
    return f"errors-{shard.name}.jsonl"


def classify_shard(shard: Shard, tc, cfg: ReaderConfig, out: OutDir, out_format: str) -> dict[str, Any]:
    """Classify one shard and commit its files; returns what the manifest records of it. `tc` is a
    TextClassifier. Bad records become error records; a problem with the whole input (unreadable, a
    wrong --text-field) raises a PcvError."""
    from .cli import Score
    from .pipeline import classify_records
    from .writer import error_line, prediction_line

    t0 = time.perf_counter()
    labels, id2label = tc.labels, tc.session.info.id2label
    score = Score(labels, None)
    pred = _HashedWriter(out, part_name(shard, "jsonl") if out_format == "jsonl" else f"{part_name(shard, out_format)}.jsonl",
                         lazy=False)
    err = _HashedWriter(out, errors_name(shard), lazy=True)
    classified = failed = truncated = 0
    try:
        for res in classify_records(read_shard(shard, cfg), tc.session, tc.config):
            if res.probs is None:
                err.write_line(error_line(res, shard.input))
                failed += 1
            else:
                pred.write_line(prediction_line(res, id2label, shard.input, line=res.record.line))
                classified += 1
                truncated += res.truncated
                if cfg.label_field:
                    score.add(res, shard.input)
        pred.close()
        err.close()
        result: dict[str, Any] = {"index": shard.index, "records": classified + failed, "classified": classified,
                                  "failed": failed, "truncated": truncated}
        if err.f is not None:
            out.commit(err.tmp, err.final)
            result.update(errors=err.final, errors_bytes=err.size, errors_sha256=err.sha.hexdigest())
        if out_format == "jsonl":
            out.commit(pred.tmp, pred.final)
            result.update(part=pred.final, part_bytes=pred.size, part_sha256=pred.sha.hexdigest())
        else:
            result.update(_converted(shard, out, pred, out_format, labels))
    except BaseException:
        pred.discard()
        err.discard()
        raise
    if cfg.label_field:
        result["confusion"] = score.matrix.tolist()
        result.update(unlabelled=score.unlabelled, unusable=score.unusable, first_unusable=score.first_unusable)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _converted(shard: Shard, out: OutDir, pred: _HashedWriter, out_format: str, labels: tuple[str, ...]
               ) -> dict[str, Any]:
    """The staged JSON lines as Parquet (or CSV), converted in a local temporary folder, then committed."""
    import tempfile
    from pathlib import Path

    from .formats import convert

    final = part_name(shard, out_format)
    with tempfile.TemporaryDirectory(prefix="pcv-part-") as tmp:
        staged, conv = Path(tmp) / "part.jsonl", Path(tmp) / "part.conv"
        with open(staged, "wb") as f:
            f.write(out.read(pred.tmp))
        out.remove(pred.tmp)
        convert(staged, conv, out_format, labels, multi=True, line=True)
        data = conv.read_bytes()
    tmp_name = f"{TMP_PREFIX}{final}-{uuid.uuid4().hex[:8]}"
    with out.open_write(tmp_name) as f:
        f.write(data)
    out.commit(tmp_name, final)
    return {"part": final, "part_bytes": len(data), "part_sha256": hashlib.sha256(data).hexdigest()}


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=False)
