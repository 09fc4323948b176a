"""Real endpoints for the compare and re-embed tests: one Triton serving all-MiniLM-L6-v2 (fp32, copied from
the session's repository) and an int8 export of it, behind one real gateway process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL, DEFAULT_SOURCE_LABEL
from tests.gw_helpers import running_gateway

DATA = Path(__file__).parent / "data"
INT8_MODEL = f"{DEFAULT_MODEL}-int8"


@pytest.fixture(scope="session")
def two_model_repository(model_repository, default_model_source, tmp_path_factory) -> Path:
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions

    repo = tmp_path_factory.mktemp("two_models")
    shutil.copytree(model_repository, repo, dirs_exist_ok=True)
    options = ExportOptions(name=INT8_MODEL, precision="int8", source_label=DEFAULT_SOURCE_LABEL)
    export_model(default_model_source, repo, options, log=lambda _: None)
    return repo


@pytest.fixture(scope="session")
def two_model_triton(two_model_repository, tmp_path_factory):
    from triton_embeddings.local.launcher import TritonServer

    log = tmp_path_factory.mktemp("triton2") / "tritonserver.log"
    with TritonServer.on_free_ports(two_model_repository, log_file=log) as server:
        yield server


@pytest.fixture(scope="session")
def two_model_gateway(two_model_triton, tmp_path_factory):
    """A real gateway serving both models (memory cache, no auth)."""
    with running_gateway(tmp_path_factory.mktemp("gw2"), triton_grpc_url=two_model_triton.grpc_url,
                         triton_metrics_url=two_model_triton.metrics_url) as gw:
        yield gw
