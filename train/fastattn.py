"""Fused attention for training: Perceiver attention through torch's scaled_dot_product_attention.

transformers' PerceiverSelfAttention materialises every (batch, heads, queries, keys) score map,
adds the mask, softmaxes and drops out in separate kernels; on a CPU those passes over the map
cost more than the matmuls. `use_fused_attention` swaps in a forward that calls
`torch.nn.functional.scaled_dot_product_attention` (one fused kernel where torch has one), with
the same weights, mask and dropout rate. Training only: export traces the stock module.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F
from transformers.models.perceiver.modeling_perceiver import PerceiverSelfAttention

# transformers 5 dropped head_mask from the signature, and callers pass arguments by position:
# bind them to the installed version's signature.
_STOCK = inspect.signature(PerceiverSelfAttention.forward)


def _fused_forward(self, *args, **kwargs):
    a = _STOCK.bind(self, *args, **kwargs).arguments
    if a.get("head_mask") is not None or a.get("output_attentions"):  # what SDPA cannot give: the stock path
        return PerceiverSelfAttention.forward(self, *args, **kwargs)
    hidden_states, attention_mask = a["hidden_states"], a.get("attention_mask")
    inputs, inputs_mask = a.get("inputs"), a.get("inputs_mask")
    hidden_states = self.layernorm1(hidden_states)
    inputs = self.layernorm2(inputs)
    source, mask = (inputs, inputs_mask) if inputs is not None else (hidden_states, attention_mask)
    q = self.transpose_for_scores(self.query(hidden_states), self.qk_channels_per_head)
    k = self.transpose_for_scores(self.key(source), self.qk_channels_per_head)
    v = self.transpose_for_scores(self.value(source), self.v_channels_per_head)
    if mask is not None:
        mask = mask.to(q.dtype)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout.p if self.training else 0.0)
    b, h, n, d = ctx.shape
    return (ctx.permute(0, 2, 1, 3).reshape(b, n, h * d),)


def use_fused_attention(model: torch.nn.Module) -> int:
    """Route every Perceiver attention in `model` through SDPA; returns how many were switched."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, PerceiverSelfAttention):
            mod.forward = types.MethodType(_fused_forward, mod)
            n += 1
    return n
