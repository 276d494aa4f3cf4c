"""Checks on an untrusted ONNX file before onnxruntime opens it.

An ONNX model may keep its weights in "external data" files named inside the protobuf. A model
from elsewhere could name `../../home/user/.ssh/id_rsa` or `/etc/shadow` and have onnxruntime map
it as a weight (recent onnxruntime refuses this; the versions pcv supports do not all). We walk the
protobuf wire format ourselves — runtime/ has no `onnx` dependency — and find every tensor that
points outside the model's folder, through `..`, an absolute path or a symlink, before anything
is loaded. The same walk notices a file that was cut short.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

# Field numbers from onnx.proto3, only those on the way to a TensorProto.
_MODEL_GRAPH, _MODEL_METADATA, _MODEL_FUNCTIONS = 7, 14, 25
DIGEST_KEY = "pcv.graph_sha256"
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str
    offset: int
    length: int | None


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _Truncated(pos)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Truncated(pos)


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end or the varint value) of one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _varint(buf, pos, end)
            yield num, wt, value, value
        elif wt == 1 or wt == 5:
            n = 8 if wt == 1 else 4
            if pos + n > end:
                raise _Truncated(pos)
            pos += n
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Truncated(pos)
            yield num, wt, pos, pos + n
            pos += n
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise _Truncated(pos)


def _tensor(buf, s: int, e: int) -> ExternalRef | None:
    name, entries, location = "", {}, 0
    for num, wt, a, b in _fields(buf, s, e):
        if num == _TENSOR_NAME and wt == 2:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif num == _TENSOR_DATA_LOCATION and wt == 0:
            location = a
        elif num == _TENSOR_EXTERNAL_DATA and wt == 2:
            kv = {k: bytes(buf[x:y]).decode("utf-8", "replace") for k, w, x, y in _fields(buf, a, b) if w == 2}
            entries[kv.get(_ENTRY_KEY, "")] = kv.get(_ENTRY_VALUE, "")
    if location != _EXTERNAL and not entries:
        return None
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError as err:
        raise ModelError(f"tensor {name!r}: external data offset/length are not integers ({entries})") from err
    return ExternalRef(name, entries.get("location", ""), offset, length)


def _walk(buf, s: int, e: int, kind: str) -> Iterator[ExternalRef]:
    for num, wt, a, b in _fields(buf, s, e):
        if wt != 2:
            continue
        if kind == "graph" and num == _GRAPH_INITIALIZER:
            if (ref := _tensor(buf, a, b)) is not None:
                yield ref
        elif kind == "graph" and num == _GRAPH_SPARSE_INITIALIZER:
            yield from _walk(buf, a, b, "sparse")
        elif (kind == "graph" and num == _GRAPH_NODE) or (kind == "function" and num == _FUNCTION_NODE):
            yield from _walk(buf, a, b, "node")
        elif kind == "node" and num == _NODE_ATTRIBUTE:
            yield from _walk(buf, a, b, "attribute")
        elif kind == "attribute" and num in (_ATTR_T, _ATTR_TENSORS):
            if (ref := _tensor(buf, a, b)) is not None:
                yield ref
        elif kind == "attribute" and num in (_ATTR_G, _ATTR_GRAPHS):
            yield from _walk(buf, a, b, "graph")
        elif kind == "attribute" and num in (_ATTR_SPARSE, _ATTR_SPARSES):
            yield from _walk(buf, a, b, "sparse")
        elif kind == "sparse" and num in (_SPARSE_VALUES, _SPARSE_INDICES):
            if (ref := _tensor(buf, a, b)) is not None:
                yield ref


@dataclass(frozen=True)
class ModelScan:
    refs: list[ExternalRef]  # tensors whose data sits in other files
    metadata: dict[str, str]  # metadata_props
    graph_span: tuple[int, int]  # byte range of the serialized graph in the file


def scan_onnx(path: str | Path) -> ModelScan:
    """Walk an ONNX file without loading it: external data, metadata, where the graph lies."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelError(f"{path}: the file is empty; export the model again")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            refs: list[ExternalRef] = []
            metadata: dict[str, str] = {}
            span = (0, 0)
            try:
                for num, wt, a, b in _fields(buf, 0, size):
                    if wt != 2:
                        continue
                    if num == _MODEL_GRAPH:
                        span = (a, b)
                        refs += _walk(buf, a, b, "graph")
                    elif num == _MODEL_FUNCTIONS:
                        refs += _walk(buf, a, b, "function")
                    elif num == _MODEL_METADATA:
                        kv = {k: bytes(buf[x:y]).decode("utf-8", "replace") for k, w, x, y in _fields(buf, a, b) if w == 2}
                        metadata[kv.get(_ENTRY_KEY, "")] = kv.get(_ENTRY_VALUE, "")
            except _Truncated as e:
                raise ModelError(
                    f"{path}: not a complete ONNX file (the protobuf breaks off at byte {e.args[0]:,} of "
                    f"{size:,}); it was cut short or corrupted — copy or export it again"
                ) from None
    return ModelScan(refs, metadata, span)


def _digest_range(h, path: Path, offset: int, length: int | None) -> None:
    """Feed bytes [offset, offset + length) of a file to h, 16 MiB at a time (None: to the end)."""
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            chunk = f.read(2**24 if left is None else min(left, 2**24))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)


def file_sha256(path: str | Path) -> str:
    """sha256 of a whole file, read 16 MiB at a time."""
    h = hashlib.sha256()
    _digest_range(h, Path(path), 0, None)
    return h.hexdigest()


def graph_digest(path: str | Path, scan: ModelScan | None = None) -> str:
    """The digest pcv records at export as metadata pcv.graph_sha256 (metadata itself excluded):
    sha256 over the serialized graph, then each external data range in order."""
    path = Path(path)
    sc = scan or scan_onnx(path)
    h = hashlib.sha256()
    _digest_range(h, path, sc.graph_span[0], sc.graph_span[1] - sc.graph_span[0])
    if not sc.refs:
        return h.hexdigest()
    h = hashlib.sha256(h.digest())
    for ref in sc.refs:
        _digest_range(h, path.parent / ref.location, ref.offset, ref.length)
    return h.hexdigest()


def check_onnx_file(path: str | Path, *, max_bytes: int) -> dict[str, str]:
    """Refuse an ONNX file whose external data leaves its folder, is missing or too small.

    The total bytes on disk (model + external data) are checked against max_bytes. When the file
    carries pcv.graph_sha256 (pcv-export writes it), its graph and weights are checked too.
    Returns the model's metadata, read without onnxruntime.

    >>> check_onnx_file("model.onnx", max_bytes=8 * 2**30)  # doctest: +SKIP
    """
    path = Path(path)
    folder = path.resolve().parent
    total = path.stat().st_size
    seen: set[Path] = set()
    sc = scan_onnx(path)  # structure only: nothing outside the file is touched before the checks below
    for ref in sc.refs:
        where = f"{path}: tensor {ref.tensor!r} keeps its data in {ref.location!r}"
        if not ref.location:
            raise ModelError(f"{where}: external data without a location")
        if os.path.isabs(ref.location) or ref.location.startswith(("\\", "~")) or ":" in ref.location:
            raise ModelError(f"{where}: an absolute path; external data must sit in the model's folder. Refusing to load it")
        target = (folder / ref.location).resolve()  # resolve() follows symlinks too
        if not target.is_relative_to(folder):
            raise ModelError(f"{where}, which resolves to {target}, outside the model's folder {folder}. Refusing to load it")
        if not target.is_file():
            raise ModelError(f"{where}, which is missing; copy it next to the .onnx file")
        data_size = target.stat().st_size
        if ref.offset < 0 or (ref.length is not None and (ref.length < 0 or ref.offset + ref.length > data_size)):
            raise ModelError(f"{where}: offset {ref.offset} + length {ref.length} is past its end ({data_size} bytes)")
        if target not in seen:
            seen.add(target)
            total += data_size
    if total > max_bytes:
        raise ModelError(f"{path}: {total / 2**30:.1f} GiB with external data is larger than any pcv model; refusing to load it")
    recorded = sc.metadata.get(DIGEST_KEY)
    if recorded is not None and (actual := graph_digest(path, sc)) != recorded:
        raise ModelError(
            f"{path}: the graph and weights do not match the digest recorded at export ({DIGEST_KEY} "
            f"{recorded[:12]}…, file {actual[:12]}…): the file is corrupted or was edited. Export it again"
        )
    return sc.metadata
