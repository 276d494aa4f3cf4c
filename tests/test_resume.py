"""pcv-batch --resume: an interrupted run (Ctrl-C, or a kill leaving a torn line) finishes with every
record exactly once, in order, with the predictions of an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from pcv.runtime import session as session_mod
from pcv.runtime.cli import main


@pytest.fixture()
def src(tmp_path, review_texts):
    p = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(review_texts[:90])]
    lines.insert(40, "{broken json")
    p.write_text("\n".join(lines) + "\n")
    return p


def _run(src, out, model, *extra):
    return main([str(src), "-o", str(out), "--model", str(model), "--window", "10", "--batch-size", "4", "-q", *extra])


@contextlib.contextmanager
def _interrupted_at_run(n, monkeypatch):
    """Ctrl-C during the n-th session.run, as a user would press it mid-file."""
    real = session_mod.OnnxClassifier.logits
    calls = {"n": 0}

    def flaky(self, ids, mask):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, ids, mask)

    monkeypatch.setattr(session_mod.OnnxClassifier, "logits", flaky)
    yield
    monkeypatch.setattr(session_mod.OnnxClassifier, "logits", real)


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, src, tiny_dir, monkeypatch, capsys):
    full = tmp_path / "full.jsonl"
    assert _run(src, full, tiny_dir) == 1  # one bad line
    out = tmp_path / "part.jsonl"
    with _interrupted_at_run(9, monkeypatch):
        assert _run(src, out, tiny_dir) == 130
    assert "--resume" in capsys.readouterr().err
    state = json.loads((tmp_path / "part.jsonl.pcv-state.json").read_text())
    assert 0 < state["records"] < 91 and not state["complete"]
    assert not out.exists()  # predictions are staged beside the output until the job is done
    with open(tmp_path / state["out_part"], "ab") as f:
        f.write(b'{"id": 999, "label": "po')  # a torn last line, as after a power cut
    assert _run(src, out, tiny_dir, "--resume") == 1
    assert out.read_bytes() == full.read_bytes()
    assert (tmp_path / "part.jsonl.errors.jsonl").read_text().count("\n") == 1
    assert json.loads((tmp_path / "part.jsonl.pcv-state.json").read_text())["complete"]
    assert sorted(p.name for p in tmp_path.glob("part.jsonl*")) == ["part.jsonl", "part.jsonl.errors.jsonl",
                                                                    "part.jsonl.pcv-state.json"]
    assert _run(src, out, tiny_dir, "--resume") == 1  # already complete: nothing to do, the job's status
    assert "already complete" in capsys.readouterr().err


def test_resumed_run_scores_the_whole_file(tmp_path, review_texts, reviews, tiny_dir, monkeypatch, capsys):
    src = tmp_path / "labelled.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": r["text"], "label": r["label"]}) + "\n"
                           for i, r in enumerate(reviews[:60])))
    assert _run(src, tmp_path / "full.jsonl", tiny_dir, "--label-field", "label") == 0
    want = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcv-batch: accuracy")]
    out = tmp_path / "part.jsonl"
    with _interrupted_at_run(9, monkeypatch):
        assert _run(src, out, tiny_dir, "--label-field", "label") == 130
    capsys.readouterr()
    assert 0 < sum(map(sum, json.loads((tmp_path / "part.jsonl.pcv-state.json").read_text())["confusion"])) < 60
    assert _run(src, out, tiny_dir, "--label-field", "label", "--resume") == 0
    err = capsys.readouterr().err
    assert len(want) == 1 and "of 60 labelled records" in want[0]
    assert "resuming after" in err and [line for line in err.splitlines() if line.startswith("pcv-batch: accuracy")] == want
    assert _run(src, out, tiny_dir, "--resume") == 2  # scored before: a resume without the field is refused
    assert "options differ" in capsys.readouterr().err


def test_resume_refuses_other_options_or_model(tmp_path, src, tiny_dir, capsys):
    out = tmp_path / "o.jsonl"
    _run(src, out, tiny_dir)
    assert _run(src, out, tiny_dir, "--resume", "--text-field", "body") == 2
    assert "options differ" in capsys.readouterr().err
    assert _run(src, out, tiny_dir, "--resume", "--batch-size", "7") == 2  # other batches: other last bits
    assert "options differ" in capsys.readouterr().err
    assert main(["-", "-o", str(out), "--model", str(tiny_dir), "--resume"]) == 2  # stdin cannot resume
    assert "--resume needs" in capsys.readouterr().err


def test_sigkill_then_resume(tmp_path, src, tiny_dir):
    """A real SIGKILL of a running process, then --resume."""
    big = tmp_path / "big.jsonl"
    big.write_text(src.read_text() * 30)
    full = tmp_path / "full.jsonl"
    args = [str(big), "--model", str(tiny_dir), "--window", "50", "-q"]
    assert main([*args, "-o", str(full)]) == 1
    out = tmp_path / "killed.jsonl"
    code = f"import sys; from pcv.runtime.cli import main; sys.exit(main({[*args, '-o', str(out)]!r}))"
    p = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    state = tmp_path / "killed.jsonl.pcv-state.json"
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("records", 0) > 0:
            break
        time.sleep(0.01)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert main([*args, "-o", str(out), "--resume"]) == 1
    assert out.read_bytes() == full.read_bytes()
