"""What every console script shares: one line per error (never a traceback) and --help that shows
every default."""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from collections.abc import Callable

from .errors import PcvError

# A missing optional library -> the extra that installs it (pyproject.toml)
_EXTRAS = {"torch": "export", "transformers": "export", "onnx": "export", "onnxscript": "export", "safetensors": "export",
           "sklearn": "train", "matplotlib": "bench", "optimum": "bench", "pyarrow": "parquet", "ray": "ray"}


def fail(msg: str) -> int:
    """A usage error a console script found itself: one line on stderr, exit 2."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0].rsplit("/", 1)[-1].startswith("pcv-") else "pcv"
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add "(default: X)" to each option's help that does not already say its default."""
    for action in parser._actions:
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == [] or d == () or not action.option_strings \
                or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
            continue
        text = action.help or ""
        if "default" not in text.lower():
            value = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
            action.help = f"{text} (default: {str(value).replace('%', '%%')})".strip()
    return parser


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
            except ModuleNotFoundError as e:
                extra = _EXTRAS.get((e.name or "").split(".")[0])
                if extra is not None:
                    print(f"{prog}: error: {prog} needs {e.name}, which is not installed: pip install \"pcv[{extra}]\"",
                          file=sys.stderr)
                else:
                    print(f"{prog}: internal error: ModuleNotFoundError: {e} (a bug in pcv: please report it)", file=sys.stderr)
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
