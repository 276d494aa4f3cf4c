"""Resumable output: a small state file beside the output records how far the job durably got.

The predictions and errors are written to staged files beside their outputs (see outputs.py).
After every committed window both are flushed and fsynced, then the state — records consumed,
the job's classified/failed counts, the byte length and sha256 of what each staged file holds,
and a fingerprint of the inputs (by content), the model and the options — is replaced atomically.
--resume trusts nothing it has not checked: the staged bytes must hash to the recorded digest and
end at a line break before the uncommitted tail is cut off; a complete job's files must exist and
match. When the job is done the state is marked complete first, then the staged files are renamed
into place, so a kill between the two is finished by --resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import PcvError
from .modelfile import file_sha256

STATE_VERSION = 2
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def state_path(output: Path) -> Path:
    return Path(str(output) + ".pcv-state.json")


def _digest_and_lines(path: str | Path, limit: int | None = None) -> tuple[hashlib._Hash, int]:
    """sha256 of a file's first `limit` bytes (all when None), as a hasher that can go on, and their line breaks."""
    h = hashlib.sha256()
    lines = 0
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            lines += chunk.count(b"\n")
            if left is not None:
                left -= len(chunk)
    return h, lines


def fingerprint(inputs: list[str], model: Path, options: dict) -> dict:
    """What a resumed job must share with the interrupted one: inputs by content, the model, the options."""
    def file_id(p: str) -> dict:
        return {"path": os.path.abspath(p), "size": os.path.getsize(p), "sha256": file_sha256(p)}

    return {"inputs": [file_id(p) for p in inputs], "model_sha256": file_sha256(model), "options": options}


@dataclass
class State:
    fingerprint: dict
    records: int = 0  # input records consumed (classified or failed) and durably written
    classified: int = 0
    failed: int = 0
    truncated: int = 0
    confusion: list = field(default_factory=list)  # with --label-field: (C, C) counts so far, row = true label
    out_part: str = ""  # the staged files' names, in their outputs' folders ("" before the first line)
    err_part: str = ""
    out_bytes: int = 0  # committed bytes of each, and their sha256
    err_bytes: int = 0
    out_sha256: str = EMPTY_SHA256
    err_sha256: str = EMPTY_SHA256
    complete: bool = False
    final_sha256: str = ""  # CSV/Parquet output: sha256 of the converted file once published ("" for JSONL)
    version: int = STATE_VERSION


_COUNTS = ("records", "classified", "failed", "truncated", "out_bytes", "err_bytes")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _validate(d: object, output: Path, error_name: str) -> State:
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    if d.get("version") != STATE_VERSION:
        raise ValueError(f"version {d.get('version')!r}, this pcv writes {STATE_VERSION}")
    known = {f.name for f in fields(State)}
    if set(d) != known:
        raise ValueError(f"keys differ from {sorted(known)}")
    for k in _COUNTS:
        if type(d[k]) is not int or not 0 <= d[k] < 2**62:
            raise ValueError(f"{k} = {d[k]!r} is not a count")
    if d["classified"] + d["failed"] != d["records"] or d["truncated"] > d["classified"]:
        raise ValueError("the counts do not add up")
    m = d["confusion"]
    if not isinstance(m, list) or not all(isinstance(r, list) and len(r) == len(m) for r in m) \
            or not all(type(v) is int and v >= 0 for r in m for v in r) or sum(map(sum, m)) > d["classified"]:
        raise ValueError("confusion is not a square matrix of counts within the records classified")
    for k in ("out_sha256", "err_sha256"):
        if not isinstance(d[k], str) or not _HEX64.fullmatch(d[k]):
            raise ValueError(f"{k} is not a sha256")
    if not isinstance(d["final_sha256"], str) or (d["final_sha256"] and not _HEX64.fullmatch(d["final_sha256"])):
        raise ValueError("final_sha256 is not a sha256")
    for k, final in (("out_part", output.name), ("err_part", error_name)):
        v = d[k]
        if not isinstance(v, str) or (v and not re.fullmatch(re.escape(final) + r"\.pcv-[0-9a-f]{8}\.part", v)):
            raise ValueError(f"{k} = {v!r} is not a staged file of {final}")
    if not isinstance(d["fingerprint"], dict) or type(d["complete"]) is not bool:
        raise ValueError("fingerprint or complete has the wrong type")
    return State(**d)


def load_state(output: Path, error_name: str) -> State | None:
    p = state_path(output)
    if not p.is_file():
        return None
    try:
        return _validate(json.loads(p.read_bytes()), output, error_name)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise PcvError(f"{p}: the resume state is damaged or from another pcv ({e}); rerun without --resume "
                       f"to start again") from None


def remove_stale_tmp(output: Path) -> None:
    """State files a killed run was writing (STATE.PID.tmp): only the lock holder calls this."""
    p = state_path(output)
    for tmp in p.parent.glob(f"{glob_escape(p.name)}.*.tmp"):
        if re.fullmatch(re.escape(p.name) + r"\.\d+\.tmp", tmp.name):
            tmp.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def save_state(output: Path, state: State) -> None:
    p = state_path(output)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(asdict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:
            e.filename = str(p)
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_resumable(state: State, fp: dict, output: str) -> None:
    old = state.fingerprint
    for key, what in (("inputs", "input files"), ("model_sha256", "model"), ("options", "options")):
        if old.get(key) != fp.get(key):
            raise PcvError(f"{output}: cannot resume: the {what} differ from the interrupted run "
                           f"(was {json.dumps(old.get(key))[:200]}); rerun without --resume to start again")


def verify_prefix(path: Path, size: int, sha256: str, what: str, lines: int) -> hashlib._Hash:
    """Check that `path` starts with the committed bytes (length, digest, a line break at the end, one
    line per record the state counts) and cut off what came after; returns the hasher of the kept
    bytes, to go on with."""
    again = "; rerun without --resume to start again"
    if not path.is_file():
        if size:
            raise PcvError(f"{path}: the {what} is missing, but the resume state says {size:,} bytes were committed{again}")
        return hashlib.sha256()
    actual = path.stat().st_size
    if actual < size:
        raise PcvError(f"{path}: the {what} is shorter ({actual:,} bytes) than the resume state says ({size:,}){again}")
    h, n = _digest_and_lines(path, size)
    if h.hexdigest() != sha256:
        raise PcvError(f"{path}: the {what}'s first {size:,} bytes changed since they were committed{again}")
    if n != lines:
        raise PcvError(f"{path}: the committed {what} hold {n:,} lines but the resume state counts {lines:,} records{again}")
    if size:
        with open(path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                raise PcvError(f"{path}: the committed {what} does not end at a line break{again}")
    with open(path, "r+b") as f:
        f.truncate(size)  # drop a torn or uncommitted tail
    return h


def verify_whole(path: Path, size: int, sha256: str, lines: int) -> bool:
    """Whether `path` holds exactly the committed bytes, one line per record the state counts."""
    if not path.is_file() or path.stat().st_size != size:
        return False
    h, n = _digest_and_lines(path)
    return h.hexdigest() == sha256 and n == lines
