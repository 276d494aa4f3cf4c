"""Output formats: predictions are staged as JSON lines (what --resume checks and continues) and,
for CSV or Parquet, converted once the job is complete. Same fields in every format."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .readers import JsonNumber

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
FORMATS = ("jsonl", "csv", "parquet")
PARQUET_ROWS = 65_536  # rows per Parquet row group (and held in memory while converting)


def output_format(path: str, explicit: str | None, stream: bool) -> str:
    """The format from --output-format, else from the suffix (JSONL when it says nothing)."""
    fmt = explicit or _SUFFIXES.get(Path(path).suffix.lower(), "jsonl")
    if fmt not in FORMATS:
        raise ConfigError(f"--output-format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt != "jsonl" and stream:
        raise ConfigError(f"-o {path}: {fmt} is written as a file once the job is done; name a file (or use JSONL)")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError('Parquet output needs pyarrow: pip install "pcv[parquet]"') from None
    return fmt


def _id_text(value: Any) -> str | None:
    """An id as text: a number exactly as written, a string as it is, anything else as its JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    from .writer import json_value

    return json_value(value)


def _rows(part: Path, labels: tuple[str, ...]) -> Iterator[list[Any]]:
    with open(part, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line, parse_int=JsonNumber, parse_float=JsonNumber)
            row = [d["input"]] if "input" in d else []
            row += [int(d["line"])] if "line" in d else []
            row += [_id_text(d["id"]), d["label"], float(d["score"])]
            row += [float(d["probs"][name]) for name in labels]
            row.append(bool(d.get("truncated", False)))
            yield row


def columns(labels: tuple[str, ...], multi: bool, line: bool = False) -> list[str]:
    return ((["input"] if multi else []) + (["line"] if line else []) + ["id", "label", "score"] +
            [f"prob_{n}" for n in labels] + ["truncated"])


def convert(part: Path, dest: Path, fmt: str, labels: tuple[str, ...], multi: bool, line: bool = False) -> None:
    """Write the staged JSON lines `part` as `fmt` to `dest` (a temporary name, fsynced; the caller renames);
    `line`: the records carry their line (the parts of --engine ray)."""
    WRITERS[fmt](part, dest, labels, columns(labels, multi, line))
    with open(dest, "rb") as f:
        os.fsync(f.fileno())


def _csv(part: Path, dest: Path, labels: tuple[str, ...], cols: list[str]) -> None:
    with open(dest, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for row in _rows(part, labels):
            w.writerow(["true" if v is True else "false" if v is False else "" if v is None else v for v in row])


def _parquet(part: Path, dest: Path, labels: tuple[str, ...], cols: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"input": pa.string(), "line": pa.int64(), "id": pa.string(), "label": pa.string(), "score": pa.float64(), "truncated": pa.bool_()}
    schema = pa.schema([(c, types.get(c, pa.float64())) for c in cols])
    with pq.ParquetWriter(dest, schema) as w:
        chunk: list[list[Any]] = []
        for row in _rows(part, labels):
            chunk.append(row)
            if len(chunk) == PARQUET_ROWS:
                w.write_table(pa.Table.from_pylist([dict(zip(cols, r)) for r in chunk], schema=schema))
                chunk = []
        if chunk:
            w.write_table(pa.Table.from_pylist([dict(zip(cols, r)) for r in chunk], schema=schema))


WRITERS: dict[str, Callable[[Path, Path, tuple[str, ...], list[str]], None]] = {"csv": _csv, "parquet": _parquet}
