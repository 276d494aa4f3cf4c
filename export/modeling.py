"""Load or build a PerceiverForSequenceClassification, and the patch initialisation.

Weights load from safetensors only; pickle checkpoints (.bin) are refused unless the caller opts
in, because unpickling a file from elsewhere can run code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from pcv.runtime.errors import ModelError
from transformers import PerceiverConfig, PerceiverForSequenceClassification
from transformers.models.perceiver.modeling_perceiver import PerceiverSelfAttention

IMDB_LABELS = {0: "neg", 1: "pos"}

# config.json is untrusted: sizes are checked before transformers allocates anything.
_SIZE_FIELDS = {  # field -> largest value any real Perceiver uses, times a generous margin
    "num_latents": 1 << 16, "d_latents": 1 << 16, "d_model": 1 << 16, "num_blocks": 1 << 10,
    "num_self_attends_per_block": 1 << 10, "num_self_attention_heads": 1 << 10,
    "num_cross_attention_heads": 1 << 10, "max_position_embeddings": 1 << 20, "vocab_size": 1 << 20,
    "self_attention_widening_factor": 64, "cross_attention_widening_factor": 64,
    "qk_channels": 1 << 16, "v_channels": 1 << 16,
}
MAX_PARAMS = 4_000_000_000  # 20x the 206M language-perceiver


def estimate_params(cfg: dict) -> int:
    """Parameters of a PerceiverForSequenceClassification from its config, to within ~10 %
    (biases, norms and the decoder left out)."""
    d_lat, d_model, vocab = cfg.get("d_latents", 1280), cfg.get("d_model", 768), cfg.get("vocab_size", 262)
    qk = cfg.get("qk_channels") or d_lat
    v = cfg.get("v_channels") or qk
    emb = (vocab + cfg.get("max_position_embeddings", 2048)) * d_model + cfg.get("num_latents", 256) * d_lat
    cross = (d_lat + d_model) * qk + d_model * v + v * d_lat + 2 * cfg.get("cross_attention_widening_factor", 1) * d_lat**2
    layer = 2 * d_lat * qk + 2 * d_lat * v + 2 * cfg.get("self_attention_widening_factor", 1) * d_lat**2
    return emb + cross + cfg.get("num_self_attends_per_block", 26) * layer


def check_config(path: Path) -> dict:
    """Read config.json as data and refuse what is not a sane Perceiver, before any weights load."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path}: not a readable JSON config ({e})") from e
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: expected a JSON object")
    if cfg.get("model_type") != "perceiver":
        raise ModelError(f"{path}: model_type is {cfg.get('model_type')!r}, expected 'perceiver'")
    for name, limit in _SIZE_FIELDS.items():
        value = cfg.get(name)
        if value is None:
            continue  # transformers' default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ModelError(f"{path}: field {name!r} = {value!r} is not an integer in 1..{limit}")
    if (n := estimate_params(cfg)) > MAX_PARAMS:
        raise ModelError(f"{path}: this config describes ~{n / 1e9:.0f}B parameters (limit {MAX_PARAMS / 1e9:.0f}B); refusing to build it")
    return cfg


@dataclass(frozen=True, kw_only=True)
class ModelSize:
    num_latents: int = 256  # latents = the bottleneck; 2048 bytes / 256 latents = 8-byte patches
    d_latents: int = 256  # width of the latent stream (self-attention)
    d_model: int = 256  # width of byte + position embeddings
    num_layers: int = 6  # latent self-attention layers
    self_heads: int = 8
    cross_heads: int = 8  # with the patch init, one head per byte of a patch
    max_length: int = 2048  # position embeddings = longest input in bytes (with specials)
    qk_channels: int | None = None  # None = transformers' default (d_latents)
    v_channels: int | None = None
    cross_widening: int = 1  # MLP width after the cross-attention, in multiples of d_latents
    self_widening: int = 1  # MLP width in the latent self-attention layers


# ModelSize field -> PerceiverConfig key: one table for build_config and its inverse, model_size
_CONFIG_KEYS = {
    "num_latents": "num_latents", "d_latents": "d_latents", "d_model": "d_model",
    "num_layers": "num_self_attends_per_block", "self_heads": "num_self_attention_heads",
    "cross_heads": "num_cross_attention_heads", "max_length": "max_position_embeddings",
    "qk_channels": "qk_channels", "v_channels": "v_channels",
    "cross_widening": "cross_attention_widening_factor", "self_widening": "self_attention_widening_factor",
}


def build_config(size: ModelSize, id2label: dict[int, str] | None = None) -> PerceiverConfig:
    id2label = id2label or IMDB_LABELS
    return PerceiverConfig(
        **{key: getattr(size, f) for f, key in _CONFIG_KEYS.items()},
        num_blocks=1,
        vocab_size=262,
        num_labels=len(id2label),
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
    )


def model_size(config: PerceiverConfig) -> ModelSize:
    """The ModelSize a config was built from (build_config's inverse)."""
    return ModelSize(**{f: getattr(config, key) for f, key in _CONFIG_KEYS.items()})


def _is_local(model: str) -> bool:
    return Path(model).exists() or model.startswith((".", "/", "~")) or os.sep in model and Path(model).parent.exists()


def load_classifier(model: str, *, allow_pickle: bool = False) -> PerceiverForSequenceClassification:
    """Load a classifier from a local HF dir or a hub id (safetensors only unless allow_pickle).

    >>> m = load_classifier("models/imdb-perceiver")  # doctest: +SKIP
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no config.json; a model dir needs config.json and model.safetensors")
        check_config(path / "config.json")
        has_st = any(path.glob("*.safetensors"))
        has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
        if not has_st and has_pickle and not allow_pickle:
            raise ModelError(
                f"{path}: only a pickle checkpoint (.bin/.pt) is there, and unpickling can run code; "
                "convert it to safetensors, or pass --allow-pickle if you trust the file"
            )
        if not has_st and not has_pickle:
            raise ModelError(f"{path}: no model.safetensors in the model dir")
        try:
            m = PerceiverForSequenceClassification.from_pretrained(path, use_safetensors=has_st or not allow_pickle)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: cannot load the model: {e}") from e
        return m.eval()
    if path.suffix in (".onnx", ".safetensors", ".bin") or _is_local(model):
        raise ModelError(f"{model}: no such model dir (give an HF model dir or a hub id)")
    try:
        m = PerceiverForSequenceClassification.from_pretrained(model, use_safetensors=not allow_pickle or None)
    except OSError as e:
        raise ModelError(
            f"{model}: cannot load it from the Hugging Face Hub ({str(e).splitlines()[0]}). "
            "If this machine is offline, download the model elsewhere and pass its local dir "
            "(config.json + model.safetensors)"
        ) from e
    return m.eval()


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes): the source identity stored in ONNX metadata."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


POSITION_PERIOD = "pcv_position_period"  # config.json field set by extend_positions


def set_attention_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the dropout on the attention probabilities of every Perceiver attention in `model`, and
    in its config (a saved model records what it was trained with); returns how many were set.

    On a CPU, attention dropout is most of a training step's cost: torch's fused attention has no
    kernel with dropout there, so every score map is materialised and a random mask drawn for it
    (0.6 s instead of 1.8 s per step of 32 x 2,048 bytes for the bundled model's size).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"attention dropout {p}: use a probability in [0, 1)")
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
        raise ValueError(f"the model already has {old} positions; extend_positions only grows them (asked for {length})")
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
        raise ValueError(f"add_layers needs num_blocks 1 (the model has {cfg.num_blocks})")
    old = list(model.perceiver.encoder.self_attends)
    if layers <= len(old):
        raise ValueError(f"the model already has {len(old)} self-attention layers; add_layers only grows them (asked for {layers})")
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
    every latent holds the review's average byte and the classifier gets almost no gradient
    (DESIGN.md). Position channels live in the first half of d_model, byte channels in the second,
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
        raise ValueError(f"patch_init needs d_model >= {2 * per_head} and d_latents >= {per_head}")
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
