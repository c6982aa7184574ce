"""Export: encoder f to ONNX (onnx_export), the Triton model repository (repository), shared names (layout)."""
