"""digit-export: the eager model as one static-shape graph, written to ONNX and TensorRT engines."""
