"""The embedding export's entry point (`export_model`); the flow is `flow`, the kind `kinds.embedding`."""

from __future__ import annotations

from pathlib import Path

from triton_embeddings.export import flow
from triton_embeddings.export.kinds.embedding import EMBEDDING, ExportResult
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.steps import ExportError, Log, stderr

__all__ = ["ExportError", "ExportResult", "export_model"]


def export_model(source: str, repository: Path, options: ExportOptions, log: Log = stderr) -> ExportResult:
    """Export the sentence-transformers model `source` (local folder or hub id), verify it, then write it."""
    return flow.export(EMBEDDING, source, repository, options, log)
