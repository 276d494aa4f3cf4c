"""Byte-level Perceiver tokenizer in numpy, id-for-id identical to transformers' PerceiverTokenizer.

Ids: UTF-8 byte + 6. Specials: [PAD] 0, [BOS] 1, [EOS] 2, [MASK] 3, [CLS] 4, [SEP] 5.
One text encodes as `[CLS] ids [SEP]`. Like the reference, the literal strings "[CLS]", "[SEP]",
... inside a text become their special id (transformers splits text on added tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from .errors import ConfigError

PAD, BOS, EOS, MASK, CLS, SEP = 0, 1, 2, 3, 4, 5
BYTE_OFFSET = 6
VOCAB_SIZE = 256 + BYTE_OFFSET
DEFAULT_MAX_LENGTH = 2048
_SPECIALS = {"[PAD]": PAD, "[BOS]": BOS, "[EOS]": EOS, "[MASK]": MASK, "[CLS]": CLS, "[SEP]": SEP}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in _SPECIALS) + ")")

Padding = Literal["longest", "max_length", "do_not_pad"] | bool


@dataclass(frozen=True)
class Encoding:
    """What the tokenizer returns; indexable like the transformers BatchEncoding."""

    input_ids: npt.NDArray[np.int64]  # (B, T) or (T,) for a single text
    attention_mask: npt.NDArray[np.int64]  # same shape
    num_truncated: int = 0  # texts that lost bytes to max_length

    def __getitem__(self, key: str) -> npt.NDArray[np.int64]:
        if key not in ("input_ids", "attention_mask"):
            raise KeyError(f"{key!r}: an Encoding has 'input_ids' and 'attention_mask'")
        return getattr(self, key)

    def keys(self) -> tuple[str, str]:
        return ("input_ids", "attention_mask")


def _text_ids(text: str) -> npt.NDArray[np.int64]:
    """Ids of one text without [CLS]/[SEP]; splits on literal special tokens like the reference."""
    if "[" not in text:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
    parts: list[npt.NDArray[np.int64]] = []
    for piece in _SPECIAL_RE.split(text):
        if piece in _SPECIALS:
            parts.append(np.array([_SPECIALS[piece]], dtype=np.int64))
        elif piece:
            parts.append(np.frombuffer(piece.encode("utf-8"), dtype=np.uint8).astype(np.int64) + BYTE_OFFSET)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _kept_length(n: int, max_length: int | None) -> int:
    """How many content ids survive truncation to max_length ([CLS] and [SEP] take two). A max_length
    under 3 leaves no room for one content id, and transformers' answer there changed between
    versions (4.x keeps the whole text, 5.x none of it): refused."""
    if max_length is None or n + 2 <= max_length:
        return n
    if max_length < 3:  # (n > 0 here: an empty text needs no cut)
        raise ConfigError(f"max_length={max_length} leaves no room for a byte beside [CLS] and [SEP]: use 3 or more")
    return max_length - 2


def token_lengths(texts: list[str], max_length: int) -> npt.NDArray[np.int64]:
    """Tokens each text takes after truncation ([CLS] + UTF-8 bytes + [SEP], at most max_length):
    what a batch of it pads to, for planning batches."""
    return np.minimum(np.fromiter((len(t.encode("utf-8")) for t in texts), np.int64, len(texts)) + 2, max_length)


def text_as_read(text: str, max_length: int | None) -> str:
    """The part of `text` that a model with `max_length` positions reads after truncation ([CLS]
    and [SEP] take two); a character cut in half at the end is dropped, and literal special
    tokens ("[SEP]", ...) count as the one id they become.

    >>> text_as_read("naïve film", 6)
    'naï'
    """
    if "[" not in text:
        data = text.encode("utf-8")
        return data[: _kept_length(len(data), max_length)].decode("utf-8", errors="ignore")
    ids = _text_ids(text)
    ids = ids[: _kept_length(len(ids), max_length)]
    names = {v: k for k, v in _SPECIALS.items()}
    pieces: list[str] = []
    content = bytearray()
    for i in ids.tolist():
        if i >= BYTE_OFFSET:
            content.append(i - BYTE_OFFSET)
            continue
        pieces += [content.decode("utf-8", errors="ignore"), names[i]]
        content = bytearray()
    return "".join(pieces) + content.decode("utf-8", errors="ignore")


class PerceiverByteTokenizer:
    """Numpy drop-in for transformers' PerceiverTokenizer (no torch, no Python loop over bytes).

    >>> tok = PerceiverByteTokenizer()
    >>> tok(["hi", "é"], padding="longest")["input_ids"].tolist()
    [[4, 110, 111, 5], [4, 201, 175, 5]]
    """

    model_max_length: int = DEFAULT_MAX_LENGTH
    vocab_size: int = VOCAB_SIZE
    pad_token_id: int = PAD

    def __init__(self, *, model_max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.model_max_length = model_max_length

    def __call__(
        self,
        text: str | list[str],
        *,
        max_length: int | None = None,
        padding: Padding = False,
        truncation: bool = False,
    ) -> Encoding:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        if padding is True:
            padding = "longest"
        elif padding is False:
            padding = "do_not_pad"
        if padding not in ("longest", "max_length", "do_not_pad"):
            raise ConfigError(f"padding={padding!r}: use 'longest', 'max_length', 'do_not_pad', True or False")
        limit = (max_length or self.model_max_length) if truncation else None
        pad_to = (max_length or self.model_max_length) if padding == "max_length" else None

        # Fast path: one bytes join for all texts without a '[', one frombuffer, one scatter.
        plain = ["[" not in t for t in texts]
        encoded = [t.encode("utf-8") if p else b"" for t, p in zip(texts, plain)]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(texts))
        special_ids = {i: _text_ids(t) for i, t in enumerate(texts) if not plain[i]}
        for i, ids in special_ids.items():
            lengths[i] = len(ids)
        kept = np.array([_kept_length(int(n), limit) for n in lengths], dtype=np.int64) if limit else lengths
        num_truncated = int(np.count_nonzero(kept < lengths))
        if limit is not None and num_truncated:
            encoded = [e[:k] for e, k in zip(encoded, kept.tolist())]

        total = kept + 2  # (B,) with [CLS] and [SEP]
        width = int(total.max()) if len(texts) else 2
        if pad_to is not None:
            width = max(width, pad_to)
        if padding == "do_not_pad" and len(set(total.tolist())) > 1:
            raise ConfigError(
                "padding=False with texts of different lengths cannot form an array: pass padding='longest'"
            )
        if pad_to is not None and width > pad_to:
            raise ConfigError(
                f"a text has {width} tokens, more than max_length={pad_to}: pass truncation=True to cut it"
            )

        batch = len(texts)
        input_ids = np.zeros((batch, width), dtype=np.int64)  # (B, T), PAD = 0
        flat = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
        plain_kept = np.where(plain, kept, 0)
        rows = np.repeat(np.arange(batch), plain_kept)
        starts = np.cumsum(plain_kept) - plain_kept
        cols = np.arange(flat.size) - np.repeat(starts, plain_kept) + 1
        input_ids[rows, cols] = flat
        for i, ids in special_ids.items():
            input_ids[i, 1 : 1 + kept[i]] = ids[: kept[i]]
        input_ids[:, 0] = CLS
        input_ids[np.arange(batch), kept + 1] = SEP
        attention_mask = (np.arange(width)[None, :] < total[:, None]).astype(np.int64)
        if single:
            return Encoding(input_ids[0], attention_mask[0], num_truncated)
        return Encoding(input_ids, attention_mask, num_truncated)


def reference_encode(text: str, *, max_length: int | None = None) -> list[int]:
    """Plain, obviously-correct version of one text's ids (with specials), for tests."""
    ids: list[int] = []
    for piece in _SPECIAL_RE.split(text):
        if piece in _SPECIALS:
            ids.append(_SPECIALS[piece])
        else:
            ids.extend(b + BYTE_OFFSET for b in piece.encode("utf-8"))
    ids = ids[: _kept_length(len(ids), max_length)]
    return [CLS, *ids, SEP]
