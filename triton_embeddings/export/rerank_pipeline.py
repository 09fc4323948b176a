"""Compatibility names: the rerank kind's in-process pipeline (`kinds.rerank`)."""

from triton_embeddings.export.kinds.rerank import RerankPipeline, calibration_pair_feeds

__all__ = ["RerankPipeline", "calibration_pair_feeds"]
