"""Compatibility names: the embedding kind's in-process pipeline (`kinds.embedding`)."""

from triton_embeddings.export.kinds.base import encoder_feed
from triton_embeddings.export.kinds.embedding import OnnxPipeline, calibration_feeds

__all__ = ["OnnxPipeline", "calibration_feeds", "encoder_feed"]
