"""Duplicates, concurrent identical misses and the per-request token cap, against the real Triton.

Triton's own counter `nv_inference_count` of the ensemble says how many texts it embedded.
"""

from __future__ import annotations

import httpx
import pytest

from tests.gw_helpers import DEFAULT_MODEL, concurrently_while_frozen, inference_count, running_gateway

pytestmark = pytest.mark.slow


def test_duplicates_in_a_request_are_embedded_once(triton, tmp_path):
    with (
        running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="", cache="none") as gw,
        httpx.Client(base_url=gw.url, timeout=30) as c,
    ):
        texts = ["apple pie", "green tea", "apple pie", "apple pie", "green tea"]  # 4 tokens each
        before = inference_count(triton.metrics_url)
        r = c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": texts})
        assert r.status_code == 200, r.text
        assert inference_count(triton.metrics_url) - before == 2
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(5))
        assert data[0]["embedding"] == data[2]["embedding"] == data[3]["embedding"] != data[1]["embedding"]
        assert r.json()["usage"]["prompt_tokens"] == 5 * 4, "usage counts every input, duplicates included"


@pytest.fixture
def own_triton(model_repository, tmp_path):
    """A Triton of this test's own: it is frozen (SIGSTOP) for a while."""
    from triton_embeddings.local.launcher import TritonServer

    server = TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log")
    with server:
        yield server


def test_concurrent_identical_misses_are_embedded_once(own_triton, tmp_path):
    n = 6
    with (
        running_gateway(tmp_path, triton_grpc_url=own_triton.grpc_url, triton_metrics_url="", cache="memory") as gw,
        httpx.Client(base_url=gw.url, timeout=30) as c,
    ):
        assert c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": "warm"}).status_code == 200
        before = inference_count(own_triton.metrics_url)
        body = {"model": DEFAULT_MODEL, "input": "the same text from six clients at once"}
        answers = concurrently_while_frozen(own_triton, gw.url, "/v1/embeddings", body, n)
    assert [a.status_code for a in answers] == [200] * n
    assert len({str(a.json()["data"]) for a in answers}) == 1
    assert inference_count(own_triton.metrics_url) - before == 1


def test_token_cap_counts_the_models_tokens(triton, tmp_path):
    # WordPiece keeps these words whole: 8 words + [CLS] + [SEP] = 10 tokens.
    eight = "one two three four five six seven eight"
    with (
        running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="",
                        max_tokens_per_request="10") as gw,
        httpx.Client(base_url=gw.url, timeout=30) as c,
    ):
        ok = c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": eight})
        assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 10, ok.text
        over = c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": eight + " nine"})
        assert over.status_code == 400, over.text
        assert over.json()["error"]["code"] == "max_tokens_per_request"
        assert over.json()["error"]["param"] == "input" and "11 tokens" in over.json()["error"]["message"]
        # The cap is per request: 5 + 5 tokens pass, 5 + 6 do not.
        two = c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["one two three", "four five six"]})
        assert two.status_code == 200 and two.json()["usage"]["prompt_tokens"] == 10, two.text
        more = c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["one two three", "four five six x"]})
        assert more.status_code == 400 and more.json()["error"]["code"] == "max_tokens_per_request", more.text
