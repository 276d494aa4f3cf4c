"""Model FLOPs per example, counted from the Perceiver config (multiply-add = 2 FLOPs).

Counts the matrix products (projections, attention scores and weighted sums, MLPs) of the
cross-attention over L input tokens, the latent self-attention stack and the classifier decoder;
LayerNorm, softmax and GELU are left out (a few % at most).
"""

from __future__ import annotations


def _attention(nq: int, nk: int, q_dim: int, kv_dim: int, qk: int, v: int, out_dim: int, widening: int) -> float:
    proj = nq * q_dim * qk + nk * kv_dim * qk + nk * kv_dim * v + nq * v * out_dim
    scores = nq * nk * qk + nq * nk * v
    mlp = 2 * nq * out_dim * widening * out_dim
    return 2.0 * (proj + scores + mlp)


def perceiver_flops(cfg: dict, seq_len: int) -> float:
    """Forward FLOPs for one example of `seq_len` tokens; cfg is the HF config as a dict."""
    n, dl, dm = cfg["num_latents"], cfg["d_latents"], cfg["d_model"]
    qk_cross = cfg.get("qk_channels") or (dl if cfg.get("cross_attention_shape_for_attention") == "q" else dm)
    v_cross = cfg.get("v_channels") or qk_cross
    total = _attention(n, seq_len, dl, dm, qk_cross, v_cross, dl, cfg.get("cross_attention_widening_factor", 1))
    qk_self = cfg.get("qk_channels") or dl
    v_self = cfg.get("v_channels") or qk_self
    layers = cfg.get("num_self_attends_per_block", 26) * cfg.get("num_blocks", 1)
    total += layers * _attention(n, n, dl, dl, qk_self, v_self, dl, cfg.get("self_attention_widening_factor", 1))
    # decoder: one query over the latents (qk 256, v d_latents as in transformers), then the head
    total += _attention(1, n, dl, dl, 256, dl, dl, 1) + 2.0 * dl * cfg.get("num_labels", 2)
    return total
