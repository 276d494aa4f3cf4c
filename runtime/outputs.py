"""Where pcv-batch writes, and how it never destroys what it did not create.

- Every output (predictions, errors, resume state, lock) is compared with every input and the model
  by resolved path and by (device, inode) before anything is opened for writing.
- One writer per output: an exclusive `flock` on `OUT.pcv-lock`, held for the whole run.
- A regular output is staged: written beside the old file under a unique name
  (`OUT.pcv-1a2b3c4d.part`) and renamed over it when the job is done, so an old output survives
  a failed or interrupted run. A symlink is written through to its target.
- A stream (stdout, a device such as /dev/null, a FIFO) is written through and never unlinked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import PcvError


class OutputError(PcvError):
    """An output cannot be written where it was asked for, or would overwrite an input, the model or another writer."""


@dataclass(frozen=True)
class Target:
    """An output path as given, and where pcv-batch will really write it."""

    given: str  # as the user wrote it ("-" for stdout)
    path: Path  # resolved: a symlink is written through to its target
    stream: bool  # stdout, a device or a FIFO: written through, never staged, renamed or unlinked
    role: str  # how the user named it: "-o", "--errors"

    def kind(self) -> str:
        if self.given == "-":
            return "stdout"
        return _kind(os.stat(self.given).st_mode)

    def beside(self, suffix: str) -> Path:
        return Path(str(self.path) + suffix)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "a regular file"


def target(given: str, role: str) -> Target:
    """Check an output path before anything is written: a directory, a parent that is a file or a
    folder that cannot be written is an OutputError; a missing folder is fine (made later)."""
    if given == "-":
        return Target(given, Path("-"), True, role)
    try:
        st = os.stat(given)  # follows a symlink to its target
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise OutputError(f"{role} {given}: cannot use it as output ({e.strerror})") from e
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{role} {given}: is a directory; name a file in it, e.g. {given.rstrip('/')}/preds.jsonl")
    if st is not None and not stat.S_ISREG(st.st_mode):
        return Target(given, Path(given), True, role)
    path = Path(os.path.realpath(given))
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{role} {given}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{role} {given}: the directory {folder} is not writable")
    return Target(given, path, False, role)


def _identity(path: str | Path, fd: int | None = None) -> tuple[str | None, tuple[int, int] | None]:
    """(resolved path, (device, inode)) of a path, or of an open descriptor (stdin/stdout as "-").
    A character device (a terminal, /dev/null) has no identity here: reading and writing one
    destroys nothing."""
    try:
        st = os.fstat(fd) if fd is not None else os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISCHR(st.st_mode):
        return None, None
    return (None if fd is not None else os.path.realpath(path)), (st.st_dev, st.st_ino) if st else None


def check_distinct(writes: list[tuple[str, str | Path]], reads: list[tuple[str, str | Path]]) -> None:
    """No output may be an input, the model, or another output: same resolved path or same
    (device, inode), hard links, symlinks and a redirected stdout/stdin ("-") included; the null
    device may take several outputs (a character device is never an input's file). Names are (what, path) pairs."""
    named = [(what, str(p), _identity(p, 1 if str(p) == "-" else None)) for what, p in writes]
    named += [(what, str(p), _identity(p, 0 if str(p) == "-" else None)) for what, p in reads]
    for i in range(len(writes)):
        what_a, a, (real_a, ino_a) = named[i]
        for k, (what_b, b, (real_b, ino_b)) in enumerate(named[i + 1:], start=i + 1):
            same = (real_a is not None and real_a == real_b) or (ino_a is not None and ino_a == ino_b)
            if same:
                a_name = "stdout" if a == "-" else a
                b_name = ("stdin" if k >= len(writes) else "stdout") if b == "-" else b
                raise OutputError(f"{what_a} {a_name} is the same file as {what_b} {b_name}; name another output "
                                  f"(nothing was written)")


class OutputLock:
    """An exclusive flock on `PATH.pcv-lock`, held while a run writes PATH; the lock file holds the pid."""

    def __init__(self, path: Path, role: str) -> None:
        self.path = Path(str(path) + ".pcv-lock")
        self.output, self.role = path, role
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise OutputError(f"{self.role} {self.output}: another pcv-batch (pid {pid}) is writing it "
                                  f"(lock {self.path}); wait for it to finish or stop it") from None
            # A run that just finished removes its lock file: make sure ours is still the one at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            self.release()
            e.filename = e.filename or str(self.path)
            raise

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def new_part_name(final: Path) -> str:
    return f"{final.name}.pcv-{secrets.token_hex(4)}.part"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LineSink:
    """JSON lines to one output. Regular files are staged in `part` (beside `final`) and renamed
    into place by `publish`; streams are written through. `lazy`: the file appears on the first
    line (an errors file exists only when there are errors). `size` and `sha256` cover every byte
    written since the part was started, so a resume can check what it continues."""

    def __init__(self, tgt: Target, *, part: str | None = None, lazy: bool = False, size: int = 0,
                 hasher: hashlib._Hash | None = None) -> None:
        self.target = tgt
        self.part = None if tgt.stream else tgt.path.parent / (part or new_part_name(tgt.path))
        self.size = size
        self.hasher = hasher or hashlib.sha256()
        self.resumed = part is not None  # a part named by the resume state: continued, even at 0 bytes
        self._f: IO[bytes] | None = None
        if not lazy:
            self._open()

    @property
    def started(self) -> bool:
        return self._f is not None or self.size > 0

    def _open(self) -> None:
        if self.target.given == "-":
            if sys.stdout is None:
                raise OutputError("stdout is closed; name an output file with -o")
            self._f = sys.stdout.buffer
        elif self.target.stream:
            self._f = open(self.target.given, "ab")  # append: /dev/stdout redirected to a file is not truncated
        else:
            assert self.part is not None
            self.part.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.part, "ab" if self.resumed else "xb")

    def _named(self, e: OSError) -> OSError:
        if e.filename is None:  # a failed write() names no file: say which output it was
            e.filename = str(self.part or self.target.given)
        return e

    def write_line(self, line: str) -> None:
        # A lone surrogate (an id read from "\ud800") becomes the JSON escape \ud800 again.
        data = (line + "\n").encode("utf-8", "backslashreplace")
        try:
            if self._f is None:
                self._open()
            assert self._f is not None
            self._f.write(data)
        except OSError as e:
            raise self._named(e) from None
        self.hasher.update(data)
        self.size += len(data)

    def flush(self, durable: bool = False) -> None:
        if self._f is not None:
            try:
                self._f.flush()
                if durable and not self.target.stream:
                    os.fsync(self._f.fileno())
            except OSError as e:
                raise self._named(e) from None

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.flush()
            except OSError as e:
                if f is not sys.stdout.buffer:
                    with contextlib.suppress(OSError):
                        f.close()
                raise self._named(e) from None
            if f is not sys.stdout.buffer:
                f.close()

    def publish(self) -> None:
        """Put the staged file in place of the old output (a stream is already where it goes)."""
        self.close()
        if self.part is not None and self.part.exists():
            os.replace(self.part, self.target.path)
            fsync_dir(self.target.path.parent)

    def discard(self) -> None:
        self.close()
        if self.part is not None:
            try:
                self.part.unlink()
            except FileNotFoundError:
                pass


def remove_stale(tgt: Target) -> bool:
    """The errors file of an earlier run of the same output, when this run had no errors."""
    if tgt.stream or not tgt.path.is_file():
        return False
    tgt.path.unlink()
    return True
