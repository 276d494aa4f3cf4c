"""pcv-pretrain: masked-byte pretraining of a Perceiver encoder on text-only files.

This is how deepmind/language-perceiver got its ability (the paper: masked language modelling on
raw UTF-8 bytes); fine-tuning from it reaches 94 % on IMDB. The encoder (byte + position
embeddings, latents, cross-attention, latent stack) is what carries over: save a
PerceiverForMaskedLM here, then `pcv-train --init-from OUT` loads the same encoder into a
PerceiverForSequenceClassification with a fresh classification head.

Masking is by spans, not single bytes: a single masked byte inside a word is guessed from its
neighbours by spelling alone, a masked span of a few bytes needs the context. Of the chosen
positions 80 % become [MASK], 10 % a random byte, 10 % stay (as in BERT).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from pcv.export import ModelSize, build_config
from pcv.runtime import PerceiverByteTokenizer, ReaderConfig, read_records
from pcv.runtime.errors import ConfigError, InputError
from pcv.runtime.tokenizer import MASK, token_lengths
from transformers import PerceiverForMaskedLM

from .fastattn import use_fused_attention
from .loop import bf16_autocast, finished, record_eval, run_steps, say_precision, start
from .surgery import _sinusoids, patch_init, set_attention_dropout

IGNORE = -100  # label of positions the loss skips
N_SPECIAL = 6  # ids 0..5 are specials; bytes are 6..261


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    data: tuple[str, ...]  # text-only (or labelled: labels are ignored) JSONL/CSV/TXT files
    out: str  # PerceiverForMaskedLM dir (safetensors) + metrics.json; checkpoint/ inside for resume
    size: ModelSize = field(default_factory=ModelSize)
    init: str = "patch"  # "patch" (byte-patch cross-attention, as pcv-train) or "default"
    text_field: str = "text"
    mask_rate: float = 0.15  # fraction of content bytes the loss is taken on
    mean_span: float = 3.0  # mean masked span length in bytes (geometric, capped at max_span)
    max_span: int = 10
    max_length: int = 2048
    batch_size: int = 32
    lr: float = 5e-4  # fresh encoders want a higher rate than fine-tuning's 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500
    epochs: float = 1.0
    max_minutes: float | None = None  # stop (and save) after this much training time
    val_texts: int = 256  # held out for masked-byte accuracy
    eval_every: int = 1000
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA and on CPUs with bf16 instructions (loop.bf16_autocast)
    group_by_length: bool = True  # batches of similar lengths (loop.group_by_length): less padding
    limit: int | None = None  # use only the first N texts (quick runs, tests)
    attention_dropout: float | None = None  # None: 0, as for any fresh model (train.FRESH_ATTENTION_DROPOUT)
    fused_attention: bool = True  # train through torch's scaled_dot_product_attention (fastattn), as pcv-train


def span_mask(ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64], rng: np.random.Generator, *,
              rate: float, mean_span: float, max_span: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Corrupt a tokenized batch by spans; returns (inputs, labels) with labels IGNORE where unmasked.

    Only content bytes (ids >= 6 under the attention mask) are chosen; specials and padding never are.
    """
    B, L = ids.shape
    content = (ids >= N_SPECIAL) & (mask == 1)  # (B, L)
    # span starts at rate / mean_span, lengths geometric with that mean, capped: ~rate of content
    starts = (rng.random((B, L)) < rate / mean_span) & content
    lengths = np.minimum(rng.geometric(1.0 / mean_span, size=(B, L)), max_span)
    chosen = np.zeros((B, L), dtype=bool)
    b_idx, s_idx = np.nonzero(starts)
    for k in range(max_span):  # mark s .. s+len-1, vectorized over all starts per offset
        keep = lengths[b_idx, s_idx] > k
        pos = s_idx[keep] + k
        ok = pos < L
        chosen[b_idx[keep][ok], pos[ok]] = True
    chosen &= content
    labels = np.where(chosen, ids, IGNORE)
    inputs = ids.copy()
    roll = rng.random((B, L))
    inputs[chosen & (roll < 0.8)] = MASK
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = rng.integers(N_SPECIAL, N_SPECIAL + 256, size=int(rand.sum()))
    return inputs, labels


def load_texts(paths: tuple[str, ...], cfg: PretrainConfig) -> list[str]:
    texts: list[str] = []
    rc = ReaderConfig(text_field=cfg.text_field, id_field=None)
    for path in paths:
        for rec in read_records(path, rc):
            if rec.text:
                texts.append(rec.text)
            if cfg.limit and len(texts) >= cfg.limit:
                return texts
    if not texts:
        raise InputError(f"{', '.join(paths)}: no texts")
    return texts


def build_mlm(cfg: PretrainConfig) -> PerceiverForMaskedLM:
    model = PerceiverForMaskedLM(build_config(cfg.size))
    # transformers' MLM decoder has no query residual: the output at byte p is only what its query
    # read from the latents, so the W bytes one latent holds come out alike until the queries learn
    # to differ. With the residual each output also carries its own position (the query). The
    # decoder is dropped when the encoder moves to the classifier, so this changes nothing there.
    model.perceiver.decoder.decoding_cross_attention.attention.use_query_residual = True
    if cfg.init == "patch":
        patch_init(model)
        decoder_patch_init(model)
    elif cfg.init != "default":
        raise ConfigError(f"init {cfg.init!r}: use 'patch' or 'default'")
    return model


@torch.no_grad()
def decoder_patch_init(model: PerceiverForMaskedLM, *, sharpness: float = 12.0) -> None:
    """Start the MLM decoder as the mirror of the patch init: the query of byte p reads the
    latent whose patch holds p, and carries p's exact position for the query residual.

    With the default init the decoder's attention is uniform: every byte is predicted from the
    average latent, and pretraining sat at the unigram guess (17.8 % masked-byte accuracy, the
    most frequent byte) for 800 steps in our first CPU run.
    """
    cfg = model.config
    length, d_lat = cfg.max_position_embeddings, cfg.d_latents
    enc_per_head = model.perceiver.encoder.cross_attention.attention.self.qk_channels // cfg.num_cross_attention_heads
    n_freq = enc_per_head // 2
    dec = model.perceiver.decoder
    attn = dec.decoding_cross_attention.attention.self
    heads = dec.decoding_cross_attention.attention.self.num_heads
    per_head = attn.qk_channels // heads
    emb = dec.output_position_encodings.position_embeddings  # (L, q_dim)
    q_dim = emb.shape[1]
    if per_head < enc_per_head or q_dim < 2 * enc_per_head or q_dim != d_lat:
        raise ConfigError(f"decoder_patch_init needs decoder heads of >= {enc_per_head} channels and q_dim == d_latents")
    enc = lambda p: _sinusoids(p, n_freq, 2.0, 2.0 * length)  # noqa: E731  (the encoder's position code)
    pos = torch.arange(length)
    start = torch.floor(pos / (length / cfg.num_latents)) * (length / cfg.num_latents)
    q = emb.clone()
    q[:, :enc_per_head] = enc(start)  # which latent to read (its start, as patch_init wrote it)
    q[:, enc_per_head : 2 * enc_per_head] = enc(pos)  # which byte of the patch this is
    emb.copy_(q)
    latents = model.perceiver.embeddings.latents
    ln = torch.nn.functional.layer_norm
    q_scale = float(ln(q, (q_dim,))[:, :enc_per_head].norm(dim=1).mean() / q[:, :enc_per_head].norm(dim=1).mean())
    k_scale = float(ln(latents, (d_lat,))[:, :enc_per_head].norm(dim=1).mean() / latents[:, :enc_per_head].norm(dim=1).mean())
    c = sharpness * math.sqrt(per_head) / n_freq  # logit at the matching latent ~ sharpness
    wq = torch.zeros(heads * per_head, q_dim)
    wk = torch.zeros(heads * per_head, d_lat)
    eye = torch.eye(enc_per_head)
    for h in range(heads):
        wq[h * per_head : h * per_head + enc_per_head, :enc_per_head] = eye / q_scale
        wk[h * per_head : h * per_head + enc_per_head, :enc_per_head] = eye / k_scale
    attn.query.weight.copy_(wq * math.sqrt(c))
    attn.key.weight.copy_(wk * math.sqrt(c))
    attn.query.bias.zero_()
    attn.key.bias.zero_()


@torch.no_grad()
def masked_accuracy(model, texts: list[str], cfg: PretrainConfig, device, batch_size: int = 32) -> float:
    """Share of masked bytes predicted exactly, with a fixed mask (same seed every call)."""
    model.eval()
    tok = PerceiverByteTokenizer()
    rng = np.random.default_rng(12345)
    right = total = 0
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s : s + batch_size], max_length=cfg.max_length, truncation=True, padding="longest")
        x, y = span_mask(enc.input_ids, enc.attention_mask, rng, rate=cfg.mask_rate, mean_span=cfg.mean_span, max_span=cfg.max_span)
        with bf16_autocast(device, cfg.bf16):
            logits = model(inputs=torch.from_numpy(x).to(device), attention_mask=torch.from_numpy(enc.attention_mask).to(device)).logits
        pred = logits[:, : y.shape[1]].argmax(-1).cpu().numpy()  # logits cover max_length; the batch may be shorter
        sel = y != IGNORE
        right += int((pred[sel] == y[sel]).sum())
        total += int(sel.sum())
    model.train()
    return right / max(total, 1)


def pretrain(cfg: PretrainConfig) -> dict:
    """Masked-byte pretraining; saves the best PerceiverForMaskedLM to cfg.out and returns metrics."""
    from .train import _device

    device = _device(cfg.device)  # a bad --device is refused before anything is written
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    say_precision(device, cfg.bf16)
    texts = load_texts(cfg.data, cfg)
    order0 = np.random.default_rng(cfg.seed).permutation(len(texts))
    n_val = min(cfg.val_texts, max(1, len(texts) // 10))
    val = [texts[i] for i in order0[:n_val]]
    pool = [texts[i] for i in order0[n_val:]]
    model = build_mlm(cfg).to(device).train()
    set_attention_dropout(model, cfg.attention_dropout if cfg.attention_dropout is not None else 0.0)
    if cfg.fused_attention:  # encoder and MLM decoder alike; the saved weights are the stock modules'
        use_fused_attention(model)
    run = start(model, pool_size=len(pool), batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
                weight_decay=cfg.weight_decay, warmup=cfg.warmup_steps, max_minutes=cfg.max_minutes, ckpt_dir=ckpt_dir,
                device=device)
    state = run.state

    def run_eval() -> None:
        acc = masked_accuracy(model, val, cfg, device)
        entry = {"step": state.step, "masked_byte_accuracy": round(acc, 4), "train_loss": state.last_loss,
                 "train_seconds": round(state.train_seconds, 1)}
        record_eval(state, entry, acc, model, out)

    tok = PerceiverByteTokenizer()

    def loss_of(idx: np.ndarray, step: int) -> torch.Tensor:
        rng = np.random.default_rng((cfg.seed, step))  # masks reproducible across resumes
        enc = tok([pool[i] for i in idx], max_length=cfg.max_length, truncation=True, padding="longest")
        x, y = span_mask(enc.input_ids, enc.attention_mask, rng, rate=cfg.mask_rate, mean_span=cfg.mean_span, max_span=cfg.max_span)
        with bf16_autocast(device, cfg.bf16):
            logits = model(inputs=torch.from_numpy(x).to(device), attention_mask=torch.from_numpy(enc.attention_mask).to(device)).logits
        yt = torch.from_numpy(y).to(device)  # logits cover max_length positions; the batch may be shorter
        return torch.nn.functional.cross_entropy(logits.float()[:, : yt.shape[1]].reshape(-1, logits.shape[-1]), yt.reshape(-1),
                                                 ignore_index=IGNORE)

    run_steps(run, model=model, loss_of=loss_of, run_eval=run_eval, pool_size=len(pool), batch_size=cfg.batch_size,
              order_seed=cfg.seed + 1,
              eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, max_minutes=cfg.max_minutes,
              lengths=token_lengths(pool, cfg.max_length) if cfg.group_by_length else None, desc="pretrain")
    metrics = {
        "best_masked_byte_accuracy": state.best_acc, "steps": state.step, "total_steps": run.total_steps,
        "examples_seen": state.step * cfg.batch_size, "train_seconds": round(state.train_seconds, 1),
        "texts": len(pool), "val_texts": len(val), "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "history": state.history, "config": asdict(cfg), "finished": finished(state, run.total_steps, cfg.max_minutes),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
