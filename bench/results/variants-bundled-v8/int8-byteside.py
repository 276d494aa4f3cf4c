# throwaway: int8 dynamic, 7-bit weights, byte-side projections quantized too (no exclusion)
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
src = "/work/main/models/imdb-perceiver/model.onnx"
quantize_dynamic(src, "/tmp/q8/int8-all.onnx", weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                 per_channel=True, reduce_range=True)
base = onnx.load(src); q = onnx.load("/tmp/q8/int8-all.onnx")
del q.metadata_props[:]; q.metadata_props.extend(base.metadata_props); onnx.save(q, "/tmp/q8/int8-all.onnx")
