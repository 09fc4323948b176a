"""Real endpoints for the compare and re-embed tests: one Triton serving all-MiniLM-L6-v2 (fp32, copied from
the session's repository) and an int8 export of it, behind one real gateway process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL, DEFAULT_SOURCE_LABEL, exported_repository, served
from tests.gw_helpers import running_gateway

DATA = Path(__file__).parent / "data"
INT8_MODEL = f"{DEFAULT_MODEL}-int8"


@pytest.fixture(scope="session")
def two_model_repository(model_repository, default_model_source, tmp_path_factory) -> Path:
    return exported_repository(tmp_path_factory, "two_models", default_model_source, model_repository,
                               name=INT8_MODEL, precision="int8", source_label=DEFAULT_SOURCE_LABEL)


@pytest.fixture(scope="session")
def two_model_triton(two_model_repository, tmp_path_factory):
    with served(two_model_repository, tmp_path_factory, "triton2") as server:
        yield server


@pytest.fixture(scope="session")
def two_model_gateway(two_model_triton, tmp_path_factory):
    """A real gateway serving both models (memory cache, no auth)."""
    with running_gateway(tmp_path_factory.mktemp("gw2"), triton_grpc_url=two_model_triton.grpc_url,
                         triton_metrics_url=two_model_triton.metrics_url) as gw:
        yield gw
