"""pcv.export: the torch side — load, train, export to ONNX, verify, build variants."""
