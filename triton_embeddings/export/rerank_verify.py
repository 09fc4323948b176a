"""Compatibility names: the rerank kind's verification (`kinds.rerank`): pairs, reference and bar."""

from triton_embeddings.export.kinds.rerank import (
    THRESHOLDS,
    RerankVerification,
    reference_scores,
    verification_pairs,
    verify,
)

__all__ = ["THRESHOLDS", "RerankVerification", "reference_scores", "verification_pairs", "verify"]
