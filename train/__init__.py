"""pcv.train: fine-tune or train a Perceiver classifier (pcv-train), pretrain its encoder (pcv-pretrain)
and average runs into one model (pcv-soup). Needs torch, transformers and scikit-learn
(`pip install "pcv[train]"`). Loaded on first use, like pcv.export."""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "TrainConfig": "train", "write_split": "train",
    "PretrainConfig": "pretrain", "pretrain": "pretrain", "SoupConfig": "soup", "make_soup": "soup",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'pcv.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
