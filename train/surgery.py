"""Model surgery and initialisation for training: patch initialisation, longer inputs from a trained
model (extend_positions), deeper ones (add_layers), and attention dropout."""

from __future__ import annotations

import copy
import math

import torch
from pcv.runtime.errors import ConfigError
from transformers import PerceiverForSequenceClassification
from transformers.models.perceiver.modeling_perceiver import PerceiverSelfAttention

POSITION_PERIOD = "pcv_position_period"  # config.json field set by extend_positions


def set_attention_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the dropout on the attention probabilities of every Perceiver attention in `model`, and
    in its config (a saved model records what it was trained with); returns how many were set.

    On a CPU, attention dropout is most of a training step's cost: torch's fused attention has no
    kernel with dropout there, so every score map is materialised and a random mask drawn for it
    (0.6 s instead of 1.8 s per step of 32 x 2,048 bytes for the bundled model's size).
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"attention dropout {p}: use a probability in [0, 1)")
    model.config.attention_probs_dropout_prob = p
    n = 0
    for mod in model.modules():
        if isinstance(mod, PerceiverSelfAttention):
            mod.dropout.p = p
            n += 1
    return n


def position_period(config) -> int:
    """Positions after which the learned position embeddings repeat (extend_positions); without
    an extension, all of them."""
    return int(getattr(config, POSITION_PERIOD, None) or config.max_position_embeddings)


@torch.no_grad()
def extend_positions(model: PerceiverForSequenceClassification, length: int) -> None:
    """Give a trained classifier `length` input positions by repeating its learned position
    embeddings: byte p + k * P starts with the embedding of byte p (P = the old positions).

    A patch-initialised latent that reads bytes [i*W, (i+1)*W) then reads the same window of each
    P-byte block, with the byte-level features it has learned, and the self-attention cost stays
    the same. Texts that fit in P positions give exactly the old logits (the new positions are
    padding, masked out). Interpolating instead would put two bytes on one position and blur
    what the cross-attention heads have learned to read. The period is kept in the config
    (`pcv_position_period`), so dense distillation places words under the right latent.
    """
    cfg = model.config
    old = cfg.max_position_embeddings
    if length <= old:
        raise ConfigError(f"the model already has {old} positions; extend_positions only grows them (asked for {length})")
    period = position_period(cfg)
    emb = model.perceiver.input_preprocessor.position_embeddings
    reps = -(-length // period)
    table = emb.weight[:period].repeat(reps, 1)[:length]
    new = torch.nn.Embedding(length, table.shape[1], device=table.device, dtype=table.dtype)
    new.weight.copy_(table)
    model.perceiver.input_preprocessor.position_embeddings = new
    cfg.max_position_embeddings = length
    setattr(cfg, POSITION_PERIOD, period)


@torch.no_grad()
def add_layers(model: PerceiverForSequenceClassification, layers: int) -> None:
    """Deepen a trained classifier's latent transformer to `layers` self-attention layers without
    changing what it computes (progressive stacking, as in net2net's deeper networks).

    Each new layer is a copy of the trained layer before it with its two output projections (the
    attention's output dense and the MLP's second dense) set to zero: with the residuals, a new
    layer starts as the identity, so the grown model gives the same logits, and training starts
    from the old model's accuracy with the copied query/key/value and first MLP weights already
    reading useful features. New layers are spread evenly between the old ones.
    """
    cfg = model.config
    if cfg.num_blocks != 1:
        raise ConfigError(f"add_layers needs num_blocks 1 (the model has {cfg.num_blocks})")
    old = list(model.perceiver.encoder.self_attends)
    if layers <= len(old):
        raise ConfigError(f"the model already has {len(old)} self-attention layers; add_layers only grows them (asked for {layers})")
    extra = layers - len(old)
    grown = []
    for i, layer in enumerate(old):
        grown.append(layer)
        # layer i gets the new layers that fall in its share of `extra`
        for _ in range((i + 1) * extra // len(old) - i * extra // len(old)):
            new = copy.deepcopy(layer)
            for lin in (new.attention.output.dense, new.mlp.dense2):
                lin.weight.zero_()
                lin.bias.zero_()
            grown.append(new)
    model.perceiver.encoder.self_attends = torch.nn.ModuleList(grown)
    cfg.num_self_attends_per_block = layers


def _sinusoids(positions: torch.Tensor, num_freqs: int, min_period: float, max_period: float) -> torch.Tensor:
    # (P,) -> (P, 2 * num_freqs): [cos(w p), sin(w p)] at geometric frequencies
    periods = torch.logspace(math.log10(min_period), math.log10(max_period), num_freqs)
    angles = positions[:, None].float() * (2 * math.pi / periods)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@torch.no_grad()
def patch_init(model: PerceiverForSequenceClassification, *, sharpness: float = 12.0) -> None:
    """Start the cross-attention as a byte-patch embedding.

    Latent i, cross-attention head h attends to byte i * W + h (W = max_length / num_latents), so
    each latent starts as a learned linear map of one W-byte patch and the latent self-attention
    starts as a transformer over patches. With the default init the cross-attention is uniform:
    every latent holds the review's average byte and the classifier gets almost no gradient.
    Position channels live in the first half of d_model, byte channels in the second,
    so keys start content-free and training can add content later.
    """
    cfg = model.config
    heads = cfg.num_cross_attention_heads
    attn = model.perceiver.encoder.cross_attention.attention.self
    qk = attn.qk_channels
    per_head = qk // heads
    d_model, d_lat = cfg.d_model, cfg.d_latents
    n_freq = per_head // 2
    if d_model < 2 * per_head or d_lat < per_head:
        raise ConfigError(f"patch_init needs d_model >= {2 * per_head} and d_latents >= {per_head}")
    window = cfg.max_position_embeddings / cfg.num_latents
    enc = lambda p: _sinusoids(p, n_freq, 2.0, 2.0 * cfg.max_position_embeddings)  # noqa: E731

    emb = model.perceiver.input_preprocessor
    pos = torch.zeros(cfg.max_position_embeddings, d_model)
    pos[:, :per_head] = enc(torch.arange(cfg.max_position_embeddings))  # (L, per_head)
    emb.position_embeddings.weight.copy_(pos)
    byte = torch.zeros(cfg.vocab_size, d_model)
    byte[:, d_model // 2 :] = torch.randn(cfg.vocab_size, d_model - d_model // 2) * math.sqrt(per_head / (d_model // 2))
    emb.embeddings.weight.copy_(byte)

    latents = torch.randn(cfg.num_latents, d_lat) * 0.1
    starts = torch.arange(cfg.num_latents) * window
    latents[:, :per_head] = enc(starts)
    model.perceiver.embeddings.latents.copy_(latents)

    # Query of head h = rotation of the latent's start encoding by h positions, scaled.
    periods = torch.logspace(math.log10(2.0), math.log10(2.0 * cfg.max_position_embeddings), n_freq)
    omega = 2 * math.pi / periods
    # LayerNorm shrinks/grows vectors: rescale by the norms the encodings will have after it.
    lat_scale = float(torch.nn.functional.layer_norm(latents, (d_lat,))[:, :per_head].norm(dim=1).mean() / latents[:, :per_head].norm(dim=1).mean())
    kv = pos[:64] + byte[100:164]
    kv_scale = float(torch.nn.functional.layer_norm(kv, (d_model,))[:, :per_head].norm(dim=1).mean() / kv[:, :per_head].norm(dim=1).mean())
    wq = torch.zeros(qk, d_lat)
    wk = torch.zeros(qk, d_model)
    for h in range(heads):
        c, s = torch.cos(omega * h), torch.sin(omega * h)
        rot = torch.zeros(per_head, per_head)
        # enc(p + h): cos' = c cos - s sin; sin' = s cos + c sin
        idx = torch.arange(n_freq)
        rot[idx, idx] = c
        rot[idx, idx + n_freq] = -s
        rot[idx + n_freq, idx] = s
        rot[idx + n_freq, idx + n_freq] = c
        wq[h * per_head : (h + 1) * per_head, :per_head] = rot / lat_scale
        wk[h * per_head : (h + 1) * per_head, :per_head] = torch.eye(per_head) / kv_scale
    # logits = q.k / sqrt(per_head): peak n_freq at the target byte; sharpness sets the softmax.
    scale = sharpness * math.sqrt(per_head) / n_freq
    attn.query.weight.copy_(wq * math.sqrt(scale))
    attn.key.weight.copy_(wk * math.sqrt(scale))
    attn.query.bias.zero_()
    attn.key.bias.zero_()
