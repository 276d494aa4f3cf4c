"""Load or build a PerceiverForSequenceClassification (sizes, config checks, safe loading).

Weights load from safetensors only; pickle checkpoints (.bin) are refused unless the caller opts
in, because unpickling a file from elsewhere can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from pcv.runtime.errors import ModelError
from transformers import PerceiverConfig, PerceiverForSequenceClassification

from .ngrams import CONFIG_KEY, PerceiverWithNgrams, check_settings, default_settings
from .sizes import ModelSize

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
MAX_HEAD_WEIGHTS = 1 << 28  # the byte n-gram head's table: 16x what pcv-train makes at most (ngrams.MAX_WEIGHTS)


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
    if cfg.get(CONFIG_KEY) is not None:
        id2label, num_labels = cfg.get("id2label"), cfg.get("num_labels")
        if id2label is not None and not isinstance(id2label, dict):
            raise ModelError(f"{path}: id2label = {id2label!r} is not an object of label names")
        if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
            raise ModelError(f"{path}: num_labels = {num_labels!r} is not a positive integer")
        check_head_size(check_settings(cfg[CONFIG_KEY], str(path)), _num_labels(cfg), str(path))
    if (n := estimate_params(cfg)) > MAX_PARAMS:
        raise ModelError(f"{path}: this config describes ~{n / 1e9:.0f}B parameters (limit {MAX_PARAMS / 1e9:.0f}B); refusing to build it")
    return cfg


def _num_labels(cfg: dict) -> int:
    """The labels a config.json's head has: its id2label's, else num_labels, else transformers' 2."""
    return len(cfg.get("id2label") or {}) or cfg.get("num_labels") or 2


def check_head_size(head: dict, labels: int, where: str) -> None:
    if head["buckets"] * labels > MAX_HEAD_WEIGHTS:
        raise ModelError(f"{where}: {CONFIG_KEY} describes {head['buckets']:,} buckets x {labels:,} labels, over "
                         f"{MAX_HEAD_WEIGHTS:,} weights; refusing to build it")


def check_head_weights(path: Path, cfg: dict, fresh_head: bool) -> None:
    """The safetensors headers (read without loading a tensor) against the config: a head the config
    describes needs its ngram.weight of that shape (a fresh head for other labels excepted), and
    ngram.* weights need the config's head, or they would be dropped without a word."""
    from safetensors import safe_open

    shapes = {}
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                shapes |= {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}  # noqa: SIM118 (not a dict)
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise ModelError(f"{f}: not a readable safetensors file ({e})") from e
    head = cfg.get(CONFIG_KEY)
    if head is None:
        if extra := sorted(k for k in shapes if k.startswith("ngram.")):
            raise ModelError(f"{path}: the weights hold a byte n-gram head ({', '.join(extra)}) but config.json has no "
                             f"{CONFIG_KEY}: restore it, or the model would answer without its head")
        return
    if fresh_head:
        return
    want = (head["buckets"], _num_labels(cfg))
    if shapes.get("ngram.weight") != want:
        got = shapes.get("ngram.weight")
        raise ModelError(f"{path}: config.json describes a byte n-gram head of {want[0]:,} x {want[1]} weights but the "
                         f"weights {'have none' if got is None else f'hold {got}'} (ngram.weight)")


# ModelSize field -> PerceiverConfig key: one table for build_config and its inverse, model_size
_CONFIG_KEYS = {
    "num_latents": "num_latents", "d_latents": "d_latents", "d_model": "d_model",
    "num_layers": "num_self_attends_per_block", "self_heads": "num_self_attention_heads",
    "cross_heads": "num_cross_attention_heads", "max_length": "max_position_embeddings",
    "qk_channels": "qk_channels", "v_channels": "v_channels",
    "cross_widening": "cross_attention_widening_factor", "self_widening": "self_attention_widening_factor",
}


def build_config(size: ModelSize, id2label: dict[int, str] | None = None, *, ngrams: bool = False) -> PerceiverConfig:
    """The config of a fresh classifier; `ngrams` adds the byte n-gram head (ngrams.py) at its default settings."""
    id2label = id2label or IMDB_LABELS
    extra = {CONFIG_KEY: default_settings(len(id2label))} if ngrams else {}
    return PerceiverConfig(
        **extra,
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


def classifier_class(config: dict | PerceiverConfig) -> type[PerceiverForSequenceClassification]:
    """PerceiverWithNgrams for a config with a byte n-gram head, else transformers' own class."""
    value = config.get(CONFIG_KEY) if isinstance(config, dict) else getattr(config, CONFIG_KEY, None)
    return PerceiverWithNgrams if value is not None else PerceiverForSequenceClassification


def build_classifier(config: PerceiverConfig) -> PerceiverForSequenceClassification:
    return classifier_class(config)(config)


def load_classifier(model: str, *, allow_pickle: bool = False, labels: dict[int, str] | None = None
                    ) -> PerceiverForSequenceClassification:
    """Load a classifier from a local HF dir or a hub id (safetensors only unless allow_pickle); a
    config with a byte n-gram head (ngrams.py) loads as PerceiverWithNgrams.

    >>> m = load_classifier("models/imdb-perceiver")  # doctest: +SKIP
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no config.json; a model dir needs config.json and model.safetensors")
        cfg = check_config(path / "config.json")
        cls = classifier_class(cfg)
        has_st = any(path.glob("*.safetensors"))
        has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
        if not has_st and has_pickle and not allow_pickle:
            raise ModelError(
                f"{path}: only a pickle checkpoint (.bin/.pt) is there, and unpickling can run code; "
                "convert it to safetensors, or pass --allow-pickle if you trust the file"
            )
        if not has_st and not has_pickle:
            raise ModelError(f"{path}: no model.safetensors in the model dir")
        fresh = labels is not None and len(labels) != _num_labels(cfg)
        if has_st:
            check_head_weights(path, cfg, fresh_head=fresh)
        extra = {}
        if fresh and cfg.get(CONFIG_KEY) is not None:  # a fresh head for other labels: sized for them
            extra = {CONFIG_KEY: default_settings(len(labels)) | {"orders": cfg[CONFIG_KEY]["orders"]}}  # checked above
            check_head_size(extra[CONFIG_KEY], len(labels), str(path))
        try:
            m = cls.from_pretrained(path, use_safetensors=has_st or not allow_pickle, **_head(labels), **extra)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: cannot load the model: {e}") from e
        return m.eval()
    if path.suffix in (".onnx", ".safetensors", ".bin") or _is_local(model):
        raise ModelError(f"{model}: no such model dir (give an HF model dir or a hub id)")
    try:
        config = PerceiverConfig.from_pretrained(model)  # a hub model with a byte n-gram head loads with it
        if (value := getattr(config, CONFIG_KEY, None)) is not None:
            check_head_size(check_settings(value, f"{model}: config.json"), len(labels or config.id2label), model)
        m = classifier_class(config).from_pretrained(model, use_safetensors=not allow_pickle or None, **_head(labels))
    except OSError as e:
        raise ModelError(
            f"{model}: cannot load it from the Hugging Face Hub ({str(e).splitlines()[0]}). "
            "If this machine is offline, download the model elsewhere and pass its local dir "
            "(config.json + model.safetensors)"
        ) from e
    return m.eval()


def _head(labels: dict[int, str] | None) -> dict:
    """from_pretrained options for a classification head of these labels (a fresh one when the
    checkpoint's has another size: a masked-LM encoder, or a classifier of other labels)."""
    if labels is None:
        return {}
    return {"num_labels": len(labels), "id2label": dict(labels), "label2id": {v: k for k, v in labels.items()},
            "ignore_mismatched_sizes": True}


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes): the source identity stored in ONNX metadata."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()
