"""Self-hosted, OpenAI-compatible text embeddings on NVIDIA Triton (see docs/architecture.md)."""
