"""Compatibility names: the embedding kind's verification (`kinds.embedding`): texts, reference and bar."""

from triton_embeddings.export.kinds.embedding import (
    SELECTION_MARGIN,
    THRESHOLDS,
    Verification,
    cosine,
    reference_embeddings,
    selection_texts,
    verification_texts,
    verify,
)

__all__ = ["SELECTION_MARGIN", "THRESHOLDS", "Verification", "cosine", "reference_embeddings", "selection_texts",
           "verification_texts", "verify"]
