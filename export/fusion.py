"""Our own fusion for the Perceiver graph: cross-attention -> com.microsoft MultiHeadAttention.

onnxruntime's transformer optimizer fuses the latent self-attention with its BERT patterns (Q, K
and V from one input, one sequence length). Perceiver's cross-attentions — latents attending to
the bytes in the encoder, the class query attending to the latents in the decoder — take Q from
one tensor and K/V from another, of another length, so they stay as ~20 loose nodes each. This
pass matches what transformers' PerceiverSelfAttention exports to:

    q = Add(MatMul(.., Wq), bq) -> Reshape(0,0,H,dh) -> Transpose(0,2,1,3)
    k = Add(MatMul(.., Wk), bk) -> Reshape(0,0,H,dh) -> Transpose(0,2,3,1)          # Kᵀ
    v = Add(MatMul(.., Wv), bv) -> Reshape(0,0,H,dv) -> Transpose(0,2,1,3)
    p = Softmax(Add?(Div(MatMul(q, k), c), mask_bias))                              # (B, H, Nq, Nk)
    out = Reshape(Transpose(MatMul(p, v), 0,2,1,3), (B, Nq, H*dv))

and replaces it with MultiHeadAttention(q_add, k_add, v_add, key_padding_mask) with
num_heads=H and scale=1/c. The mask bias must come from the `attention_mask` graph input through
Unsqueeze/Cast/Sub/Mul only ((1 - mask) * min, as transformers builds it); it becomes an int32
key_padding_mask. Anything else is left as it is and not counted.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

MASK_OPS = {"Unsqueeze", "Cast", "Sub", "Mul"}


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


class _Matcher:
    def __init__(self, om) -> None:
        self.om = om
        self.producer = om.output_name_to_node()
        self.consumers = om.input_name_to_nodes()

    def parent(self, name: str, op: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op else None

    def child(self, node: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
        """The one consumer of node's output, of type op; Shape readers beside it are allowed (they
        only fed the Reshapes this pass removes, and are pruned with them)."""
        kids = [k for k in self.consumers.get(node.output[0], []) if k.op_type != "Shape"]
        return kids[0] if len(kids) == 1 and kids[0].op_type == op else None

    def const(self, name: str) -> np.ndarray | None:
        value = self.om.get_constant_value(name)
        return None if value is None else np.asarray(value)

    def heads_projection(self, name: str, perm: list[int]) -> tuple[list[onnx.NodeProto], str, int, int] | None:
        """Transpose(Reshape(Add(..))) -> (its nodes, the Add output, heads, head size)."""
        tr = self.parent(name, "Transpose")
        if tr is None or _perm(tr) != perm:
            return None
        rs = self.parent(tr.input[0], "Reshape")
        if rs is None or self.child(rs, "Transpose") is not tr or self.child(tr, "MatMul") is None:
            return None
        shape = self.const(rs.input[1])
        if shape is None or shape.shape != (4,) or shape[0] != 0 or shape[1] != 0 or min(shape[2:]) < 1:
            return None
        add = self.parent(rs.input[0], "Add")
        if add is None:
            return None
        return [tr, rs], add.output[0], int(shape[2]), int(shape[3])

    def mask_chain(self, name: str, graph_inputs: set[str]) -> tuple[str, list[onnx.NodeProto]] | None:
        """The graph input a mask bias is computed from and the nodes in between, if they are MASK_OPS only."""
        todo, seen, found = [name], [], None
        while todo:
            cur = todo.pop()
            if cur in graph_inputs:
                found = cur if found in (None, cur) else "ambiguous"
                continue
            node = self.producer.get(cur)
            if node is None:
                continue  # an initializer or constant
            if node.op_type == "Constant":
                continue
            if node.op_type not in MASK_OPS or node in seen:
                return None
            seen.append(node)
            todo.extend(i for i in node.input if i)
        return (found, seen) if found not in (None, "ambiguous") else None

    def mask_bias(self, add: onnx.NodeProto, graph_inputs: set[str]) -> tuple[onnx.NodeProto, str, list[onnx.NodeProto]] | None:
        """Add(Div(scores, c), bias) with the bias computed from a graph input through MASK_OPS only:
        (the Div, that input, the bias's nodes)."""
        div = next((self.parent(i, "Div") for i in add.input if self.parent(i, "Div") is not None), None)
        if div is None:
            return None
        chain = self.mask_chain(add.input[1] if add.input[0] == div.output[0] else add.input[0], graph_inputs)
        return None if chain is None else (div, *chain)


def fuse_cross_attention(model: onnx.ModelProto) -> int:
    """Fuse every matching attention into MultiHeadAttention in place; returns how many."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    om = OnnxModel(model)
    m = _Matcher(om)
    graph_inputs = {i.name for i in model.graph.input}
    mask_casts: dict[str, str] = {}  # attention_mask input -> its int32 cast
    remove: list[onnx.NodeProto] = []
    add: list[onnx.NodeProto] = []
    for sm in [n for n in model.graph.node if n.op_type == "Softmax"]:
        if any(a.name == "axis" and a.i not in (-1, 3) for a in sm.attribute):
            continue
        pv = m.child(sm, "MatMul")
        if pv is None or pv.input[0] != sm.output[0]:
            continue
        tr_out = m.child(pv, "Transpose")
        if tr_out is None or _perm(tr_out) != [0, 2, 1, 3]:
            continue
        rs_out = m.child(tr_out, "Reshape")
        if rs_out is None:
            continue
        mask_input = None
        mask_nodes: list[onnx.NodeProto] = []
        pre = m.producer.get(sm.input[0])
        if pre is not None and pre.op_type == "Add":
            masked = m.mask_bias(pre, graph_inputs)
            if masked is None:
                continue
            div, mask_input, _ = masked
            mask_nodes = [pre]
        else:
            div = m.parent(sm.input[0], "Div")
        if div is None:
            continue
        c = m.const(div.input[1])
        qk = m.parent(div.input[0], "MatMul")
        if c is None or c.size != 1 or qk is None:
            continue
        q = m.heads_projection(qk.input[0], [0, 2, 1, 3])
        k = m.heads_projection(qk.input[1], [0, 2, 3, 1])
        v = m.heads_projection(pv.input[1], [0, 2, 1, 3])
        if q is None or k is None or v is None or not (q[2] == k[2] == v[2]) or q[3] != k[3]:
            continue
        inputs = [q[1], k[1], v[1]]
        if mask_input is not None:
            if mask_input not in mask_casts:
                cast_out = f"{mask_input}_int32_for_mha"
                add.append(helper.make_node("Cast", [mask_input], [cast_out], name=f"pcv_cast_{mask_input}", to=onnx.TensorProto.INT32))
                mask_casts[mask_input] = cast_out
            inputs += ["", mask_casts[mask_input]]  # (bias,) key_padding_mask
        add.append(helper.make_node(
            "MultiHeadAttention", inputs, [rs_out.output[0]], name=f"pcv_mha_{len(add)}", domain="com.microsoft",
            num_heads=q[2], scale=float(1.0 / c.reshape(-1)[0]),
        ))
        remove += [qk, div, sm, pv, tr_out, rs_out, *mask_nodes, *q[0], *k[0], *v[0]]
    fused = sum(n.op_type == "MultiHeadAttention" for n in add)
    if fused:
        om.remove_nodes(remove)
        om.add_nodes(add)
        om.prune_graph()  # the Shape/Gather/Concat that fed the removed Reshapes
        om.topological_sort()
    return fused


# The key-padding bias carried by the scores' MatMul (fold_mask_into_scores): a padded key's row of Kᵀ
# ends in this value and every query's row of Q in 1, so its score is this / c before the softmax.
# Any value far below real scores works (exp underflows to 0 in fp32 past ~-104); this one also
# fits float16 (max 65504) and stays below -400 after a scale of c = 64 (head size 4,096).
FOLDED_MASK = -30000.0
HARD_MASK = -1e4  # a bias whose padded keys score this or lower (transformers: dtype min) is a hard mask


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _hard_mask(bias_nodes: list[onnx.NodeProto], m: _Matcher) -> bool:
    """Whether a mask bias's nodes (mask_chain) multiply by a constant <= HARD_MASK."""
    for node in bias_nodes:
        if node.op_type == "Mul":
            for i in node.input:
                value = m.const(i)
                if value is not None and value.size == 1 and float(value.reshape(-1)[0]) <= HARD_MASK:
                    return True
    return False


def fold_mask_into_scores(model: onnx.ModelProto) -> int:
    """Fold each attention's key-padding bias into its QKᵀ MatMul, in place; returns how many.

    Add(Div(MatMul(q, k), c), bias) with the bias from the attention_mask input becomes
    Div(MatMul(Concat(q, 1), Concat(k, row)), c), row = (1 - mask) * FOLDED_MASK:

        q (B, H, Nq, dh) -> (B, H, Nq, dh + 1)     last column 1
        k (B, H, dh, L)  -> (B, H, dh + 1, L)      last row 0 for a real key, FOLDED_MASK for a pad

    The product gains one term per score, exactly 0 for a real key, so real scores are unchanged,
    and the Add — a pass over the (B, H, Nq, L) score map, for the byte-side cross-attention over
    heads × latents × bytes — is gone. Padded keys get probability 0 as before (exp underflows) in
    every row with a real key (pcv's tokenizer always gives [CLS] and [SEP]); a row of padding only
    attends by the pads' own scores, as ORT's MultiHeadAttention does, not uniformly.
    Only a hard mask is folded (its bias multiplies by a constant at or below HARD_MASK), only in a
    float32 graph, and only at opset 13 or later (Unsqueeze's axes as an input). For CPU graphs: it
    hides the attention from fuse_cross_attention, which the optimized variant needs.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    if _default_opset(model) < 13:
        return 0
    om = OnnxModel(model)
    m = _Matcher(om)
    graph_inputs = {i.name for i in model.graph.input}
    rows: dict[str, str] = {}  # attention_mask input -> its (B, 1, 1, L) folded row
    add: list[onnx.NodeProto] = []
    remove: list[onnx.NodeProto] = []
    consts = {"pcv_fold_one": np.array(1.0, np.float32), "pcv_fold_mask": np.array(FOLDED_MASK, np.float32),
              "pcv_fold_axes": np.array([1, 2], np.int64), "pcv_fold_keep": np.array([1, 1, 0, 1], np.int64),
              "pcv_fold_row": np.array([0, 0, 1, 0], np.int64), "pcv_fold_keep_q": np.array([1, 1, 1, 0], np.int64),
              "pcv_fold_col": np.array([0, 0, 0, 1], np.int64)}
    for sm in [n for n in model.graph.node if n.op_type == "Softmax"]:
        pre = m.producer.get(sm.input[0])
        if pre is None or pre.op_type != "Add" or any(a.name == "axis" and a.i not in (-1, 3) for a in sm.attribute):
            continue
        masked = m.mask_bias(pre, graph_inputs)
        if masked is None:
            continue
        div, mask_input, bias_nodes = masked
        if len(m.consumers.get(pre.output[0], [])) != 1 or len(m.consumers.get(div.output[0], [])) != 1:
            continue
        qk = m.parent(div.input[0], "MatMul")
        c = m.const(div.input[1])
        if qk is None or c is None or c.size != 1 or len(m.consumers.get(qk.output[0], [])) != 1:
            continue
        if c.dtype != np.float32 or not _hard_mask(bias_nodes, m):
            continue  # the fold's constants are float32; a soft bias is not a mask to drop
        q, k = qk.input
        q_tr, k_tr = m.parent(q, "Transpose"), m.parent(k, "Transpose")
        if q_tr is None or k_tr is None or _perm(q_tr) != [0, 2, 1, 3] or _perm(k_tr) != [0, 2, 3, 1]:
            continue  # the (B, H, Nq, dh) and (B, H, dh, L) layouts the concats below assume
        i = len(add)
        if mask_input not in rows:
            row = f"pcv_fold_row_{mask_input}"
            add += [helper.make_node("Cast", [mask_input], [f"{row}_f"], to=onnx.TensorProto.FLOAT),
                    helper.make_node("Sub", ["pcv_fold_one", f"{row}_f"], [f"{row}_pad"]),
                    helper.make_node("Mul", [f"{row}_pad", "pcv_fold_mask"], [f"{row}_v"]),
                    helper.make_node("Unsqueeze", [f"{row}_v", "pcv_fold_axes"], [row])]  # (B, 1, 1, L)
            rows[mask_input] = row
        p = f"pcv_fold_{i}"
        add += [helper.make_node("Shape", [k], [f"{p}_ks"]),  # (B, H, dh, L) -> (B, H, 1, L)
                helper.make_node("Mul", [f"{p}_ks", "pcv_fold_keep"], [f"{p}_ks0"]),
                helper.make_node("Add", [f"{p}_ks0", "pcv_fold_row"], [f"{p}_ks1"]),
                helper.make_node("Expand", [rows[mask_input], f"{p}_ks1"], [f"{p}_krow"]),
                helper.make_node("Concat", [k, f"{p}_krow"], [f"{p}_k"], axis=2),
                helper.make_node("Shape", [q], [f"{p}_qs"]),  # (B, H, Nq, dh) -> (B, H, Nq, 1)
                helper.make_node("Mul", [f"{p}_qs", "pcv_fold_keep_q"], [f"{p}_qs0"]),
                helper.make_node("Add", [f"{p}_qs0", "pcv_fold_col"], [f"{p}_qs1"]),
                helper.make_node("Expand", ["pcv_fold_one", f"{p}_qs1"], [f"{p}_qcol"]),
                helper.make_node("Concat", [q, f"{p}_qcol"], [f"{p}_q"], axis=3),
                helper.make_node("MatMul", [f"{p}_q", f"{p}_k"], [qk.output[0]], name=f"{qk.name}_masked")]
        remove += [qk, pre]
        sm.input[0] = div.output[0]
    folded = len(remove) // 2
    if folded:
        for name, value in consts.items():
            om.add_initializer(onnx.numpy_helper.from_array(value, name))
        om.remove_nodes(remove)
        om.add_nodes(add)
        om.prune_graph()  # the old bias chain
        om.topological_sort()
    return folded
