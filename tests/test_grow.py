"""Deepening a trained classifier's latent transformer (modeling.add_layers) and training it with
pcv-train --init-from ... --grow-layers N."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import tiny_model, torch_logits
from pcv.export.modeling import ModelSize, build_config, load_classifier, model_size
from pcv.export.onnx_export import ExportConfig, export_onnx
from pcv.train.cli import train_main
from pcv.train.surgery import add_layers, patch_init


def _trained_like(layers: int):
    # default init has tiny output weights; give every weight some size so a wrong growth shows in the logits
    m = tiny_model(layers=layers)
    patch_init(m)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def test_grown_model_gives_the_same_logits_and_new_layers_copy_their_neighbour(review_texts):
    m = _trained_like(layers=2)
    texts = review_texts[:4]
    before = torch_logits(m, texts, 256)
    old = list(m.perceiver.encoder.self_attends)
    add_layers(m, 5)
    grown = list(m.perceiver.encoder.self_attends)
    assert len(grown) == 5 and m.config.num_self_attends_per_block == 5
    # the old layers keep their order, with the 3 new ones spread between them: old0, new, old1, new, new
    assert grown[0] is old[0] and grown[2] is old[1]
    for i, src in ((1, old[0]), (3, old[1]), (4, old[1])):
        new = grown[i]
        assert new is not src
        torch.testing.assert_close(new.attention.self.query.weight, src.attention.self.query.weight)
        torch.testing.assert_close(new.mlp.dense1.weight, src.mlp.dense1.weight)
        for lin in (new.attention.output.dense, new.mlp.dense2):
            assert not lin.weight.any() and not lin.bias.any()
        assert new.mlp.dense1.weight.data_ptr() != src.mlp.dense1.weight.data_ptr()  # copies, not shared weights
    np.testing.assert_allclose(torch_logits(m, texts, 256), before, atol=1e-5)
    with torch.no_grad():
        grown[3].mlp.dense2.bias.copy_(torch.linspace(-1, 1, 32))  # new layers are on the forward path: an output moves the logits
    assert not np.allclose(torch_logits(m, texts, 256), before, atol=1e-3)
    grown[3].mlp.dense2.bias.data.zero_()
    with pytest.raises(ValueError, match="only grows"):
        add_layers(m, 5)


def test_grown_model_saves_reloads_and_exports(tmp_path, review_texts):
    m = _trained_like(layers=1)
    add_layers(m, 3)
    m.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_classifier(str(tmp_path))
    assert loaded.config.num_self_attends_per_block == 3
    np.testing.assert_allclose(torch_logits(loaded, review_texts[:3], 256), torch_logits(m, review_texts[:3], 256), atol=1e-6)
    report = export_onnx(loaded, tmp_path / "model.onnx", ExportConfig(verify_texts=tuple(review_texts[:3])))
    assert report is not None and report.max_abs_diff < 1e-4


def test_train_grows_a_model_trains_its_new_layers_and_resumes(tmp_path, reviews, capsys):
    init = tmp_path / "init"
    m = _trained_like(layers=1)
    m.save_pretrained(init, safe_serialization=True)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in reviews[:20] + reviews[-20:]))
    out = tmp_path / "deep"
    args = [str(data), "--out", str(out), "--init-from", str(init), "--grow-layers", "2", "--max-length", "256",
            "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "1", "--eval-every", "2",
            "--attention-dropout", "0"]
    assert train_main(args) == 0
    assert "1 self-attention layers grown to 2" in capsys.readouterr().out
    trained = load_classifier(str(out))
    assert trained.config.num_self_attends_per_block == 2
    assert trained.perceiver.encoder.self_attends[1].mlp.dense2.weight.abs().max() > 0  # the new layer learned
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["grow_layers"] == 2
    # the size recorded is the model trained (loaded, then grown), not the --num-latents/... defaults
    assert config["size"] == asdict(model_size(trained.config))
    assert config["size"]["num_layers"] == 2 and config["size"]["num_latents"] == trained.config.num_latents
    args[args.index("--epochs") + 1] = "2"
    assert train_main(args) == 0  # the same command with more epochs resumes into the grown model
    assert "resumed from" in capsys.readouterr().out


def test_model_size_inverts_build_config():
    size = ModelSize(num_latents=16, d_latents=48, d_model=24, num_layers=3, self_heads=4, cross_heads=2, max_length=512,
                     qk_channels=32, v_channels=48, cross_widening=2, self_widening=4)
    assert model_size(build_config(size)) == size


def test_grow_layers_needs_a_model_and_more_layers(tmp_path, reviews, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in reviews[:16]))
    assert train_main([str(data), "--out", str(tmp_path / "a"), "--grow-layers", "4"]) == 2
    assert "give --init-from too" in capsys.readouterr().err
    init = tmp_path / "init"
    tiny_model(layers=2).save_pretrained(init, safe_serialization=True)
    assert train_main([str(data), "--out", str(tmp_path / "b"), "--init-from", str(init), "--grow-layers", "1",
                       "--max-length", "256", "--epochs", "1", "--batch-size", "8", "--teacher", "ngram"]) == 2
    got = capsys.readouterr()
    assert "has 2 self-attention layers; --grow-layers 1 can only add layers" in got.err
    assert "teacher:" not in got.out  # refused before the teacher is fitted (a minute or more on real data)
