"""Shared fixtures: tiny Perceiver models built in the test, real review samples, CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "reviews.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests


def _load_reviews(limit: int) -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()][:limit]


@pytest.fixture(scope="session")
def reviews() -> list[dict]:
    """200 real labelled IMDB training reviews (every 97th of the training file, labels alternating), in the repo."""
    return _load_reviews(200)


@pytest.fixture(scope="session")
def review_texts(reviews) -> list[str]:
    return [r["text"] for r in reviews]


def tiny_model(*, num_latents: int = 16, d: int = 32, layers: int = 1, max_length: int = 256, seed: int = 0,
               qk_channels: int | None = None, v_channels: int | None = None):
    torch = pytest.importorskip("torch")
    from pcv.export.modeling import ModelSize, build_config
    from transformers import PerceiverForSequenceClassification

    torch.manual_seed(seed)
    size = ModelSize(num_latents=num_latents, d_latents=d, d_model=d, num_layers=layers, self_heads=2,
                     cross_heads=2, max_length=max_length, qk_channels=qk_channels, v_channels=v_channels)
    return PerceiverForSequenceClassification(build_config(size)).eval()


def torch_logits(model, texts: list[str], max_length: int):
    """A torch classifier's logits (numpy) for texts, tokenized as pcv-batch does."""
    torch = pytest.importorskip("torch")
    from pcv.runtime import PerceiverByteTokenizer

    enc = PerceiverByteTokenizer()(texts, max_length=max_length, truncation=True, padding="longest")
    with torch.no_grad():
        out = model(inputs=torch.from_numpy(enc.input_ids), attention_mask=torch.from_numpy(enc.attention_mask))
    return out.logits.numpy()


def save_pickle_only(model, path) -> None:
    """A model dir as older checkpoints ship it: config.json + pytorch_model.bin (a pickle). Written by
    hand: transformers 5's save_pretrained writes safetensors only."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny HF model dir (config.json + model.safetensors) and its verified ONNX export."""
    from pcv.export.onnx_export import ExportConfig, export_onnx

    d = tmp_path_factory.mktemp("tiny")
    m = tiny_model()
    m.save_pretrained(d, safe_serialization=True)
    export_onnx(m, d / "model.onnx", ExportConfig())
    return d
