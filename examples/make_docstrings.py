"""Write a 4-class dataset of real, human-written short texts: the first paragraph of docstrings
(40-300 bytes) of numpy, scikit-learn, torch and Python's standard library, labelled by where they
come from. `python examples/make_docstrings.py DIR` writes DIR/train.jsonl (3,200) and
DIR/test.jsonl (800), 1,000 per label, seeded. The texts depend on the installed versions of those
packages (pip install "pcv[train]" installs all three), so figures on it hold for one environment.
Unlike examples/make_tickets.py, nothing repeats: a classifier must generalise from the words.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

STDLIB = ("email", "http", "asyncio", "urllib", "xml", "json", "logging", "concurrent", "multiprocessing", "unittest",
          "tkinter", "sqlite3", "zipfile.py", "tarfile.py", "ftplib.py", "smtplib.py", "imaplib.py", "socket.py",
          "ssl.py", "subprocess.py", "shutil.py", "pathlib.py", "argparse.py", "calendar.py", "datetime.py",
          "decimal.py", "csv.py")
PER_LABEL, TRAIN = 1000, 3200


def sources() -> dict[str, list[Path]]:
    import numpy
    import sklearn
    import torch

    std = Path(sysconfig.get_paths()["stdlib"])
    return {"torch": [Path(torch.__file__).parent], "sklearn": [Path(sklearn.__file__).parent],
            "numpy": [Path(numpy.__file__).parent], "stdlib": [std / d for d in STDLIB]}


def paragraphs(root: Path):
    for f in [root] if root.suffix == ".py" else sorted(root.rglob("*.py")):
        if {"test", "tests"} & set(f.parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                doc = ast.get_docstring(node)
                if doc:
                    p = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
                    if 40 <= len(p.encode()) <= 300 and not p.startswith((">>>", "..")):
                        yield p


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python examples/make_docstrings.py DIR", file=sys.stderr)
        return 2
    rng = random.Random(3)
    data = []
    for label, roots in sources().items():
        texts = sorted({p for r in roots if r.exists() for p in paragraphs(r)})
        if len(texts) < PER_LABEL:
            print(f"{label}: only {len(texts)} docstring paragraphs found, {PER_LABEL} needed", file=sys.stderr)
            return 1
        rng.shuffle(texts)
        data += [{"text": t, "label": label} for t in texts[:PER_LABEL]]
    rng.shuffle(data)
    for i, r in enumerate(data):
        r["id"] = f"d{i}"
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data[:TRAIN]), encoding="utf-8")
    (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data[TRAIN:]), encoding="utf-8")
    print(f"wrote {out}/train.jsonl ({TRAIN:,}) and {out}/test.jsonl ({len(data) - TRAIN:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
