"""pcv-batch never destroys or corrupts data, never crashes, and its exit code tells the whole job.

Every test drives the installed console script in a subprocess, as a user would, and checks that
inputs and the model stay byte-identical, every output line is strict JSON, and no traceback
reaches stderr."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent
PCV_BATCH = str(BIN / "pcv-batch")


def cli(*args, cwd=None, timeout=180, prog=PCV_BATCH, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([prog, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, **(env or {})})
    assert "Traceback" not in r.stderr, r.stderr
    return r


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _no_constant(name):
    raise ValueError(f"{name} is not strict JSON")


def strict_lines(path) -> list[dict]:
    """Every line of an output, parsed as strict JSON (no NaN/Infinity)."""
    return [json.loads(line, parse_constant=_no_constant) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def model(tiny_dir, tmp_path_factory):
    """A copy of the tiny model's .onnx (its digest checked after every test that names it)."""
    d = tmp_path_factory.mktemp("model")
    shutil.copy(tiny_dir / "model.onnx", d / "model.onnx")
    return d / "model.onnx"


@pytest.fixture()
def src(tmp_path, review_texts):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"id": i, "text": t[:300]}) + "\n" for i, t in enumerate(review_texts[:30])))
    return p


def run(src, out, model, *extra, **kw):
    return cli(src, "-o", out, "--model", model, "-q", *extra, **kw)


# 1. An output never destroys anything it did not create --------------------------------------


@pytest.mark.parametrize("how", ["o-is-input", "errors-is-input", "o-is-model", "o-hardlink-of-input",
                                 "o-symlink-to-input", "errors-is-o", "o-is-second-input"])
def test_an_output_that_names_an_input_the_model_or_another_output_is_refused(tmp_path, src, model, how):
    other = tmp_path / "b.jsonl"
    other.write_text('{"text": "second file"}\n')
    before = {p: digest(p) for p in (src, other, model)}
    out, extra = tmp_path / "out.jsonl", []
    if how == "o-is-input":
        out = src
    elif how == "errors-is-input":
        extra = ["--errors", src]
    elif how == "o-is-model":
        out = model
    elif how == "o-hardlink-of-input":
        os.link(src, tmp_path / "hard.jsonl")
        out = tmp_path / "hard.jsonl"
    elif how == "o-symlink-to-input":
        (tmp_path / "link.jsonl").symlink_to(src)
        out = tmp_path / "link.jsonl"
    elif how == "errors-is-o":
        extra = ["--errors", out]
    elif how == "o-is-second-input":
        out = other
    r = cli(src, other, "-o", out, "--model", model, "-q", *extra)
    assert r.returncode == 2 and "is the same file as" in r.stderr, r.stderr
    assert {p: digest(p) for p in before} == before
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.pcv-state.json"))


def test_stream_outputs_are_written_through_and_never_unlinked(tmp_path, src, model):
    r = run(src, "/dev/null", model)
    assert r.returncode == 0 and "written as a stream" in r.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    r = run(src, "/dev/null", model, "--resume")
    assert r.returncode == 2 and "--resume needs" in r.stderr and "character device" in r.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    r = run(src, fifo, model)
    reader.join(30)
    assert r.returncode == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [json.loads(line)["id"] for line in got[0].decode().splitlines()] == list(range(30))
    r = cli(src, "-o", "/dev/stdout", "--model", model, "-q")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 30


def test_a_symlink_output_is_written_through_to_its_target(tmp_path, src, model):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert run(src, link, model).returncode == 0
    assert link.is_symlink() and len(strict_lines(real)) == 30


@pytest.mark.parametrize("case", ["missing-dir", "dir-as-output", "parent-is-a-file", "read-only-dir"])
def test_output_folders(tmp_path, src, model, case):
    if case == "missing-dir":
        out = tmp_path / "new" / "deeper" / "out.jsonl"
        assert run(src, out, model).returncode == 0 and len(strict_lines(out)) == 30
        return
    if case == "read-only-dir":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        out, want = ro / "out.jsonl", "not writable"
    elif case == "dir-as-output":
        out, want = tmp_path, "is a directory"
    else:
        (tmp_path / "afile").write_text("x")
        out, want = tmp_path / "afile" / "out.jsonl", "is a file, not a directory"
    r = run(src, out, model)
    assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _start(args, state: Path | None = None, lock: Path | None = None) -> subprocess.Popen:
    """A pcv-batch process, returned once it has committed a window (state) or taken its lock."""
    # SIGINT at its default, as in a terminal: a suite run in the background of a non-interactive shell
    # inherits it ignored, and Python then installs no Ctrl-C handler
    p = subprocess.Popen([PCV_BATCH, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 90
    while time.time() < deadline and p.poll() is None:
        if state is not None and state.exists():
            try:
                if json.loads(state.read_text() or "{}").get("records", 0) > 0:
                    break
            except ValueError:
                pass
        if lock is not None and lock.exists() and lock.read_text().strip():
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be interrupted"
    return p


@pytest.fixture()
def big(tmp_path, review_texts):
    p = tmp_path / "big in.jsonl"  # a space in the name: the resume command must paste back
    lines = [json.dumps({"id": i, "text": review_texts[i % 60][:400]}) for i in range(3000)]
    lines.insert(5, "{broken")
    p.write_text("\n".join(lines) + "\n")
    return p


def test_an_old_output_survives_an_interrupted_run_and_resume_replaces_it(tmp_path, big, model):
    out = tmp_path / "it's out.jsonl"
    out.write_text("the previous run's predictions\n")
    p = _start([big, "-o", out, "--model", model, "--window", "20", "-q"], state=Path(f"{out}.pcv-state.json"))
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "Traceback" not in err
    assert out.read_text() == "the previous run's predictions\n"
    hint = err.strip().splitlines()[-1].split("resume with: ", 1)[1]
    argv = shlex.split(hint)
    assert argv[0] == "pcv-batch" and argv[-1] == "--resume" and str(out) in argv and str(big) in argv
    r = cli(*argv[1:])
    assert r.returncode == 1, r.stderr  # the bad line before the kill still counts
    assert [d["id"] for d in strict_lines(out)] == list(range(3000))
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".part", ".tmp", ".pcv-lock")]


# 2. One writer per output -------------------------------------------------------------------


@pytest.mark.parametrize("second", ["fresh", "resume", "errors-onto-locked-output"])
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, big, model, second):
    out = tmp_path / "out.jsonl"
    first = _start([big, "-o", out, "--model", model, "--window", "20", "-q"], lock=Path(f"{out}.pcv-lock"))
    try:
        if second == "errors-onto-locked-output":
            r = cli(big, "-o", tmp_path / "other.jsonl", "--errors", out, "--model", model, "-q")
        else:
            r = run(big, out, model, "--window", "20", *(["--resume"] if second == "resume" else []))
        assert r.returncode == 2 and f"(pid {first.pid})" in r.stderr and ".pcv-lock" in r.stderr, r.stderr
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 1, err
    assert [d["id"] for d in strict_lines(out)] == list(range(3000))


# 3. No window, file or stream of bad records crashes ------------------------------------------


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


GOOD = b'{"id": "g1", "text": "a fine film"}\n'
BAD_FILES = {  # name -> (file name, bytes, extra args, records classified, errors)
    "one-bad-record": ("a.jsonl", b'{"text": 3}\n', [], 0, 1),
    "torn-last-line-after-a-full-window": ("a.jsonl", GOOD * 8 + b'{"id": 9, "te', ["--window", "8"], 8, 1),
    "utf16-file": ("a.jsonl", '{"text": "x"}\n{"text": "y"}\n'.encode("utf-16"), [], 0, 1),  # one error for the file
    "utf16-txt": ("a.txt", "first\nsecond\nthird\n".encode("utf-16"), [], 0, 1),
    "utf16-csv": ("a.csv", "id,text\n1,x\n".encode("utf-16"), [], 0, 1),
    "gzip-named-csv": ("a.csv", _gz(b"id,text\n1,x\n"), [], 0, 1),
    "plain-text-named-gz": ("a.jsonl.gz", GOOD, [], 0, 1),
    "gzip-not-named-gz": ("a.jsonl", _gz(GOOD * 3), [], 0, 1),
    "window-1-with-bad-records": ("a.jsonl", GOOD + b"{x\n" + GOOD + b"[]\n", ["--window", "1"], 2, 2),
    "csv-all-wrong-column-count": ("a.csv", b"id,text\n1,a,b\n2,c,d\n", [], 0, 2),
}


@pytest.mark.parametrize("name", list(BAD_FILES), ids=list(BAD_FILES))
def test_files_of_bad_records_are_reported_and_never_crash(tmp_path, model, name):
    fname, data, extra, n_ok, n_bad = BAD_FILES[name]
    src = tmp_path / fname
    src.write_bytes(data)
    out = tmp_path / "out.jsonl"
    r = run(src, out, model, *extra)
    assert r.returncode == 1, r.stderr
    assert len(strict_lines(out)) == n_ok
    errs = strict_lines(f"{out}.errors.jsonl")
    assert len(errs) == n_bad and all(e["input"] == str(src) and e["line"] >= 1 and e["error"] for e in errs)
    assert src.read_bytes() == data


@pytest.mark.parametrize("n", [1, 5, 1500])
def test_a_wrong_text_field_stops_early_with_the_keys_seen(tmp_path, model, n):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"id": i, "review": "x"}) + "\n" for i in range(n)))
    out = tmp_path / "out.jsonl"
    r = run(src, out, model, "--window", "100")
    assert r.returncode == 2 and "'review'" in r.stderr and "--text-field" in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


def test_any_pattern_of_good_and_bad_records_in_any_window(tmp_path, tiny_dir):
    """In process (hypothesis makes many runs): every bad record reported, every good one classified, in order."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from pcv.runtime.cli import main

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(pattern=st.lists(st.booleans(), min_size=0, max_size=40), window=st.integers(1, 12),
           batch=st.integers(1, 5), shifts=st.sampled_from(["0", "0,4"]))
    def check(pattern, window, batch, shifts):
        src = tmp_path / "p.jsonl"
        src.write_text("".join((json.dumps({"id": i, "text": f"review {i}"}) if ok else json.dumps({"id": i, "text": None}))
                               + "\n" for i, ok in enumerate(pattern)))
        out = tmp_path / "p.out.jsonl"
        rc = main([str(src), "-o", str(out), "--model", str(tiny_dir), "--window", str(window),
                   "--batch-size", str(batch), "--shifts", shifts, "-q"])
        good = [i for i, ok in enumerate(pattern) if ok]
        bad = [i + 1 for i, ok in enumerate(pattern) if not ok]
        assert rc == (1 if bad else 0)
        assert [d["id"] for d in strict_lines(out)] == good
        errs = Path(f"{out}.errors.jsonl")
        assert ([e["line"] for e in strict_lines(errs)] if bad else errs.exists()) == (bad or False)

    check()


# 4. The model's outputs are checked -----------------------------------------------------------


def _contract_model(path: Path, *, cols: int = 2, labels=None, rank: int = 2, weight: float = 0.01,
                    input_type: str = "int64") -> Path:
    """A hand-built classifier: logits = sum(mask) * W, with the output contract under test."""
    from onnx import TensorProto, helper, numpy_helper

    it = {"int64": TensorProto.INT64, "int32": TensorProto.INT32}[input_type]
    w = numpy_helper.from_array(np.full((1, cols), weight, np.float32) * np.arange(1, cols + 1, dtype=np.float32), "W")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["m", "axes"], ["s"], keepdims=1),
             helper.make_node("MatMul", ["s", "W"], ["logits" if rank == 2 else "l2"])]
    out_shape = ["batch", cols]
    if rank == 1:
        nodes.append(helper.make_node("ReduceSum", ["l2", "axes"], ["logits"], keepdims=0))
        out_shape = ["batch"]
    graph = helper.make_graph(nodes, "contract", [helper.make_tensor_value_info("input_ids", it, ["batch", "seq"]),
                                                  helper.make_tensor_value_info("attention_mask", it, ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], [w, axes])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    labels = labels if labels is not None else {str(i): f"L{i}" for i in range(cols)}
    for k, v in {"pcv.id2label": json.dumps(labels), "pcv.max_length": "256", "pcv.variant": "fp32"}.items():
        m.metadata_props.add(key=k, value=v)
    path.write_bytes(m.SerializeToString())
    return path


CONTRACTS = {  # name -> (model options, what the one-line error says)
    "one-logit-head": (dict(cols=1), "single-logit head"),
    "3-columns-2-labels": (dict(cols=3, labels={"0": "neg", "1": "pos"}), "3 logits per text but its metadata names 2"),
    "rank-1-output": (dict(rank=1), "shape (batch, labels)"),
    "int32-inputs": (dict(input_type="int32"), "tensor(int32)"),
    "id2label-with-a-gap": (dict(labels={"0": "neg", "2": "pos"}), "exactly 0..1"),
    "duplicate-names": (dict(labels={"0": "pos", "1": "pos"}), "its own non-empty name"),
    "nan-logits": (dict(weight=float("nan")), "non-finite logits"),
    "inf-logits": (dict(weight=float("inf")), "non-finite logits"),
}


@pytest.mark.parametrize("name", list(CONTRACTS), ids=list(CONTRACTS))
def test_a_model_that_breaks_the_output_contract_is_refused(tmp_path, src, name):
    opts, want = CONTRACTS[name]
    bad = _contract_model(tmp_path / "m.onnx", **opts)
    before = digest(bad)
    out = tmp_path / "out.jsonl"
    r = run(src, out, bad)
    assert r.returncode == 2 and want in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*")) and digest(bad) == before


def test_a_model_within_the_contract_classifies(tmp_path, src):
    good = _contract_model(tmp_path / "m.onnx", cols=3)
    out = tmp_path / "out.jsonl"
    assert run(src, out, good).returncode == 0
    assert {d["label"] for d in strict_lines(out)} == {"L2"}


# 5. Strict JSON only, ids as written ----------------------------------------------------------


def test_numeric_ids_round_trip_exactly_and_every_line_is_strict_json(tmp_path, model):
    ids = ["1e400", "1E2", "12345678901234567891.0", "-0", "0.1", "123456789012345678901234567890", "[1e999, 2]",
           '{"a": -1.5E-400}', '"s"', "null", "true"]
    src = tmp_path / "ids.jsonl"
    src.write_text("".join(f'{{"id": {i}, "text": "review {k}"}}\n' for k, i in enumerate(ids)) + '{"id": 1e400, "text": 5}\n')
    out = tmp_path / "out.jsonl"
    assert run(src, out, model).returncode == 1
    lines = Path(out).read_text().splitlines()
    assert [line.split('"id": ', 1)[1].rsplit(', "label"', 1)[0] for line in lines] == ids
    strict_lines(out)
    (e,) = strict_lines(f"{out}.errors.jsonl")
    assert '"id": 1e400' in Path(f"{out}.errors.jsonl").read_text() and e["line"] == len(ids) + 1


# 6. Exit codes tell the whole job ------------------------------------------------------------


def test_a_resumed_or_complete_job_exits_with_the_status_of_the_whole_job(tmp_path, big, model):
    out = tmp_path / "out.jsonl"
    p = _start([big, "-o", out, "--model", model, "--window", "20", "-q"], state=Path(f"{out}.pcv-state.json"))
    p.send_signal(signal.SIGHUP)
    p.communicate(timeout=60)
    assert p.returncode == 129
    r = run(big, out, model, "--window", "20", "--resume")
    assert r.returncode == 1 and "failed 1" in r.stderr, r.stderr  # the failure was before the kill
    r = run(big, out, model, "--window", "20", "--resume")
    assert r.returncode == 1 and "already complete" in r.stderr


def test_os_errors_are_one_line_with_the_errno(tmp_path, src, model):
    r = run(src, "/dev/full", model)
    assert r.returncode == 2 and "ENOSPC" in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr


def test_no_console_script_prints_a_traceback_on_its_error_paths(tmp_path, src, model):
    bad_cfg = tmp_path / "badmodel"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text("{not json")
    cases = [
        ("pcv-batch", [tmp_path, "--model", model]),
        ("pcv-batch", [src, "--model", tmp_path / "nothing.onnx"]),
        ("pcv-batch", [src, "--model", model, "--shifts", "0,9999"]),
        ("pcv-batch", [src, "--model", model, "--window", "0"]),
        ("pcv-export", [tmp_path / "nothing", tmp_path / "x.onnx"]),
        ("pcv-export", [bad_cfg, tmp_path / "x.onnx"]),
        ("pcv-check", [bad_cfg, model, "--data", src]),
        ("pcv-train", [tmp_path / "nothing.jsonl", "--out", tmp_path / "t"]),
        ("pcv-pretrain", [tmp_path / "nothing.jsonl", "--out", tmp_path / "p"]),
        ("pcv-soup", [tmp_path / "s", bad_cfg, bad_cfg]),
        ("pcv-bench", ["--model", tmp_path / "nothing.onnx", "--quick", "--out", tmp_path / "b"]),
    ]
    for prog, args in cases:
        r = cli(*args, prog=str(BIN / prog))
        assert r.returncode == 2 and r.stderr.strip(), (prog, args, r.stderr)


# 7. --resume trusts nothing it has not verified ---------------------------------------------


def _interrupted(tmp_path, big, model) -> tuple[Path, Path, dict]:
    out = tmp_path / "out.jsonl"
    state = Path(f"{out}.pcv-state.json")
    p = _start([big, "-o", out, "--model", model, "--window", "20", "-q"], state=state)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    return out, state, json.loads(state.read_text())


@pytest.mark.parametrize("tamper", ["staged-bytes-rewritten", "records-out-of-range", "out-bytes-mid-line",
                                    "input-edited-mtime-kept", "state-not-json", "counts-shifted", "marked-complete",
                                    "nested-brackets"])
def test_resume_refuses_what_it_cannot_verify(tmp_path, big, model, tamper):
    out, state, st = _interrupted(tmp_path, big, model)
    part = tmp_path / st["out_part"]
    if tamper == "staged-bytes-rewritten":
        data = bytearray(part.read_bytes())
        data[10] ^= 1
        part.write_bytes(bytes(data))
    elif tamper == "records-out-of-range":
        state.write_text(json.dumps({**st, "records": 99999}))
    elif tamper == "out-bytes-mid-line":
        n = st["out_bytes"] - 3
        h = hashlib.sha256(part.read_bytes()[:n]).hexdigest()
        state.write_text(json.dumps({**st, "out_bytes": n, "out_sha256": h}))
    elif tamper == "counts-shifted":  # in range and adding up, but not what the staged files hold
        state.write_text(json.dumps({**st, "records": st["records"] + 20, "classified": st["classified"] + 20}))
    elif tamper == "marked-complete":
        state.write_text(json.dumps({**st, "complete": True}))
    elif tamper == "nested-brackets":
        state.write_text("[" * 100_000)
    elif tamper == "input-edited-mtime-kept":
        s0 = os.stat(big)
        data = big.read_bytes()
        big.write_bytes(data.replace(b"review", b"Review", 1) if b"review" in data else data[:-2] + b"X\n")
        os.utime(big, ns=(s0.st_atime_ns, s0.st_mtime_ns))
    else:
        state.write_text("{")
    r = run(big, out, model, "--window", "20", "--resume")
    assert r.returncode == 2 and "rerun without --resume" in r.stderr, r.stderr


def test_a_complete_job_whose_output_is_gone_is_not_complete(tmp_path, src, model):
    out = tmp_path / "out.jsonl"
    assert run(src, out, model).returncode == 0
    out.unlink()
    r = run(src, out, model, "--resume")
    assert r.returncode == 2 and "missing or changed" in r.stderr


# 8. Signals and streams -----------------------------------------------------------------------


def test_stream_inputs_directories_cr_text_empty_inputs_and_stale_errors(tmp_path, src, model):
    r = run(tmp_path, tmp_path / "o.jsonl", model, "--format", "jsonl")
    assert r.returncode == 2 and "is a directory" in r.stderr
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    threading.Thread(target=lambda: fifo.write_bytes(src.read_bytes()), daemon=True).start()
    out = tmp_path / "fifo-out.jsonl"
    r = run(fifo, out, model, "--format", "jsonl")
    assert r.returncode == 0 and "not resumable" in r.stderr and len(strict_lines(out)) == 30
    r = run(fifo, out, model, "--format", "jsonl", "--resume")
    assert r.returncode == 2 and "a stream" in r.stderr
    cr = tmp_path / "mac.txt"
    cr.write_bytes(b"first review\rsecond review\r\rfourth\r")
    r = run(cr, tmp_path / "cr.jsonl", model)
    assert r.returncode == 0 and [d["id"] for d in strict_lines(tmp_path / "cr.jsonl")] == [1, 2, 4]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert run(empty, tmp_path / "e.jsonl", model).returncode == 0 and (tmp_path / "e.jsonl").read_bytes() == b""
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(src.read_bytes() + b"{bad\n")
    out = tmp_path / "m.jsonl"
    assert run(mixed, out, model).returncode == 1 and Path(f"{out}.errors.jsonl").exists()
    r = run(src, out, model)
    assert r.returncode == 0 and not Path(f"{out}.errors.jsonl").exists() and "removed" in r.stderr


# What runs is what was asked for ------------------------------------------------------------


def _claim_cuda(monkeypatch):
    """onnxruntime lists CUDA but cannot start it (a CPU build here; a CUDA version mismatch on a
    user's machine): the session opens on the CPU, as onnxruntime-gpu does without its libraries."""
    import onnxruntime as ort

    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])


def test_an_explicit_provider_that_does_not_start_is_an_error(tmp_path, src, model, monkeypatch, capsys):
    from pcv.runtime.cli import main

    _claim_cuda(monkeypatch)
    assert main([str(src), "-o", str(tmp_path / "o.jsonl"), "--model", str(model), "--provider", "cuda", "-q"]) == 2
    err = capsys.readouterr().err
    assert "provider 'cuda' was asked for, but onnxruntime opened the session on ['CPUExecutionProvider']" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_auto_says_when_cuda_did_not_start_and_classifies_on_the_cpu(tmp_path, src, model, monkeypatch, capsys):
    from pcv.runtime import TextClassifier
    from pcv.runtime.cli import main

    _claim_cuda(monkeypatch)
    out = tmp_path / "o.jsonl"
    assert main([str(src), "-o", str(out), "--model", str(model), "-q"]) == 0
    err = capsys.readouterr().err
    assert "provider cuda did not start" in err and "provider cpu" in err and "batch 16" in err
    assert len(strict_lines(out)) == 30
    tc = TextClassifier(model)
    assert tc.session.provider == "cpu" and not tc.session.io_binding and len(tc.predict(["fine"])) == 1


def test_an_unbalanced_csv_quote_is_reported_not_swallowed(tmp_path, model):
    src = tmp_path / "q.csv"
    src.write_text('id,text\n1,good\n2,"bad\n3,three\n4,four\n5,five\n6,"six"\n7,seven\n')
    out = tmp_path / "o.jsonl"
    r = run(src, out, model)
    assert r.returncode == 1, r.stderr
    assert [d["id"] for d in strict_lines(out)] == ["1", "7"]
    (e,) = strict_lines(f"{out}.errors.jsonl")
    assert e["line"] == 3 and "lines 3-7" in e["error"]


def test_a_kill_before_the_first_commit_resumes(tmp_path, big, model):
    """SIGKILL right after the state names its staged files (0 bytes committed), then --resume."""
    out = tmp_path / "o.jsonl"
    full = tmp_path / "full.jsonl"
    assert run(big, full, model, "--window", "20").returncode == 1
    state = Path(f"{out}.pcv-state.json")
    p = subprocess.Popen([PCV_BATCH, str(big), "-o", str(out), "--model", str(model), "--window", "20", "-q"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not state.exists() and p.poll() is None:
        time.sleep(0.005)
    p.kill()
    p.wait()
    r = run(big, out, model, "--window", "20", "--resume")
    assert r.returncode == 1, r.stderr
    assert out.read_bytes() == full.read_bytes()


def test_stdout_redirected_onto_an_input_or_the_model_is_refused(tmp_path, src, model):
    before = digest(src)
    with open(src, "ab") as f:
        r = subprocess.run([PCV_BATCH, str(src), "--model", str(model), "-q"], stdout=f, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and "stdout is the same file as input" in r.stderr and digest(src) == before
    m = tmp_path / "m.onnx"
    shutil.copy(model, m)
    with open(m, "r+b") as f:
        r = subprocess.run([PCV_BATCH, str(src), "--model", str(m), "-q"], stdout=f, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and digest(m) == digest(model)
    r = subprocess.run(f"{PCV_BATCH} {src} --model {model} -q >&-", shell=True, capture_output=True, text=True)
    assert r.returncode == 2 and "stdout is closed" in r.stderr and "Traceback" not in r.stderr
    r = cli(src, "--model", model, "--errors", "-", "-q")
    assert r.returncode == 2 and "would mix" in r.stderr


def test_stdout_runs_keep_their_errors_apart(tmp_path, model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "fine"}\n')
    r = cli(bad, "--model", model, "-q", cwd=tmp_path)
    assert r.returncode == 1
    (errs,) = tmp_path.glob("pcv-errors-*.jsonl")
    assert errs.name in r.stderr and strict_lines(errs)[0]["line"] == 2
    assert cli(good, "--model", model, "-q", cwd=tmp_path).returncode == 0
    assert errs.exists() and len(list(tmp_path.glob("pcv-errors-*.jsonl"))) == 1  # a clean run removes nobody's errors


def test_a_signal_ends_a_run_whose_reader_is_blocked(tmp_path, model):
    fifo = tmp_path / "idle.fifo"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDWR)  # a writer that never writes: the reader blocks
    try:
        os.write(keep, b"a review\nanother\n")
        p = subprocess.Popen([PCV_BATCH, str(fifo), "--format", "txt", "--model", str(model), "-q", "-o", "/dev/null"],
                             stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
        assert p.returncode == 143 and "Traceback" not in err
    finally:
        os.close(keep)


# Output formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_outputs_hold_the_jsonl_fields_and_resume(tmp_path, big, model, suffix):
    pytest.importorskip("pyarrow") if suffix == "parquet" else None
    ref = tmp_path / "ref.jsonl"
    assert run(big, ref, model, "--window", "20").returncode == 1
    want = strict_lines(ref)
    out = tmp_path / f"o.{suffix}"
    p = _start([big, "-o", out, "--model", model, "--window", "20", "-q"], state=Path(f"{out}.pcv-state.json"))
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == 143 and not out.exists()  # staged as JSON lines until the job is done
    r = run(big, out, model, "--window", "20", "--resume")
    assert r.returncode == 1, r.stderr
    if suffix == "csv":
        import csv

        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    assert [str(r["id"]) for r in rows] == [str(w["id"]) for w in want]
    assert [r["label"] for r in rows] == [w["label"] for w in want]
    assert all(abs(float(r["prob_pos"]) - w["probs"]["pos"]) < 1e-9 for r, w in zip(rows, want))
    assert not [q for q in tmp_path.iterdir() if q.suffix in (".part", ".conv", ".tmp")]
    r = run(big, out, model, "--window", "20", "--resume")
    assert r.returncode == 1 and "already complete" in r.stderr
    out.write_bytes(out.read_bytes()[:-10])
    assert run(big, out, model, "--window", "20", "--resume").returncode == 2  # changed since: not complete


def test_a_format_that_needs_a_file_refuses_a_stream(tmp_path, src, model):
    r = cli(src, "--model", model, "--output-format", "parquet", "-q")
    assert r.returncode == 2 and "name a file" in r.stderr


def test_every_help_shows_every_default():
    """Each console script's --help: an option with a default says it (flags and unset options aside)."""
    import argparse
    import contextlib
    import io

    from pcv.bench.cli import main as bench_main
    from pcv.export.cli import check_main, export_main
    from pcv.runtime.cli import main as batch_main
    from pcv.train.cli import pretrain_main, soup_main, train_main

    for prog in (batch_main, export_main, check_main, train_main, pretrain_main, soup_main, bench_main):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            prog(["--help"])
        text = " ".join(buf.getvalue().split())
        assert "default" in text, prog
    captured: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        captured.append(self)
        return real(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", grab)
        for prog in (batch_main, export_main, check_main, train_main, pretrain_main, soup_main, bench_main):
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
                prog(["--help"])
    for parser in captured:
        for action in parser._actions:
            d = action.default
            if not action.option_strings or d is None or d is False or d in ([], ()) or d is argparse.SUPPRESS:
                continue
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
                continue
            assert "default" in (action.help or "").lower(), (parser.prog, action.option_strings)
