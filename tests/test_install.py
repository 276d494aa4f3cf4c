"""A plain, non-editable install carries the bundled model, and pcv-batch finds it from any dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_finds_bundled_model(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "pcv" / "models" / "imdb-perceiver" / "model.onnx").is_file()
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "r.txt").write_text("What a great movie!\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", "from pcv.runtime.cli import main; import sys; sys.exit(main(['r.txt', '-q']))"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(target) in r.stderr  # the model came from the installed copy, not the checkout
    assert json.loads(r.stdout.splitlines()[0])["label"] in ("neg", "pos")
