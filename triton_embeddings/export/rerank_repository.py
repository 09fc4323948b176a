"""Compatibility names: the rerank kind's repository writer (`kinds.rerank`)."""

from triton_embeddings.export.kinds.rerank import rerank_configs, rerank_params, write_rerank_model

__all__ = ["rerank_configs", "rerank_params", "write_rerank_model"]
