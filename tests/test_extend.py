"""Growing a trained classifier's input length (modeling.extend_positions) and training it on longer
texts with pcv-train --init-from ... --max-length N."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model, torch_logits
from pcv.export.modeling import load_classifier
from pcv.export.onnx_export import ExportConfig, export_onnx
from pcv.train.cli import train_main
from pcv.train.surgery import extend_positions, patch_init, position_period
from pcv.train.teacher import DenseTargets


def test_extended_model_repeats_positions_and_keeps_short_texts_logits(review_texts):
    m = tiny_model(max_length=64)
    patch_init(m)
    short = ["a great film", "dull.", review_texts[0][:50]]
    before = torch_logits(m, short, 64)
    old = m.perceiver.input_preprocessor.position_embeddings.weight.detach().clone()
    extend_positions(m, 160)
    new = m.perceiver.input_preprocessor.position_embeddings.weight.detach()
    assert new.shape == (160, old.shape[1]) and m.config.max_position_embeddings == 160
    assert position_period(m.config) == 64
    torch.testing.assert_close(new[64:128], old)
    torch.testing.assert_close(new[128:], old[:32])
    np.testing.assert_allclose(torch_logits(m, short, 160), before, atol=1e-5)  # new positions are padding there
    long_text = review_texts[1] * 3  # past the old 64 positions: reads more, so the logits move
    assert len(long_text.encode()) > 160
    assert not np.allclose(torch_logits(m, [long_text], 160), torch_logits(m, [long_text], 64), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="only grows"):
        extend_positions(m, 100)


def test_the_period_survives_saving_growing_again_and_export(tmp_path, review_texts):
    m = tiny_model(max_length=64)
    extend_positions(m, 128)
    m.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_classifier(str(tmp_path))
    assert loaded.config.max_position_embeddings == 128 and position_period(loaded.config) == 64
    extend_positions(loaded, 256)  # keeps repeating the original 64, not the 128 it was given
    w = loaded.perceiver.input_preprocessor.position_embeddings.weight.detach()
    torch.testing.assert_close(w[192:256], w[:64])
    report = export_onnx(loaded, tmp_path / "model.onnx", ExportConfig(verify_texts=(review_texts[2] * 3,)))
    assert report is not None and report.max_abs_diff < 1e-4


def test_dense_windows_repeat_with_the_positions():
    # 16 positions, 4 latents -> 4-byte windows that start again at token 16.
    d = DenseTargets({"great": 2.0, "film": -1.0}, num_latents=4, max_length=32, positions=16)
    t, m = d(["x" * 14 + " great film"])  # [CLS] + 14 x + space: "great" at token 16 -> latent 0, "film" at 22 -> latent 1
    assert t[..., 0].tolist() == [[2.0, -1.0, 0.0, 0.0]] and m.tolist() == [[1, 1, 1, 1]]


def test_train_from_a_shorter_model_extends_it(tmp_path, reviews, capsys):
    init = tmp_path / "init"
    m = tiny_model(num_latents=8, max_length=64)
    patch_init(m)
    m.save_pretrained(init, safe_serialization=True)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in reviews[:20] + reviews[-20:]))
    out = tmp_path / "long"
    args = [str(data), "--out", str(out), "--init-from", str(init), "--max-length", "192", "--epochs", "0.5",
            "--batch-size", "8", "--eval-every", "100", "--teacher", "ngram", "--dense-weight", "1"]
    assert train_main(args) == 0
    assert "64 positions extended to 192" in capsys.readouterr().out
    trained = load_classifier(str(out))
    assert trained.config.max_position_embeddings == 192 and position_period(trained.config) == 64
    args[args.index("--epochs") + 1] = "1"
    assert train_main(args) == 0  # the same command with more epochs resumes into the extended model
    assert "resumed from" in capsys.readouterr().out
