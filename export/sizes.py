"""Model sizes: the fields of a fresh Perceiver, named presets, and the constraints between them,
checked before anything is built (no torch here: pcv-train checks its flags at parse time)."""

from __future__ import annotations

from dataclasses import dataclass, replace


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


# --size presets. tiny: minutes on a CPU, for short texts; small: the bundled model's size; base: a
# wider latent stream; language-perceiver: the architecture of deepmind/language-perceiver (201M).
SIZE_PRESETS: dict[str, ModelSize] = {
    "tiny": ModelSize(num_latents=64, d_latents=128, d_model=64, num_layers=2, self_heads=4, cross_heads=4,
                      max_length=512, cross_widening=2, self_widening=2),
    "small": ModelSize(num_latents=256, d_latents=192, d_model=128, num_layers=6, self_heads=6, cross_heads=8,
                       max_length=2048, cross_widening=2, self_widening=2),
    "base": ModelSize(),
    "language-perceiver": ModelSize(num_latents=256, d_latents=1280, d_model=768, num_layers=26, self_heads=8,
                                    cross_heads=8, max_length=2048, qk_channels=256, v_channels=1280),
}


def sized(preset: str, **overrides: int | None) -> ModelSize:
    """A preset with some fields set by hand (None leaves the preset's value)."""
    return replace(SIZE_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def size_problem(size: ModelSize, *, patch_init: bool = True) -> str | None:
    """Why transformers or pcv's patch initialisation cannot build this size, naming the flags, or None.

    Each attention splits its query/key channels (qk_channels, else d_latents) and its value channels
    (v_channels, else the query/key ones) evenly into heads. The patch initialisation gives each
    cross-attention head a position code of qk/cross_heads channels, held in the first half of
    d_model and in d_latents."""
    for name, value in (("num_latents", size.num_latents), ("d_latents", size.d_latents), ("d_model", size.d_model),
                        ("num_layers", size.num_layers), ("self_heads", size.self_heads), ("cross_heads", size.cross_heads),
                        ("max_length", size.max_length), ("cross_widening", size.cross_widening),
                        ("self_widening", size.self_widening)):
        if value < 1:
            return f"--{name.replace('_', '-')} {value}: must be at least 1"
    if size.max_length < 3:
        return f"--max-length {size.max_length}: leaves no room for a byte beside [CLS] and [SEP]"
    for heads, flag in ((size.self_heads, "--self-heads"), (size.cross_heads, "--cross-heads")):
        if size.d_latents % heads:
            return f"--d-latents {size.d_latents} does not split into {heads} heads ({flag})"
    # transformers' defaults: the cross-attention's query/key width is d_model (its keys' width), the
    # latent self-attention's is d_latents; values default to the query/key width.
    cross_qk = size.qk_channels or size.d_model
    cross_flag = "--qk-channels" if size.qk_channels else "--d-model (the cross-attention's default query/key width)"
    self_qk = size.qk_channels or size.d_latents
    self_flag = "--qk-channels" if size.qk_channels else "--d-latents (the self-attention's default query/key width)"
    for what, qk, heads, flag, qflag in (("cross-attention", cross_qk, size.cross_heads, "--cross-heads", cross_flag),
                                         ("self-attention", self_qk, size.self_heads, "--self-heads", self_flag)):
        v = size.v_channels or qk
        if qk % heads:
            return f"{what}: {qk} query/key channels ({qflag}) do not split into {heads} heads ({flag})"
        if v % heads:
            return f"{what}: {v} value channels (--v-channels) do not split into {heads} heads ({flag})"
    if patch_init:
        per_head = cross_qk // size.cross_heads
        why = (f"patch initialisation: each cross-attention head gets a position code of {per_head} channels "
               f"({cross_qk} query/key channels from {cross_flag.split(' ')[0]} / {size.cross_heads} heads)")
        if per_head < 2 or per_head % 2:
            return f"{why}, which must be even and at least 2: change --cross-heads or the query/key width (or --init default)"
        if size.d_model < 2 * per_head:
            return f"{why} and needs d_model >= {2 * per_head}: raise --d-model or --cross-heads (or --init default)"
        if size.d_latents < per_head:
            return f"{why} and needs d_latents >= {per_head}: raise --d-latents or --cross-heads (or --init default)"
    return None
