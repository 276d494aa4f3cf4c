"""Output: one JSON line per input record (predictions), and one per bad record (errors file)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from .pipeline import Result


def prediction_line(res: Result, id2label: dict[int, str], source: str | None = None) -> str:
    assert res.probs is not None
    best = int(np.argmax(res.probs))
    out: dict[str, Any] = {}
    if source is not None:
        out["input"] = source
    out["id"] = res.record.id
    out["label"] = id2label[best]
    out["score"] = round(float(res.probs[best]), 6)
    out["probs"] = {id2label[i]: round(float(p), 6) for i, p in enumerate(res.probs)}
    if res.truncated:
        out["truncated"] = True
    return json.dumps(out, ensure_ascii=False)


def error_line(res: Result, source: str) -> str:
    rec = res.record
    return json.dumps({"input": source, "line": rec.line, "id": rec.id, "error": rec.error}, ensure_ascii=False)


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
