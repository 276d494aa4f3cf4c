"""Streaming readers for JSONL, CSV and plain text (optionally .gz, or stdin).

Every record keeps its 1-based line number. A bad record does not stop the file: it comes out
with `error` set and `text` None, so the caller can report it and go on. Memory stays flat: files
are read line by line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import InputError


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


def _open_binary(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    if p.suffix == ".gz":
        return gzip.open(p, "rb")  # type: ignore[return-value]
    return open(p, "rb")


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


def _utf8_error(raw: bytes, line: int, e: UnicodeDecodeError) -> str:
    if line == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "invalid UTF-8: the file starts with a UTF-16 byte-order mark; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"
    return f"invalid UTF-8 at byte {e.start}"


def _binary_lines(stream: IO[bytes], path: str, limit: int) -> Iterator[tuple[int, bytes | None, str | None, bool]]:
    """(line number, raw line without its newline or None, error, fatal).

    A line over `limit` bytes is skipped in 1 MiB chunks (never held whole) and comes out as an
    error; a broken file (truncated .gz, read error) ends the stream with a fatal error.
    """
    line = 0
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
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        yield line + 1, None, f"{path}: file is damaged after line {line} ({type(e).__name__}: {e})", True


def _records_lines(stream: IO[bytes], path: str, cfg: ReaderConfig) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Non-blank lines as (line, raw, None), bad ones as (line, None, error); ends after a fatal error."""
    for line, raw, bad, fatal in _binary_lines(stream, path, cfg.max_line_bytes):
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


def read_jsonl(stream: IO[bytes], path: str, cfg: ReaderConfig) -> Iterator[Record]:
    for line, raw, bad in _records_lines(stream, path, cfg):
        if bad is not None:
            yield Record(line, line, None, error=bad)
            continue
        assert raw is not None
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
        except UnicodeDecodeError as e:
            yield Record(line, line, None, error=_utf8_error(raw, line, e))
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
        rid = obj.get(cfg.id_field, line) if cfg.id_field else line
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


def read_txt(stream: IO[bytes], path: str, cfg: ReaderConfig) -> Iterator[Record]:
    for line, raw, bad in _records_lines(stream, path, cfg):
        if bad is not None:
            yield Record(line, line, None, error=bad)
            continue
        assert raw is not None
        try:
            yield Record(line, line, raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield Record(line, line, None, error=_utf8_error(raw, line, e))


def read_csv(stream: IO[bytes], path: str, cfg: ReaderConfig) -> Iterator[Record]:
    # surrogateescape keeps invalid bytes visible so one bad row does not stop the file.
    text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    csv.field_size_limit(cfg.max_line_bytes)  # a longer field is one bad row; the csv module skips its line
    reader = csv.reader(text_stream)
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
            yield Record(line, line, None, error=f"invalid CSV: {e}")
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


READERS: dict[str, Callable[[IO[bytes], str, ReaderConfig], Iterator[Record]]] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "txt": read_txt,
}
_SUFFIXES = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv", "txt": "txt", "text": "txt"}


def read_records(path: str, cfg: ReaderConfig = ReaderConfig()) -> Iterator[Record]:
    """Stream the records of one file ('-' for stdin).

    >>> for rec in read_records("reviews.jsonl"):  # doctest: +SKIP
    ...     print(rec.line, rec.text or rec.error)
    """
    fmt = detect_format(path, cfg.format)
    stream = _open_binary(path)
    try:
        yield from READERS[fmt](stream, path, cfg)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
