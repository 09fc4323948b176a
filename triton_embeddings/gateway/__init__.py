"""OpenAI-compatible embeddings gateway over Triton Inference Server."""
