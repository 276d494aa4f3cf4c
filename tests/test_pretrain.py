"""pcv-pretrain: span masking, a tiny pretraining run that resumes, and transfer into pcv-train."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pcv.export.modeling import ModelSize, load_classifier  # noqa: E402
from pcv.runtime import PerceiverByteTokenizer  # noqa: E402
from pcv.runtime.tokenizer import MASK  # noqa: E402
from pcv.train.cli import pretrain_main  # noqa: E402
from pcv.train.pretrain import IGNORE, PretrainConfig, pretrain, span_mask  # noqa: E402

TINY = ModelSize(num_latents=16, d_latents=32, d_model=32, num_layers=1, self_heads=2, cross_heads=2, max_length=256)


def test_span_mask_only_touches_content_and_hits_the_rate(review_texts):
    enc = PerceiverByteTokenizer()(review_texts[:64], max_length=512, truncation=True, padding="longest")
    rng = np.random.default_rng(0)
    x, y = span_mask(enc.input_ids, enc.attention_mask, rng, rate=0.15, mean_span=3.0, max_span=10)
    chosen = y != IGNORE
    content = (enc.input_ids >= 6) & (enc.attention_mask == 1)
    assert not (chosen & ~content).any()  # never specials or padding
    assert np.array_equal(y[chosen], enc.input_ids[chosen])  # labels are the original bytes
    assert np.array_equal(x[~chosen], enc.input_ids[~chosen])  # nothing else changes
    rate = chosen.sum() / content.sum()
    assert 0.10 < rate < 0.20
    assert 0.7 < (x[chosen] == MASK).mean() < 0.9
    # spans: a masked byte's neighbour is masked far more often than the rate
    both = (chosen[:, 1:] & chosen[:, :-1]).sum() / chosen[:, :-1].sum()
    assert both > 0.4


def test_tiny_pretraining_resumes_and_transfers_to_the_classifier(tmp_path, review_texts, capsys):
    data = tmp_path / "unsup.jsonl"
    texts = review_texts[:80]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "mlm"
    cfg = PretrainConfig(data=(str(data),), out=str(out), size=TINY, max_length=256, batch_size=8, epochs=1.0,
                         warmup_steps=2, eval_every=4, checkpoint_every=3, val_texts=16, device="cpu")
    first = pretrain(PretrainConfig(**{**cfg.__dict__, "epochs": 0.5}))
    assert first["steps"] == 4 and (out / "checkpoint" / "state.pt").is_file()
    capsys.readouterr()
    again = pretrain(cfg)  # same dir: resumes at step 4, not from scratch (72 texts / 8 = 9 steps)
    assert again["steps"] == 9 and "at step 4" in capsys.readouterr().out
    assert [h["step"] for h in again["history"]] == [4, 8, 9]
    assert 0.0 <= again["best_masked_byte_accuracy"] <= 1.0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))

    clf = load_classifier(str(out))  # the encoder comes over; the head is new
    from transformers import PerceiverForMaskedLM

    mlm = PerceiverForMaskedLM.from_pretrained(out)
    for name in ("perceiver.embeddings.latents", "perceiver.input_preprocessor.embeddings.weight",
                 "perceiver.encoder.cross_attention.attention.self.query.weight"):
        assert torch.equal(clf.state_dict()[name], mlm.state_dict()[name]), name


def test_pretrain_cli_refuses_empty_input(tmp_path, capsys):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    assert pretrain_main([str(empty), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "no texts" in capsys.readouterr().err


def test_patch_init_of_the_mlm_decoder_reads_each_bytes_own_latent():
    from pcv.train.pretrain import build_mlm

    cfg = PretrainConfig(data=(), out="", size=ModelSize(num_latents=32, d_latents=64, d_model=64, num_layers=2,
                                                         self_heads=4, cross_heads=8, max_length=256), max_length=256)
    model = build_mlm(cfg).eval()
    ids = torch.randint(6, 262, (1, 256))
    with torch.no_grad():
        out = model(inputs=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    decoder = out.cross_attentions[-1][0].mean(0)  # (L, latents), averaged over heads
    assert torch.equal(decoder.argmax(-1), torch.arange(256) // 8)
    assert model.perceiver.decoder.decoding_cross_attention.attention.use_query_residual


def test_pretrain_attention_dropout_flag_is_saved_and_checked(tmp_path, review_texts, capsys):
    from transformers import PerceiverConfig

    data = tmp_path / "unsup.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in review_texts[:40]))
    out = tmp_path / "mlm"
    args = [str(data), "--out", str(out), "--device", "cpu", "--num-latents", "16", "--d-latents", "32", "--d-model", "32",
            "--num-layers", "1", "--self-heads", "2", "--cross-heads", "2", "--max-length", "256", "--batch-size", "8",
            "--epochs", "0.25", "--warmup-steps", "1"]
    assert pretrain_main([*args, "--attention-dropout", "0"]) == 0
    assert PerceiverConfig.from_pretrained(out).attention_probs_dropout_prob == 0.0
    assert pretrain_main([*args, "--attention-dropout", "-0.1"]) == 2
    assert "--attention-dropout -0.1: a probability in [0, 1)" in capsys.readouterr().err


def test_fused_attention_gives_the_mlm_its_stock_logits_and_gradients():
    import copy

    from pcv.train.fastattn import use_fused_attention
    from pcv.train.pretrain import build_mlm

    torch.manual_seed(0)
    cfg = PretrainConfig(data=(), out="", size=ModelSize(num_latents=16, d_latents=64, d_model=64, num_layers=2,
                                                         self_heads=4, cross_heads=8, max_length=128), max_length=128)
    stock = build_mlm(cfg).eval()
    fused = copy.deepcopy(stock)
    assert use_fused_attention(fused) == 4  # cross-attention, 2 self-attention layers, the MLM decoder's cross-attention
    x = torch.randint(6, 262, (3, 128))
    mask = torch.ones(3, 128, dtype=torch.long)
    mask[1, 40:] = 0
    outs = []
    for m in (stock, fused):
        m.zero_grad()
        logits = m(inputs=x, attention_mask=mask).logits
        logits[:, :100].sum().backward()
        outs.append((logits.detach(), m.perceiver.decoder.output_position_encodings.position_embeddings.grad.clone(),
                     m.perceiver.input_preprocessor.embeddings.weight.grad.clone()))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-4)


def test_pretrain_evaluates_texts_shorter_than_max_length(tmp_path):
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps({"text": f"short text number {i}"}) + "\n" for i in range(60)))
    out = tmp_path / "mlm"
    assert pretrain_main([str(data), "--out", str(out), "--device", "cpu", "--num-latents", "16", "--d-latents", "32",
                          "--d-model", "32", "--num-layers", "1", "--self-heads", "2", "--cross-heads", "2",
                          "--max-length", "256", "--batch-size", "8", "--epochs", "0.5", "--warmup-steps", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["history"]
