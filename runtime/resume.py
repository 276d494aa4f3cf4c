"""Resumable output: a small state file beside the output records how far the job durably got.

After every committed window the output and errors files are flushed and fsynced, then the state
(records consumed, byte lengths of both files, fingerprint of inputs/model/options) is replaced
atomically. On --resume both files are cut back to the committed lengths (dropping a torn or
uncommitted tail), the committed records are skipped in the input, and writing continues. A
finished job is marked complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import PcvError


def state_path(output: str) -> Path:
    return Path(output + ".pcv-state.json")


def fingerprint(inputs: list[str], model: Path, options: dict) -> dict:
    def file_id(p: str) -> dict:
        st = os.stat(p)
        return {"path": os.path.abspath(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    h = hashlib.sha256()
    with open(model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"inputs": [file_id(p) for p in inputs], "model_sha256": h.hexdigest(), "options": options}


@dataclass
class State:
    fingerprint: dict
    records: int = 0  # input records consumed (classified or failed) and durably written
    out_bytes: int = 0
    err_bytes: int = 0
    complete: bool = False
    scored: int = 0  # with --label-field: records scored against their label so far, and those right
    correct: int = 0


def load_state(output: str) -> State | None:
    p = state_path(output)
    if not p.is_file():
        return None
    try:
        return State(**json.loads(p.read_text()))
    except (ValueError, TypeError) as e:
        raise PcvError(f"{p}: the resume state is damaged ({e}); delete it and rerun without --resume") from e


def save_state(output: str, state: State) -> None:
    p = state_path(output)
    tmp = p.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(state.__dict__, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    dfd = os.open(p.parent or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_resumable(state: State, fp: dict, output: str) -> None:
    old = state.fingerprint
    for key, what in (("inputs", "input files"), ("model_sha256", "model"), ("options", "options")):
        if old.get(key) != fp.get(key):
            raise PcvError(f"{output}: cannot resume: the {what} differ from the interrupted run "
                           f"(was {json.dumps(old.get(key))[:200]}); rerun without --resume to start again")


def truncate_to(path: str, size: int) -> None:
    """Cut a file back to its committed length (repairs a torn last line)."""
    if not os.path.exists(path):
        if size:
            raise PcvError(f"{path}: missing, but the resume state says {size} bytes were written; rerun without --resume")
        return
    actual = os.path.getsize(path)
    if actual < size:
        raise PcvError(f"{path}: shorter ({actual} bytes) than the resume state says ({size}); rerun without --resume")
    with open(path, "r+b") as f:
        f.truncate(size)
