"""Throwaway (twelfth session): int8 dynamic with 7-bit weights and no byte-side exclusion, for
pcv-check beside the shipped int8. As run:
    pcv-export models/imdb-perceiver /tmp/q8/ship.onnx --variant int8
    python int8-byteside.py models/imdb-perceiver/model.onnx /tmp/q8/ship.int8.onnx /tmp/q8/int8-all.onnx
The metadata is the shipped int8's (variant kind, labels, ...), its graph digest re-stamped for this graph."""
import sys

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from pcv.runtime.modelfile import DIGEST_KEY, graph_digest

src, shipped, out = sys.argv[1:4]
quantize_dynamic(src, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                 per_channel=True, reduce_range=True)  # build_int8's call, less nodes_to_exclude
q = onnx.load(out)
del q.metadata_props[:]
q.metadata_props.extend(onnx.load(shipped).metadata_props)
onnx.save(q, out)  # metadata is outside the digest, so it can be taken after the save
q = onnx.load(out)
next(p for p in q.metadata_props if p.key == DIGEST_KEY).value = graph_digest(out)
onnx.save(q, out)
