"""What runs inside Triton's Python backend: tokenizer, ONNX step, pooling math.

Imports numpy, tokenizers, onnxruntime, the standard library and `triton_embeddings.contract` only.
"""
