"""pcv.runtime and pcv-batch must work where torch, transformers and onnx cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys

BLOCK = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'transformers', 'onnx', 'onnxscript'):\n"
    "            raise ImportError(f'{name} is blocked in this test')\n"
    "sys.meta_path.insert(0, _Block())\n"
)


def test_runtime_imports_and_classifies_without_torch(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a lovely film"}\n{"text": "awful"}\n')
    out = tmp_path / "out.jsonl"
    code = BLOCK + (
        "import pcv.runtime\n"
        "from pcv.runtime.cli import main\n"
        f"rc = main([{str(src)!r}, '-o', {str(out)!r}, '-q'])\n"
        "assert pcv.runtime.TextClassifier().predict(['a lovely film']) in (['neg'], ['pos'])\n"
        "assert not {'torch', 'onnx'} & set(sys.modules), 'torch or onnx was imported'\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["label"] in ("neg", "pos") for line in out.read_text().splitlines()] == [True, True]


def test_blocking_works():
    r = subprocess.run([sys.executable, "-c", BLOCK + "import torch"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "blocked" in r.stderr


def test_each_package_lists_what_the_others_import():
    """train/ and bench/ use pcv.export only through the names its __init__ lists (and those load)."""
    import re
    from pathlib import Path

    import pcv.export
    import pcv.train

    root = Path(__file__).resolve().parents[1]
    for pkg, api in (("export", pcv.export.__all__), ("train", pcv.train.__all__)):
        for folder in ("train", "bench", "export", "runtime"):
            if folder == pkg:
                continue
            for f in (root / folder).glob("*.py"):
                text = f.read_text(encoding="utf-8")
                assert not re.search(rf"from pcv\.{pkg}\.\w+ import", text), f"{f} imports a pcv.{pkg} module directly"
                for names in re.findall(rf"from pcv\.{pkg} import ([\w, ]+)", text):
                    for name in names.split(","):
                        assert name.strip() in api, f"{f}: pcv.{pkg}.{name.strip()} is not in pcv.{pkg}.__all__"
    assert callable(pcv.export.load_classifier) and callable(pcv.train.write_split)
