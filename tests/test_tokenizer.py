"""The numpy tokenizer must give transformers' PerceiverTokenizer ids and masks for every input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pcv.runtime import PerceiverByteTokenizer
from pcv.runtime.tokenizer import reference_encode, text_as_read

transformers = pytest.importorskip("transformers")

HAND = [
    "", " ", "a", "hello world", "é", "naïve café", "😀👍🏽", "日本語のテキスト", "\x00nul\x00", "tab\tnew\nline\r\n",
    "[CLS]", "a[SEP]b", "[MASK] [PAD] [BOS] [EOS]", "[cls] lower case is not special", "[SEP",
    "x" * 3000, "é" * 1500, "😀" * 700,
]


@pytest.fixture(scope="module")
def ref():
    return transformers.PerceiverTokenizer()


@pytest.fixture(scope="module")
def tok():
    return PerceiverByteTokenizer()


def _same(a, b) -> None:
    np.testing.assert_array_equal(a["input_ids"], np.asarray(b["input_ids"]))
    np.testing.assert_array_equal(a["attention_mask"], np.asarray(b["attention_mask"]))


@pytest.mark.parametrize("text", HAND, ids=[repr(t[:12]) for t in HAND])
def test_single_text_matches_reference(tok, ref, text):
    _same(tok(text, truncation=True), ref(text, truncation=True))
    if len(text.encode()) < 2000:
        _same(tok(text), ref(text))


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [None, 1, 2, 3, 7, 64, 512, 2048], ids=lambda m: f"max{m}")
def test_batches_match_reference(tok, ref, review_texts, padding, max_length):
    texts = HAND + review_texts[:60]
    kw = {"padding": padding, "truncation": True}
    if max_length is not None:
        kw["max_length"] = max_length
    if max_length is not None and max_length < 3:
        # no room for a byte: transformers 4.x returns the texts whole (ragged rows with max_length
        # padding), 5.x only [CLS] [SEP]; we refuse
        with pytest.raises(ValueError, match="max_length"):
            tok(texts, **kw)
        return
    want = ref(texts, return_tensors="np", **kw)
    _same(tok(texts, **kw), want)


def test_real_reviews_match_reference(tok, ref, review_texts):
    _same(tok(review_texts, padding="longest", truncation=True), ref(review_texts, padding="longest", truncation=True, return_tensors="np"))


def test_counts_truncated_texts(tok):
    enc = tok(["short", "x" * 100, "y" * 10], max_length=12, truncation=True, padding="longest")
    assert enc.num_truncated == 1
    assert enc.input_ids.shape == (3, 12)
    assert enc.input_ids.dtype == np.int64 and enc.attention_mask.dtype == np.int64


def test_ragged_without_padding_is_an_error(tok):
    with pytest.raises(ValueError, match="padding"):
        tok(["a", "abc"])
    with pytest.raises(ValueError, match="truncation"):
        tok(["x" * 50], max_length=10, padding="max_length")
    with pytest.raises(TypeError, match="text 1"):
        tok(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        tok(["ok"], max_length=2, truncation=True)
    assert tok([""], max_length=2, truncation=True).input_ids.tolist() == [[4, 5]]  # nothing to cut


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=6), st.integers(min_value=3, max_value=90))
def test_property_fast_path_equals_reference(texts, max_length):
    enc = PerceiverByteTokenizer()(texts, max_length=max_length, truncation=True, padding="longest")
    for row, mask, text in zip(enc.input_ids, enc.attention_mask, texts):
        want = reference_encode(text, max_length=max_length)
        assert row[: len(want)].tolist() == want
        assert mask.sum() == len(want) and not row[len(want):].any()


@pytest.mark.parametrize("max_length", [3, 8, 64, 2048])
@pytest.mark.parametrize("text", HAND, ids=[repr(t[:12]) for t in HAND])
def test_text_as_read_is_what_the_model_reads(tok, text, max_length):
    # Re-encoding the text the model reads gives the truncated ids, less at most the 3 bytes of a
    # character cut in half at the end.
    read = text_as_read(text, max_length)
    assert text.startswith(read)
    ids = tok(text, max_length=max_length, truncation=True)["input_ids"][1:-1].tolist()
    again = tok(read)["input_ids"][1:-1].tolist()
    assert ids[: len(again)] == again and len(ids) - len(again) <= 3
    if len(ids) == len(reference_encode(text)) - 2:
        assert read == text  # nothing cut
