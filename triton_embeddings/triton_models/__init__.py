"""What runs inside Triton's Python backend: tokenizer, ONNX step, pooling math (numpy, tokenizers, onnxruntime, contract only)."""
