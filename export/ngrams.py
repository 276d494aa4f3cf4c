"""The byte n-gram head: a linear model over hashed byte n-grams, added to the Perceiver's logits.

A byte-level Perceiver has to learn to spell before it can classify: from a few thousand short texts
it cannot, and a fresh tiny model trained for minutes on a CPU stays far below a TF-IDF baseline.
A bag of hashed byte n-grams (fastText's idea, on the same UTF-8 bytes the Perceiver reads) learns
the words of a task in seconds. The head reads the graph's own inputs, so the ONNX contract does not
change: (input_ids, attention_mask) -> logits, where

    logits = perceiver(input_ids, attention_mask) + sum_p W[bucket(p, n)] / sqrt(count)

over every position p and order n whose n tokens are all under the attention mask (the [CLS] and
[SEP] specials included: they mark where a text begins and ends). bucket() is a polynomial hash of
the n token ids modulo a prime, reduced after every step so that no intermediate value leaves int32
(an engine that computes int64 tensors in int32 gets the same buckets); torch and ONNX compute it alike.

The settings live in config.json under "pcv_ngram"; load_classifier builds PerceiverWithNgrams for
such a config. transformers' own PerceiverForSequenceClassification ignores the head's weights, so a
model with one needs pcv to load it.
"""

from __future__ import annotations

import copy

import torch
from pcv.runtime.errors import ModelError
from transformers import PerceiverForSequenceClassification

CONFIG_KEY = "pcv_ngram"
BASE = 263  # > the 262 token ids: the hash of n ids is exact before the modulo
BUCKETS = 262_139  # a prime near 2^18: 1 MiB of weights per label
ORDERS = (1, 2, 3, 4, 5)
ORDER_SALT = 104_729  # a prime added per order, so that orders hash apart
MAX_BUCKETS = 1 << 22  # the hash stays within int32 at every step (MAX_BUCKETS * BASE + 262 < 2^31)
MAX_ORDER = 7


MAX_WEIGHTS = 1 << 24  # buckets x labels: 64 MiB of fp32 weights at most, whatever the number of labels


def default_settings(num_labels: int = 2) -> dict:
    """Orders 1-5 in BUCKETS buckets, fewer (a smaller prime) past 64 labels so that the table stays
    within MAX_WEIGHTS."""
    buckets = BUCKETS if BUCKETS * num_labels <= MAX_WEIGHTS else _prime_at_most(MAX_WEIGHTS // num_labels)
    return {"orders": list(ORDERS), "buckets": buckets}


def _prime_at_most(n: int) -> int:
    n = max(n, 2)
    while n > 2 and any(n % d == 0 for d in range(2, int(n**0.5) + 1)):
        n -= 1
    return n


def check_settings(value: object, where: str) -> dict:
    """config.json's pcv_ngram, refused unless it is what this head can build (the file is untrusted)."""
    if not isinstance(value, dict) or set(value) != {"orders", "buckets"}:
        raise ModelError(f"{where}: {CONFIG_KEY} must be {{\"orders\": [...], \"buckets\": N}}, not {value!r}")
    orders, buckets = value["orders"], value["buckets"]
    if (not isinstance(orders, list) or not 1 <= len(orders) <= MAX_ORDER
            or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_ORDER for n in orders)
            or len(set(orders)) != len(orders)):
        raise ModelError(f"{where}: {CONFIG_KEY}.orders = {orders!r}: distinct integers in 1..{MAX_ORDER}")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 2 <= buckets <= MAX_BUCKETS:
        raise ModelError(f"{where}: {CONFIG_KEY}.buckets = {buckets!r}: an integer in 2..{MAX_BUCKETS}")
    return {"orders": sorted(orders), "buckets": buckets}


class ByteNgrams(torch.nn.Module):
    """(input_ids, attention_mask) -> (B, num_labels) logits of the hashed byte n-gram bag."""

    def __init__(self, num_labels: int, *, orders: list[int], buckets: int) -> None:
        super().__init__()
        self.orders, self.buckets = tuple(orders), buckets
        self.weight = torch.nn.Parameter(torch.zeros(buckets, num_labels))

    def buckets_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per order: the (B, T) bucket of the n-gram starting at each position and whether it lies under the mask."""
        T = input_ids.shape[1]
        pad = max(self.orders) - 1  # slices stay within bounds (and never count from the end) at any length
        ids = torch.nn.functional.pad(input_ids.to(torch.int64), (0, pad))
        mask = torch.nn.functional.pad(attention_mask.to(torch.int64), (0, pad))
        out = []
        for n in self.orders:
            h = ids[:, 0:T]
            valid = mask[:, 0:T]
            for k in range(1, n):  # the polynomial, reduced at each step: the same buckets, no overflow
                h = torch.remainder(h * BASE + ids[:, k : k + T], self.buckets)
                valid = valid * mask[:, k : k + T]
            out.append((torch.remainder(h + n * ORDER_SALT, self.buckets), valid))
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        total = 0
        count = 0
        for b, valid in self.buckets_of(input_ids, attention_mask):
            v = valid.to(self.weight.dtype)
            total = total + (self.weight[b] * v[..., None]).sum(1)
            count = count + v.sum(1)
        return total / torch.sqrt(torch.clamp(count, min=1.0))[:, None]


class PerceiverWithNgrams(PerceiverForSequenceClassification):
    """PerceiverForSequenceClassification whose logits include the byte n-gram head's."""

    def __init__(self, config) -> None:
        super().__init__(config)
        settings = check_settings(getattr(config, CONFIG_KEY, None), "config")
        self.ngram = ByteNgrams(config.num_labels, **settings)

    def _init_weights(self, module) -> None:
        if isinstance(module, ByteNgrams):  # a fresh head starts at zero: it adds nothing until trained
            torch.nn.init.zeros_(module.weight)
            return
        super()._init_weights(module)

    def forward(self, inputs=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        out = super().forward(inputs=inputs, attention_mask=attention_mask, return_dict=True, **kwargs)
        out.logits = out.logits + self.ngram(inputs, attention_mask).to(out.logits.dtype)
        if labels is not None:  # the loss of the sum (single-label classification), not of the Perceiver's part
            out.loss = torch.nn.functional.cross_entropy(out.logits.float(), labels.view(-1))
        return out.to_tuple() if return_dict is False else out

    def parts(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Perceiver's logits and the n-gram head's, apart (their sum is forward's)."""
        return (super().forward(inputs=inputs, attention_mask=attention_mask).logits,
                self.ngram(inputs, attention_mask))


def has_ngrams(config) -> bool:
    """Whether a config (a PerceiverConfig, or config.json read as a dict) has the byte n-gram head."""
    value = config.get(CONFIG_KEY) if isinstance(config, dict) else getattr(config, CONFIG_KEY, None)
    return value is not None


def with_ngram_head(model, on: bool):
    """The same Perceiver with a fresh (zero) byte n-gram head, or without its head."""
    from .modeling import build_classifier as build

    config = copy.deepcopy(model.config)
    if on:
        setattr(config, CONFIG_KEY, default_settings(config.num_labels))
    elif hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    new = build(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ngram.")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or not all(k.startswith("ngram.") for k in missing):
        raise ModelError(f"the Perceiver's weights do not carry over: missing {missing}, unexpected {unexpected}")
    if on:
        torch.nn.init.zeros_(new.ngram.weight)
    return new
