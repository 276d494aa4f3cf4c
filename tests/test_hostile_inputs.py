"""The hostile-input catalogue: each bad input gives a clear per-line error (or a clean refusal)
and nothing around it is lost. Property tests: any bytes in, never a crash."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pcv.runtime import InputError, PerceiverByteTokenizer, ReaderConfig, read_records
from pcv.runtime.cli import main

GOOD_BEFORE = b'{"id": "before", "text": "a fine film"}\n'
GOOD_AFTER = b'{"id": "after", "text": "a dull film"}\n'

# name -> (bytes of the middle line(s), expected error fragment or None when it is classified)
JSONL_CATALOGUE = {
    "malformed-json": (b'{"id": "x", "text": "unclosed\n', "invalid JSON"),
    "not-an-object": (b'["text", "a list"]\n', "expected a JSON object"),
    "text-is-number": (b'{"text": 42}\n', "'text' is int"),
    "text-is-null": (b'{"text": null}\n', "'text' is NoneType"),
    "text-missing": (b'{"review": "elsewhere"}\n', "'text' is missing"),
    "invalid-utf8": (b'{"text": "bad \xff\xfe byte"}\n', "invalid UTF-8 at byte"),
    "latin1-line": (b'{"text": "caf\xe9 cr\xe8me"}\n', "invalid UTF-8"),
    "cp1252-quotes": (b'{"text": "\x93quoted\x94"}\n', "invalid UTF-8"),
    "raw-nul-in-json": (b'{"text": "nul \x00 here"}\n', "invalid JSON"),
    "escaped-nul": (b'{"id": "nul", "text": "nul \\u0000 here"}\n', None),
    "lone-surrogate-text": (b'{"text": "\\ud800"}\n', "surrogate"),
    "lone-surrogate-id": (b'{"id": "\\udfff", "text": "fine"}\n', None),
    "nan-id": (b'{"id": NaN, "text": "fine"}\n', "NaN is not JSON"),
    "deep-nesting": (b'{"text": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "invalid JSON"),
    "huge-number": (b'{"text": "x", "n": ' + b"9" * 10_000 + b"}\n", "invalid JSON"),
    "crlf": (b'{"id": "crlf", "text": "windows line"}\r\n', None),
    "control-chars": (b'{"id": "ctl", "text": "tab\\t bell\\u0007 esc\\u001b"}\n', None),
    "emoji-4-byte": ('{"id": "emoji", "text": "great 🎬🍿 film"}\n'.encode(), None),
    "empty-text": (b'{"id": "empty", "text": ""}\n', None),
    "literal-specials": (b'{"id": "sp", "text": "[CLS] [SEP] [MASK] <pad>"}\n', None),
    "blank-lines": (b"\n   \n\t\n", None),
}


@pytest.mark.parametrize("name", list(JSONL_CATALOGUE), ids=list(JSONL_CATALOGUE))
def test_jsonl_catalogue_through_pcv_batch(tmp_path, tiny_dir, name):
    middle, fragment = JSONL_CATALOGUE[name]
    src = tmp_path / "in.jsonl"
    src.write_bytes(GOOD_BEFORE + middle + GOOD_AFTER)
    out = tmp_path / "out.jsonl"
    rc = main([str(src), "-o", str(out), "--model", str(tiny_dir), "-q"])
    preds = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]
    ids = [p["id"] for p in preds]
    assert ids[0] == "before" and ids[-1] == "after"  # nothing around the bad line is lost
    errors_path = tmp_path / "out.jsonl.errors.jsonl"
    if fragment is None:
        assert rc == 0 and not errors_path.exists()
        assert len(preds) == 2 + (name != "blank-lines")
    else:
        assert rc == 1 and len(preds) == 2
        (err,) = [json.loads(line) for line in errors_path.read_text(encoding="utf-8").splitlines()]
        assert err["input"] == str(src) and err["line"] == 2  # names the file and the line
        assert fragment in err["error"]


def test_lone_surrogate_id_round_trips_as_a_json_escape(tmp_path, tiny_dir):
    src = tmp_path / "in.jsonl"
    src.write_bytes(JSONL_CATALOGUE["lone-surrogate-id"][0])
    out = tmp_path / "out.jsonl"
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "-q"]) == 0
    assert b'"\\udfff"' in out.read_bytes()
    assert json.loads(out.read_bytes())["id"] == "\udfff"


def test_utf16_file_says_to_convert(tmp_path):
    p = tmp_path / "u16.jsonl"
    p.write_bytes('{"text": "hello"}\n'.encode("utf-16"))
    first = next(read_records(str(p)))
    assert "UTF-16" in first.error and "iconv" in first.error


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "csv"])
def test_100mb_line_is_one_error_and_neighbours_survive(tmp_path, fmt):
    big = 100 * 2**20
    p = tmp_path / f"big.{fmt}"
    with open(p, "wb") as f:
        if fmt == "csv":
            f.write(b"id,text\na,before\nb,\"")
        elif fmt == "jsonl":
            f.write(GOOD_BEFORE + b'{"text": "')
        else:
            f.write(b"before\n")
        chunk = b"x" * 2**20
        for _ in range(big // len(chunk)):
            f.write(chunk)
        f.write({"csv": b'"\nc,after\n', "jsonl": b'"}\n' + GOOD_AFTER, "txt": b"\nafter\n"}[fmt])
    recs = list(read_records(str(p)))
    assert [r.text is not None for r in recs] == [True, False, True]
    assert "limit" in recs[1].error
    assert recs[1].line == 2 + (fmt == "csv")


def test_100mb_line_is_not_held_in_memory(tmp_path):
    p = tmp_path / "big.txt"
    with open(p, "wb") as f:
        f.write(b"before\n")
        for _ in range(100):
            f.write(b"y" * 2**20)
        f.write(b"\nafter\n")
    code = (
        "import resource, sys\n"
        "from pcv.runtime import read_records\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "recs = list(read_records(sys.argv[1]))\n"
        "assert [r.text for r in recs] == ['before', None, 'after'], recs\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    grown_kib = int(subprocess.run([sys.executable, "-c", code, str(p)], check=True, capture_output=True,
                                   text=True).stdout)
    assert grown_kib < 20 * 1024, f"reading a 100 MB line grew RSS by {grown_kib} KiB"


def test_a_million_tiny_lines_stream_in_order(tmp_path):
    p = tmp_path / "many.txt.gz"
    with gzip.open(p, "wb", compresslevel=1) as f:
        f.write(b"ok\n" * 1_000_000)
    n = 0
    for n, rec in enumerate(read_records(str(p)), start=1):
        if rec.line != n:
            raise AssertionError(f"line {rec.line} came out as record {n}")
    assert n == 1_000_000


@pytest.mark.parametrize("data", [b"", b"\n\n\r\n", b"\xef\xbb\xbf"], ids=["empty", "blank", "bom-only"])
def test_empty_files_classify_nothing_and_succeed(tmp_path, tiny_dir, data, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    out = tmp_path / "out.jsonl"
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "-q"]) == 0
    assert not out.exists() or out.read_bytes() == b""
    assert "classified 0, failed 0" in capsys.readouterr().err


def test_truncated_gzip_through_pcv_batch(tmp_path, tiny_dir):
    body = b"".join(b'{"id": %d, "text": "review number %d is fine"}\n' % (i, i) for i in range(5000))
    data = gzip.compress(body)
    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.jsonl"
    assert main([str(src), "-o", str(out), "--model", str(tiny_dir), "-q"]) == 1
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == list(range(len(ids))) and len(ids) > 100  # every record before the damage
    (err,) = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert "damaged after line" in err["error"] and err["line"] == len(ids) + 1


def test_csv_quoted_newlines_bom_crlf_and_oversize_field(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b'\xef\xbb\xbfid,text\r\n1,"two\r\nlines"\r\n2,"' + b"z" * 5000 + b'"\r\n3,last\r\n')
    recs = list(read_records(str(p), ReaderConfig(max_line_bytes=1000)))
    assert recs[0].text == "two\r\nlines" and recs[0].id == "1"
    assert recs[1].text is None and "field larger than field limit" in recs[1].error and recs[1].line == 4
    assert recs[2].text == "last" and recs[2].line == 5


# --- property tests: any bytes in, never a crash --------------------------------------------------

_lines = st.lists(st.binary(max_size=60) | st.sampled_from([b'{"text": "ok"}', b'{"text": 1}', b"\xef\xbb\xbf",
                                                            b'"', b",", b"\r", b"\x00", b"{"]), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=_lines, fmt=st.sampled_from(["jsonl", "txt", "csv"]), gz=st.booleans())
def test_readers_never_crash_on_any_bytes(tmp_path, parts, fmt, gz):
    data = b"\n".join(parts)
    if fmt == "csv":
        data = b"id,text\n" + data
    p = tmp_path / (f"x.{fmt}" + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(data) if gz else data)
    try:
        recs = list(read_records(str(p), ReaderConfig(max_line_bytes=40)))
    except InputError:
        return  # a clean refusal (CSV header without a text column) is allowed
    lines = [r.line for r in recs]
    assert lines == sorted(lines) and len(set(lines)) == len(lines)
    for r in recs:
        assert (r.text is None) != (r.error is None)
        if r.text is not None:
            r.text.encode("utf-8")  # every text that comes out is encodable


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), max_length=st.integers(3, 64))
def test_tokenizer_never_crashes_on_any_decoded_bytes(raw, max_length):
    text = raw.decode("utf-8", errors="replace")
    enc = PerceiverByteTokenizer()([text, "x"], max_length=max_length, truncation=True, padding="longest")
    assert enc.input_ids.shape == enc.attention_mask.shape and enc.input_ids.shape[0] == 2
    assert enc.input_ids.min() >= 0 and enc.input_ids.max() < 262
