"""The one exception family of pcv, and the console-script guard: CLIs print one line (never a
traceback) and exit non-zero."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable


class PcvError(Exception):
    """Base of every error pcv raises on purpose; the message says what to do."""


class InputError(PcvError):
    """An input file cannot be read at all (missing, unknown format, wrong field names)."""


class ModelError(PcvError):
    """A model file or directory cannot be used (missing, corrupt, untrusted, wrong contract)."""


class ProviderError(PcvError):
    """An execution provider that was asked for is not available."""


def describe_os_error(e: OSError) -> str:
    """One line naming the file and the errno, for any OSError."""
    code = errno.errorcode.get(e.errno or 0, "")
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}" + (f" ({code})" if code else "")


def console_script(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Wrap a console script's main: a PcvError or OSError is one line and exit 2, Ctrl-C exit 130, and
    anything unexpected one line naming it (exit 2; PCV_TRACEBACK=1 shows the traceback)."""

    def wrap(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            try:
                return fn(argv)
            except PcvError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except OSError as e:
                print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr)
            except Exception as e:
                if os.environ.get("PCV_TRACEBACK"):
                    raise
                first = (str(e).splitlines() or [""])[0][:300]
                print(f"{prog}: internal error: {type(e).__name__}: {first} (a bug in pcv: please report it; "
                      f"PCV_TRACEBACK=1 shows where)", file=sys.stderr)
            return 2

        return main

    return wrap
