"""Streaming readers for JSONL, CSV and plain text (optionally .gz, or stdin).

Every record keeps its 1-based line number. A bad record does not stop the file: it comes out
with `error` set and `text` None, so the caller can report it and go on. Memory stays flat: files
are read line by line.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from .errors import InputError


class FieldNotFoundError(InputError):
    """The text field is in none of a file's leading records: the option is wrong, not the records."""


@dataclass(frozen=True, slots=True)
class Record:
    line: int  # 1-based line where the record starts
    id: Any  # the id field's value, else the line number
    text: str | None  # None when the record is bad
    label: Any = None  # raw label value when a label field was asked for
    error: str | None = None  # readable reason when the record is bad


@dataclass(frozen=True, kw_only=True)
class ReaderConfig:
    text_field: str = "text"  # JSONL key / CSV column holding the review
    id_field: str | None = "id"  # optional; records without it get their line number
    label_field: str | None = None  # training, pcv-check and pcv-batch --label-field ask for labels
    label_required: bool = True  # False: a JSONL record without the label field is read, its label None
    format: str | None = None  # jsonl | csv | txt; None = from the file suffix
    # A longer line is reported as bad without being held in memory: no review is this long, and
    # the model reads only the first max_length bytes anyway.
    max_line_bytes: int = 16 * 2**20
    # JSONL: when this many leading records (or all of a shorter file) are objects without the text
    # field, the field name is wrong, not the records: stop with an InputError listing the keys seen.
    # 0 = off (every such record is one bad record).
    probe_text_field: int = 0


class JsonNumber(str):
    """A JSON number kept as its source text (`1E2`, `1e400`, `12345678901234567891.0`), so an id
    is written back exactly as it was read; the writer emits it unquoted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"JsonNumber({str(self)})"


def check_input_path(path: str) -> None:
    """An input that cannot be opened at all: one clear InputError (a FIFO or device is a stream, fine)."""
    if path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: is a directory; name the files inside it (e.g. {path.rstrip('/')}/*.jsonl)")
    if not p.exists():
        raise InputError(f"{path}: no such file")


def is_stream(path: str) -> bool:
    """stdin, a FIFO, a process substitution or a device: read once, front to back (not resumable)."""
    if path == "-":
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _open_binary(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    check_input_path(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def detect_format(path: str, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in READERS:
            raise InputError(f"format {explicit!r} is unknown: use one of {', '.join(READERS)}")
        return explicit
    if path == "-":
        return "jsonl"
    name = path[:-3] if path.endswith(".gz") else path
    suffix = Path(name).suffix.lower().lstrip(".")
    fmt = _SUFFIXES.get(suffix)
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the format from the suffix {suffix!r}; "
            f"pass --format ({', '.join(READERS)})"
        )
    return fmt


def _utf8_error(e: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 at byte {e.start}"  # a UTF-16 file is told apart before its lines (_whole_file_problem)


def _binary_lines(stream: IO[bytes], path: str, limit: int, first_line: int = 1
                  ) -> Iterator[tuple[int, bytes | None, str | None, bool]]:
    """(line number, raw line without its newline or None, error, fatal); `first_line`: the number of
    the stream's first line (a byte range of a file starts past its line 1).

    A line over `limit` bytes is skipped in 1 MiB chunks (never held whole) and comes out as an
    error; a broken file (truncated .gz, read error) ends the stream with a fatal error.
    """
    line = first_line - 1
    try:
        while raw := stream.readline(limit + 1):
            line += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                n = len(raw)
                while (chunk := stream.readline(2**20)) and not chunk.endswith(b"\n"):
                    n += len(chunk)
                n += len(chunk)
                yield line, None, f"line is {n:,} bytes, over the {limit:,}-byte limit (raise it with --max-line-bytes)", False
                continue
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark is not part of the text
            yield line, raw.rstrip(b"\r\n") if raw.endswith(b"\n") else raw, None, False
    except gzip.BadGzipFile as e:
        if line == 0:
            yield 1, None, f"{path}: not a gzip file ({e}); drop the .gz suffix if it is plain text", True
        else:
            yield line + 1, None, f"{path}: file is damaged after line {line} ({type(e).__name__}: {e})", True
    except (EOFError, OSError) as e:
        yield line + 1, None, f"{path}: file is damaged after line {line} ({type(e).__name__}: {e})", True


def _records_lines(stream: IO[bytes], path: str, cfg: ReaderConfig, first_line: int = 1
                   ) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Non-blank lines as (line, raw, None), bad ones as (line, None, error); ends after a fatal error."""
    for line, raw, bad, fatal in _binary_lines(stream, path, cfg.max_line_bytes, first_line):
        if bad is not None:
            yield line, None, bad
            if fatal:
                return
        elif raw is not None and raw.strip():  # blank lines are not records
            yield line, raw, None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; other tools do not


def _field(obj: dict[str, Any], name: str, line: int) -> tuple[Any, str | None]:
    if name not in obj:
        return None, f"field {name!r} is missing (keys: {', '.join(map(str, list(obj)[:8]))})"
    return obj[name], None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def label_index(raw: Any, names: Sequence[str]) -> tuple[int | None, str | None]:
    """A label given as an id (an int or a digit string) or as one of names: (its id, None), or (None, why not)."""
    if isinstance(raw, bool):
        return None, f"label {raw!r} is a boolean; use an id or one of {list(names)}"
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().lstrip("-").isdigit()):
        i = int(raw)
        if not 0 <= i < len(names):
            return None, f"label id {i} is out of range 0..{len(names) - 1}"
        return i, None
    if isinstance(raw, str) and raw in names:
        return list(names).index(raw), None
    return None, f"label {raw!r} is neither an id nor one of {list(names)}"


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _raw_id(text: str, id_field: str) -> Any:
    """The id as written in the source: numbers (at any depth) as JsonNumber, never as floats that
    overflow to inf or lose digits."""
    return json.loads(text, parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_no_constants)[id_field]


class _FieldProbe:
    """Counts leading JSONL objects that lack the text field; any record that has it disarms the probe."""

    def __init__(self, path: str, cfg: ReaderConfig) -> None:
        self.path, self.field, self.limit = path, cfg.text_field, cfg.probe_text_field
        self.missing = 0
        self.keys: collections.Counter[str] = collections.Counter()
        self.armed = self.limit > 0

    def saw(self, obj: dict[str, Any]) -> None:
        if not self.armed:
            return
        if self.field in obj:
            self.armed = False
            return
        self.missing += 1
        self.keys.update(map(str, obj))
        if self.missing >= self.limit:
            self.fail(f"none of the first {self.missing:,} records")

    def end(self) -> None:
        if self.armed and self.missing:
            self.fail(f"none of its {self.missing:,} records" if self.missing > 1 else "its only record")

    def fail(self, which: str) -> None:
        seen = ", ".join(f"{k!r} ({n:,})" for k, n in self.keys.most_common(12)) or "none"
        has = "lacks" if which == "its only record" else "has"
        raise FieldNotFoundError(f"{self.path}: {which} {has} the field {self.field!r} (keys seen: {seen}); "
                                 f"pass --text-field with the key that holds the text")


def read_jsonl(stream: IO[bytes], path: str, cfg: ReaderConfig, first_line: int = 1) -> Iterator[Record]:
    probe = _FieldProbe(path, cfg)
    yield from _read_jsonl(stream, path, cfg, probe, first_line)
    probe.end()


def _read_jsonl(stream: IO[bytes], path: str, cfg: ReaderConfig, probe: _FieldProbe, first_line: int = 1
                ) -> Iterator[Record]:
    for line, raw, bad in _records_lines(stream, path, cfg, first_line):
        if bad is not None:
            yield Record(line, line, None, error=bad)
            continue
        assert raw is not None
        try:
            decoded = raw.decode("utf-8")
            obj = json.loads(decoded, parse_constant=_no_constants)
        except UnicodeDecodeError as e:
            yield Record(line, line, None, error=_utf8_error(e))
            continue
        except json.JSONDecodeError as e:
            yield Record(line, line, None, error=f"invalid JSON: {e.msg} at column {e.colno}")
            continue
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, arrays nested 100,000 deep
            yield Record(line, line, None, error=f"invalid JSON: {type(e).__name__}: {str(e)[:120]}")
            continue
        if not isinstance(obj, dict):
            yield Record(line, line, None, error=f"expected a JSON object, got {type(obj).__name__}")
            continue
        probe.saw(obj)
        rid = obj.get(cfg.id_field, line) if cfg.id_field else line
        if cfg.id_field and cfg.id_field in obj and not isinstance(rid, str) and rid is not None:  # numbers exactly as written
            rid = _raw_id(decoded, cfg.id_field)
        text, err = _field(obj, cfg.text_field, line)
        if err is None and not isinstance(text, str):
            err = f"field {cfg.text_field!r} is {type(text).__name__}, expected a string"
        # "\ud800" is valid JSON but not encodable text. Strict UTF-8 decoding cannot produce a
        # surrogate, only such an escape can: look for one before paying for an encode per record.
        if err is None and _SURROGATE_ESCAPE.search(raw) and _has_surrogates(text):
            err = f"field {cfg.text_field!r} holds an unpaired UTF-16 surrogate escape; it is not valid text"
        label = None
        if err is None and cfg.label_field and (cfg.label_required or cfg.label_field in obj):
            label, err = _field(obj, cfg.label_field, line)
        yield Record(line, rid, text if err is None else None, label, err)


def read_txt(stream: IO[bytes], path: str, cfg: ReaderConfig, first_line: int = 1) -> Iterator[Record]:
    extra = 0  # line breaks that were a lone CR (classic Mac files): each one starts a new line too
    for line, raw, bad in _records_lines(stream, path, cfg, first_line):
        if bad is not None:
            yield Record(line + extra, line + extra, None, error=bad)
            continue
        assert raw is not None
        pieces = raw.split(b"\r")
        for k, piece in enumerate(pieces):
            n = line + extra + k
            if not piece.strip():
                continue
            try:
                yield Record(n, n, piece.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield Record(n, n, None, error=_utf8_error(e))
        extra += len(pieces) - 1


def read_csv(stream: IO[bytes], path: str, cfg: ReaderConfig) -> Iterator[Record]:
    # surrogateescape keeps invalid bytes visible so one bad row does not stop the file.
    text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    csv.field_size_limit(cfg.max_line_bytes)  # a longer field is one bad row; the csv module skips its line
    reader = csv.reader(text_stream, strict=True)  # an unbalanced quote is an error, never records swallowed in silence
    try:
        header = next(reader)
    except StopIteration:
        return
    except (EOFError, OSError) as e:
        yield Record(1, 1, None, error=f"{path}: file is damaged ({e})")
        return
    if cfg.text_field not in header:
        raise InputError(f"{path}: line 1: no column {cfg.text_field!r} in the header {header}; pass --text-field")
    ti = header.index(cfg.text_field)
    ii = header.index(cfg.id_field) if cfg.id_field and cfg.id_field in header else None
    li = None
    if cfg.label_field:
        if cfg.label_field not in header:
            raise InputError(f"{path}: line 1: no column {cfg.label_field!r} in the header {header}")
        li = header.index(cfg.label_field)
    prev_end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = prev_end + 1
            span = f" (lines {line}-{reader.line_num}: a quote opened there runs on; no record in them was read)" \
                if reader.line_num > line else ""
            yield Record(line, line, None, error=f"invalid CSV: {e}{span}")
            prev_end = reader.line_num
            continue
        except (EOFError, OSError) as e:
            line = prev_end + 1
            yield Record(line, line, None, error=f"{path}: file is damaged after line {prev_end} ({e})")
            return
        line = prev_end + 1
        prev_end = reader.line_num
        if not row:
            continue
        rid = row[ii] if ii is not None and ii < len(row) else line
        if len(row) != len(header):
            yield Record(line, rid, None, error=f"expected {len(header)} columns, got {len(row)}")
            continue
        text = row[ti]
        if _has_surrogates(text):
            yield Record(line, rid, None, error=f"invalid UTF-8 in column {cfg.text_field!r}")
            continue
        yield Record(line, rid, text, row[li] if li is not None else None)


PARQUET_BATCH = 8192  # rows decoded at a time


def read_parquet(stream: IO[bytes], path: str, cfg: ReaderConfig, first_line: int = 1,
                 row_groups: Sequence[int] | None = None) -> Iterator[Record]:
    """Parquet rows as records, `line` the 1-based row number (`first_line`: the number of the
    first row of `row_groups`, when only some are read). A null or non-string text is a bad record;
    a missing text column, or one that holds no strings, is an InputError for the file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f'{path}: reading Parquet needs pyarrow: pip install "pcv[parquet]"') from None
    try:
        pf = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as e:
        yield Record(1, 1, None, error=f"{path}: not a readable Parquet file ({e})")
        return
    names = pf.schema_arrow.names
    if cfg.text_field not in names:
        raise FieldNotFoundError(f"{path}: no column {cfg.text_field!r} in {names}; pass --text-field")
    if not pa.types.is_string(t := pf.schema_arrow.field(cfg.text_field).type) and not pa.types.is_large_string(t):
        raise InputError(f"{path}: column {cfg.text_field!r} is {t}, expected strings")
    if cfg.label_field and cfg.label_required and cfg.label_field not in names:
        raise InputError(f"{path}: no column {cfg.label_field!r} in {names}")
    cols = [c for c in dict.fromkeys((cfg.text_field, cfg.id_field, cfg.label_field)) if c and c in names]
    row = first_line
    try:
        for batch in pf.iter_batches(PARQUET_BATCH, row_groups=row_groups, columns=cols):
            data = batch.to_pydict()
            texts = data[cfg.text_field]
            ids = data.get(cfg.id_field) if cfg.id_field else None
            labels = data.get(cfg.label_field) if cfg.label_field else None
            for k, text in enumerate(texts):
                rid = ids[k] if ids is not None and ids[k] is not None else row
                if text is None:
                    yield Record(row, rid, None, error=f"field {cfg.text_field!r} is null")
                elif _has_surrogates(text):
                    yield Record(row, rid, None, error=f"invalid UTF-8 in column {cfg.text_field!r}")
                else:
                    yield Record(row, rid, text, labels[k] if labels is not None else None)
                row += 1
    except (pa.ArrowException, OSError) as e:
        yield Record(row, row, None, error=f"{path}: file is damaged at row {row} ({type(e).__name__}: {e})")


READERS: dict[str, Callable[..., Iterator[Record]]] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "txt": read_txt,
    "parquet": read_parquet,
}
_SUFFIXES = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv", "txt": "txt", "text": "txt",
             "parquet": "parquet", "pq": "parquet"}


@dataclass
class ReadProgress:
    """How far the readers got: bytes of the input files read so far (compressed bytes for .gz)."""

    done: int = 0  # bytes of the files finished
    current: Any = None  # the raw file being read (its tell() is the position)

    @property
    def bytes(self) -> int:
        try:
            return self.done + (self.current.tell() if self.current is not None else 0)
        except (OSError, ValueError):
            return self.done


def read_records(path: str, cfg: ReaderConfig = ReaderConfig(), progress: ReadProgress | None = None) -> Iterator[Record]:
    """Stream the records of one file ('-' for stdin); `progress` follows the bytes read.

    >>> for rec in read_records("reviews.jsonl"):  # doctest: +SKIP
    ...     print(rec.line, rec.text or rec.error)
    """
    fmt = detect_format(path, cfg.format)
    stream = _open_binary(path)
    if progress is not None and stream is not sys.stdin.buffer:
        progress.current = getattr(stream, "fileobj", None) or stream  # a GzipFile's compressed file
    try:
        yield from read_stream(stream, path, cfg, fmt=fmt)
    finally:
        if progress is not None and progress.current is not None:
            progress.done, progress.current = progress.done + os.path.getsize(path), None
        if stream is not sys.stdin.buffer:
            stream.close()


def read_stream(stream: IO[bytes], path: str, cfg: ReaderConfig, *, fmt: str, first_line: int = 1,
                row_groups: Sequence[int] | None = None) -> Iterator[Record]:
    """The records of an open file or of a part of one (`first_line` > 1: a byte range that starts
    at that line; Parquet: `row_groups`, whose first row is `first_line`). A part past the file's
    start skips the whole-file checks and the wrong --text-field probe, which read a file's head."""
    if first_line == 1 and (bad := _whole_file_problem(stream, path)) is not None:
        yield Record(1, 1, None, error=bad)  # one error for the file, not one per line of garbage
        return
    if first_line > 1 and cfg.probe_text_field:
        cfg = replace(cfg, probe_text_field=0)
    if fmt == "parquet":
        yield from read_parquet(stream, path, cfg, first_line, row_groups)
    elif fmt == "csv":
        if first_line != 1:
            raise ValueError("a CSV file is read whole: a quoted field may hold line breaks")
        yield from read_csv(stream, path, cfg)
    else:
        yield from READERS[fmt](stream, path, cfg, first_line)


def _whole_file_problem(stream: IO[bytes], path: str) -> str | None:
    """A file that is not UTF-8 text at all, told from its first bytes: UTF-16, or gzip without .gz."""
    try:
        head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""  # type: ignore[attr-defined]
    except (OSError, EOFError, gzip.BadGzipFile):
        return None  # the format reader reports the damage with its line
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return (f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); convert it to UTF-8: "
                f"iconv -f UTF-16 -t UTF-8")
    if head.startswith(b"\x1f\x8b") and not path.endswith(".gz"):
        return f"{path}: the file is gzip-compressed but not named .gz; rename it to {path}.gz"
    return None


def _label_key(raw: Any) -> str | None:
    """A label value as the name it stands for: strings as they are, integers as their digits."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, str) and raw.strip():
        return raw.strip().lstrip("+") if raw.strip().lstrip("+-").isdigit() else raw
    return None


def read_labelled(paths: Sequence[str], *, names: Sequence[str] | None = None, text_field: str = "text",
                  label_field: str = "label", limit: int | None = None) -> tuple[list[str], Any, tuple[str, ...]]:
    """The texts of labelled files, their labels as ids, and the label names.

    With `names`, labels are ids 0..C-1 or those names. Without, the names are read from the data:
    its distinct labels, sorted (numerically when all are integers). A bad record is an InputError
    naming file, line and field: training and scoring data must be clean."""
    import numpy as np

    texts: list[str] = []
    raw: list[Any] = []
    rc = ReaderConfig(text_field=text_field, label_field=label_field, id_field=None)
    for path in paths:
        for rec in read_records(path, rc):
            if rec.error:
                raise InputError(f"{path}: line {rec.line}: {rec.error}")
            if names is not None:
                gold, why = label_index(rec.label, names)
                if gold is None:
                    raise InputError(f"{path}: line {rec.line}: field {label_field!r}: {why}; --labels sets the names")
                raw.append(gold)
            else:
                key = _label_key(rec.label)
                if key is None:
                    raise InputError(f"{path}: line {rec.line}: field {label_field!r} = {rec.label!r} is not a label "
                                     f"(a name or an integer)")
                raw.append(key)
            texts.append(rec.text)  # type: ignore[arg-type]
            if limit and len(texts) >= limit:
                break
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise InputError(f"{', '.join(paths)}: no labelled records")
    if names is not None:
        return texts, np.array(raw, dtype=np.int64), tuple(names)
    found = set(raw)
    order = sorted(found, key=int) if all(k.lstrip("-").isdigit() for k in found) else sorted(found)
    index = {k: i for i, k in enumerate(order)}
    return texts, np.array([index[k] for k in raw], dtype=np.int64), tuple(order)
