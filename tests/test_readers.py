from __future__ import annotations

import gzip
import json

import pytest
from pcv.runtime import InputError, ReaderConfig, read_records


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_jsonl_good_and_bad_lines(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "good"}),
        "{not json",
        json.dumps({"id": "b"}),
        json.dumps({"id": "c", "text": 5}),
        json.dumps(["list"]),
        "",
        json.dumps({"text": "no id"}),
    ]
    p = _write(tmp_path / "r.jsonl", ("\n".join(lines) + "\n").encode() + b'{"text": "\xff\xfe bad"}\n')
    recs = list(read_records(p))
    assert [r.line for r in recs] == [1, 2, 3, 4, 5, 7, 8]
    assert recs[0].text == "good" and recs[0].id == "a"
    assert "invalid JSON" in recs[1].error
    assert "'text' is missing" in recs[2].error
    assert "int, expected a string" in recs[3].error
    assert "JSON object" in recs[4].error
    assert recs[5].id == 7 and recs[5].text == "no id"  # id defaults to the line number
    assert "invalid UTF-8" in recs[6].error


def test_bom_crlf_and_gzip(tmp_path):
    raw = b"\xef\xbb\xbf" + b'{"text": "one"}\r\n{"text": "two"}\r\n'
    p = tmp_path / "r.jsonl.gz"
    p.write_bytes(gzip.compress(raw))
    assert [r.text for r in read_records(str(p))] == ["one", "two"]


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    body = "".join(json.dumps({"text": f"review {i} " * 20}) + "\n" for i in range(2000)).encode()
    data = gzip.compress(body)
    p = _write(tmp_path / "cut.jsonl.gz", data[: len(data) // 2])
    recs = list(read_records(p))
    assert recs[-1].error and "damaged" in recs[-1].error
    assert all(r.error is None for r in recs[:-1]) and len(recs) > 10


def test_csv_quoted_newlines_and_columns(tmp_path):
    p = _write(tmp_path / "r.csv", b'id,text\n1,"multi\nline, with comma"\n2,plain\n3,too,many\n4,"bad \xff byte"\n')
    recs = list(read_records(p))
    assert recs[0].text == "multi\nline, with comma" and recs[0].line == 2
    assert recs[1].line == 4 and recs[1].id == "2"
    assert "columns" in recs[2].error
    assert "UTF-8" in recs[3].error


def test_csv_without_text_column_is_refused(tmp_path):
    p = _write(tmp_path / "r.csv", b"id,review\n1,x\n")
    with pytest.raises(InputError, match="no column 'text'"):
        list(read_records(p))


def test_txt_lines(tmp_path):
    p = _write(tmp_path / "r.txt", b"first review\n\nsecond \xc3\xa9\nbad \xff\n")
    recs = list(read_records(p))
    assert [(r.line, r.text) for r in recs[:2]] == [(1, "first review"), (3, "second é")]
    assert recs[2].line == 4 and "UTF-8" in recs[2].error


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="--format"):
        list(read_records(str(tmp_path / "x.xlsx")))
    with pytest.raises(InputError, match="no such file"):
        list(read_records(str(tmp_path / "missing.jsonl")))
    p = _write(tmp_path / "x.data", b"hello\n")
    assert [r.text for r in read_records(p, ReaderConfig(format="txt"))] == ["hello"]
