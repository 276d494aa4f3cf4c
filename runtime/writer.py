"""Output: one JSON line per input record (predictions), and one per bad record (errors file)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from .pipeline import Result
from .readers import JsonNumber


def json_value(value: Any) -> str:
    """Strict JSON (no NaN/Infinity) for one value; a JsonNumber id is written as its source text."""
    if isinstance(value, JsonNumber):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(json_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {json_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _line(head: dict[str, Any], rec_id: Any, tail: dict[str, Any]) -> str:
    parts = [f"{json.dumps(k)}: {json_value(v)}" for k, v in head.items()]
    parts.append(f'"id": {json_value(rec_id)}')
    parts += [f"{json.dumps(k)}: {json_value(v)}" for k, v in tail.items()]
    return "{" + ", ".join(parts) + "}"


def prediction_line(res: Result, id2label: dict[int, str], source: str | None = None, line: int | None = None) -> str:
    assert res.probs is not None
    best = int(np.argmax(res.probs))
    tail: dict[str, Any] = {
        "label": id2label[best],
        "score": round(float(res.probs[best]), 6),
        "probs": {id2label[i]: round(float(p), 6) for i, p in enumerate(res.probs)},
    }
    if res.truncated:
        tail["truncated"] = True
    head: dict[str, Any] = {"input": source} if source is not None else {}
    if line is not None:  # --engine ray: the parts of a job are joined back by (input, line)
        head["line"] = line
    return _line(head, res.record.id, tail)


def error_line(res: Result, source: str) -> str:
    rec = res.record
    return _line({"input": source, "line": rec.line}, rec.id, {"error": rec.error})


class LazyFile:
    """A text file opened on first write (an errors file only exists when there are errors).

    `append` continues a resumed file; `size` is its committed length in bytes."""

    def __init__(self, path: str | None, *, append: bool = False, size: int = 0) -> None:
        self.path = path
        self.append = append
        self.size = size
        self._f: IO[bytes] | None = None

    def write_line(self, line: str) -> None:
        # A lone surrogate (an id read from "\ud800") becomes the JSON escape \ud800 again.
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if self._f is None:
            if self.path is None or self.path == "-":
                self._f = sys.stdout.buffer
            else:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "ab" if self.append else "wb")
        self._f.write(data)
        self.size += len(data)

    def flush(self, durable: bool = False) -> None:
        if self._f is not None:
            self._f.flush()
            if durable and self._f is not sys.stdout.buffer:
                os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None and self._f is not sys.stdout.buffer:
            self._f.close()
        elif self._f is not None:
            self._f.flush()
