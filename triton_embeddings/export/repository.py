"""Compatibility names: the embedding kind's repository writer (`kinds.embedding`) and the shared helpers."""

from triton_embeddings.export.kinds.base import file_sha256
from triton_embeddings.export.kinds.embedding import Artifacts, configs, write_model

__all__ = ["Artifacts", "configs", "file_sha256", "write_model"]
