"""`embeddings-export`: a sentence-transformers model or a cross-encoder in, a verified Triton repository out."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from triton_embeddings.defaults import DEFAULT_HUB_ID, DEFAULT_REPOSITORY
from triton_embeddings.export import flow, options
from triton_embeddings.export.cross_encoder import is_cross_encoder
from triton_embeddings.export.kinds.embedding import EMBEDDING
from triton_embeddings.export.kinds.rerank import RERANK
from triton_embeddings.export.model_spec import UnsupportedModelError
from triton_embeddings.export.steps import ExportError


def default_name(source: str) -> str:
    """Triton model name from a hub id or folder: its last path part."""
    return Path(source.rstrip("/")).name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embeddings-export", description=__doc__)
    p.add_argument("model", nargs="?", default=DEFAULT_HUB_ID,
                   help="sentence-transformers model or cross-encoder: local folder or hub id (default %(default)s)")
    p.add_argument("--repository", type=Path, default=Path(DEFAULT_REPOSITORY),
                   help="repository folder (default %(default)s)")
    options.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts = options.from_arguments(args, name=args.name or default_name(args.model))
        # A cross-encoder (reranker) gets a rerank ensemble; anything else is an embedding model.
        kind = RERANK if is_cross_encoder(args.model) else EMBEDDING
        result = flow.export(kind, args.model, args.repository, opts)
    except (ExportError, UnsupportedModelError, ValueError) as exc:
        print(f"embeddings-export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"embeddings-export: error: cannot load or write the model: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
