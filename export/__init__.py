"""pcv.export: the torch side of inference — load a classifier safely, export it to ONNX and verify it,
build its variants, and check their accuracy parity (pcv-export, pcv-check).

What other packages use is listed here and loaded on first use, so that importing pcv.export (for a
console script's --help, say) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "ModelSize": "sizes", "SIZE_PRESETS": "sizes", "size_problem": "sizes", "sized": "sizes",
    "build_config": "modeling", "build_classifier": "modeling",
    "has_ngrams": "ngrams", "with_ngram_head": "ngrams", "load_classifier": "modeling", "model_size": "modeling",
    "IMDB_LABELS": "modeling", "ExportConfig": "onnx_export", "export_onnx": "onnx_export",
    "VARIANTS": "variants", "VariantConfig": "variants", "build_variant": "variants", "finish_variant": "variants",
    "TOLERANCES": "check", "labelled_texts": "check", "torch_logits": "check", "onnx_logits": "check",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'pcv.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
