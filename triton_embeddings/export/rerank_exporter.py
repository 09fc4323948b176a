"""The rerank export's entry point (`export_reranker`); the flow is `flow`, the kind `kinds.rerank`."""

from __future__ import annotations

from pathlib import Path

from triton_embeddings.export import flow
from triton_embeddings.export.kinds.rerank import RERANK, RerankArtifacts, RerankExportResult, load_cross_encoder
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.steps import Log, stderr

__all__ = ["RerankArtifacts", "RerankExportResult", "export_reranker", "load_cross_encoder"]


def export_reranker(source: str, repository: Path, options: ExportOptions, log: Log = stderr) -> RerankExportResult:
    """Export the cross-encoder `source`, verify it against CrossEncoder.predict, then write it."""
    return flow.export(RERANK, source, repository, options, log)
