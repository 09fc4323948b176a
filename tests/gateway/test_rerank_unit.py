"""Rerank routes over the fake backend: shapes, ordering, limits, errors, batching and the cache."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.gw_helpers import FakeBackend
from triton_embeddings.gateway.app import create_app
from triton_embeddings.gateway.settings import Settings

QUERY = "where is the station"
DOCS = ["the station is by the river", "bananas are yellow", "where is it", "is the station open"]
# Fake logits: words shared with the query - 1 -> 2, -1, 1, 2: best first is 0, 3 (a tie keeps request order), 2, 1.
BEST_FIRST = [0, 3, 2, 1]


@pytest.fixture
def backend():
    return FakeBackend(reranker=True)


@pytest.fixture
def client(make_client, backend):
    return make_client(backend=backend)


def rerank(client, path="/v1/rerank", **body):
    return client.post(path, json={"model": "fake-reranker", "query": QUERY, "documents": DOCS, **body})


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_cohere_shape_sorted_best_first_and_cut_at_top_n(client, path):
    body = rerank(client, path, top_n=3, return_documents=True).json()
    assert [r["index"] for r in body["results"]] == BEST_FIRST[:3]
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] < scores[0] < 1
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in BEST_FIRST[:3]]
    assert body["usage"]["total_tokens"] == sum(len(QUERY.split()) + len(d.split()) + 3 for d in DOCS)
    assert body["model"] == "fake-reranker" and body["id"]


def test_documents_as_objects_and_no_documents_echoed_by_default(client):
    docs = [{"text": d} for d in DOCS]
    body = client.post("/v1/rerank", json={"model": "fake-reranker", "query": QUERY, "documents": docs}).json()
    assert [r["index"] for r in body["results"]] == BEST_FIRST
    assert all("document" not in r for r in body["results"])
    assert rerank(client, top_n=100).json()["results"][-1]["index"] == BEST_FIRST[-1]  # top_n past the end: all


def test_tei_shape_on_rerank(client):
    body = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert [r["index"] for r in body] == BEST_FIRST and body[0]["text"] == DOCS[0]
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert [r["score"] for r in raw] == [2.0, 2.0, 1.0, -1.0]  # the logits
    assert "text" not in raw[0]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rerank", {"query": ""}, "query"),
        ("/v1/rerank", {"query": "   "}, "query"),
        ("/v1/rerank", {"documents": []}, "documents"),
        ("/v1/rerank", {"documents": ["ok", 5]}, "documents"),
        ("/v1/rerank", {"documents": ["ok", {"title": "no text"}]}, "documents"),
        ("/v1/rerank", {"documents": "not a list"}, "documents"),
        ("/v1/rerank", {"top_n": 0}, "top_n"),
        ("/v1/rerank", {"top_n": -3}, "top_n"),
        ("/v1/rerank", {"max_chunks_per_doc": 0}, "max_chunks_per_doc"),
        ("/v1/rerank", {"model": "fake-model"}, "model"),
        ("/v1/rerank", {"query": None}, "query"),
        ("/rerank", {"query": ""}, "query"),
        ("/rerank", {"documents": [1]}, "documents"),
        ("/rerank", {"texts": []}, "texts"),
        ("/rerank", {"texts": ["a", 2]}, "texts"),
        ("/rerank", {"texts": ["a"], "query": ""}, "query"),
        ("/rerank", {"texts": ["a"], "model": "fake-model"}, "model"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter_and_the_next_request_succeeds(client, path, body, param):
    base = {"model": "fake-reranker", "query": QUERY, "documents": DOCS}
    if "texts" in body:
        base = {"query": QUERY}
    response = client.post(path, json={**base, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert rerank(client).status_code == 200


def test_a_rerank_model_on_embeddings_is_a_400(client):
    response = client.post("/v1/embeddings", json={"model": "fake-reranker", "input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model" and "/v1/rerank" in response.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"}).status_code == 200


def test_limits(make_client, backend):
    client = make_client(backend=backend, max_documents=3, max_tokens_per_request=30)
    too_many = rerank(client)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "documents"
    assert "At most 3" in too_many.json()["error"]["message"]
    tokens = client.post("/v1/rerank", json={"model": "fake-reranker", "query": QUERY, "documents": ["a b c d"] * 3})
    assert tokens.status_code == 400 and tokens.json()["error"]["code"] == "max_tokens_per_request"
    strict = make_client(backend=backend, truncate=False)
    long_doc = rerank(strict, documents=["word " * 40])
    assert long_doc.status_code == 400 and long_doc.json()["error"]["code"] == "context_length_exceeded"
    tei = client.post("/rerank", json={"query": QUERY, "texts": ["word " * 40], "truncate": False})
    assert tei.status_code == 400 and tei.json()["error"]["param"] == "texts"
    assert client.post("/rerank", json={"query": QUERY, "texts": ["word " * 40]}).status_code == 200


def test_split_into_max_batch_size_calls_and_cached_per_query_and_document(client, backend):
    docs = [f"doc {i} station" for i in range(10)]
    assert rerank(client, documents=docs).status_code == 200
    assert sorted(len(call) for call in backend.calls) == [2, 4, 4]  # max_batch_size 4
    backend.calls.clear()
    assert rerank(client, documents=docs[:5] + ["new one"]).status_code == 200
    assert backend.calls == [[(QUERY, "new one")]]  # the rest came from the cache
    backend.calls.clear()
    assert rerank(client, query="another query", documents=docs[:2]).status_code == 200
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2  # same documents, new query: not cached


def test_concurrent_requests_share_triton_calls(backend):
    """While calls are in flight, pairs from several requests leave together in the next call."""
    backend.delay = 0.05
    app = create_app(Settings(triton_metrics_url="", cache="none", max_concurrent_batches=1), backend=backend)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            bodies = [{"model": "fake-reranker", "query": f"q{i}", "documents": [f"d{i}"]} for i in range(8)]
            return await asyncio.gather(*(c.post("/v1/rerank", json=b) for b in bodies))

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert len(backend.calls) < 8 and max(len(c) for c in backend.calls) == 4
    assert any(len({q for q, _ in call}) > 1 for call in backend.calls)  # one call, several requests' queries


def test_concurrent_identical_misses_make_one_row(backend):
    """Requests missing the same (model, query, document) at once share one scoring, as embeddings share texts."""
    backend.delay = 0.05
    app = create_app(Settings(triton_metrics_url="", cache="none"), backend=backend)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            bodies = [{"model": "fake-reranker", "query": QUERY, "documents": ["the shared station", f"own {i}"]}
                      for i in range(6)]
            bodies.append({"model": "fake-reranker", "query": "another query", "documents": ["the shared station"]})
            return await asyncio.gather(*(c.post("/v1/rerank", json=b) for b in bodies))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 7
    rows = [pair for call in backend.calls for pair in call]
    assert rows.count((QUERY, "the shared station")) == 1, backend.calls
    assert rows.count(("another query", "the shared station")) == 1, "another query is another pair"
    assert sorted(d for q, d in rows if d.startswith("own")) == [f"own {i}" for i in range(6)]
    shared = {next(r["relevance_score"] for r in resp.json()["results"] if r["index"] == 0) for resp in responses[:6]}
    assert len(shared) == 1  # every request got the shared row's score


def test_models_list_the_kind(client):
    data = {m["id"]: m["kind"] for m in client.get("/v1/models").json()["data"]}
    assert data["fake-model"] == "embedding" and data["fake-reranker"] == "rerank"
    assert data["text-embedding-3-small"] == "embedding"  # aliases point at the default embedding model
    assert client.get("/v1/models/fake-reranker").json()["kind"] == "rerank"


def test_api_keys_apply(make_client, backend):
    client = make_client(backend=backend, api_keys=["k1"])
    assert rerank(client).status_code == 401
    assert client.post("/rerank", json={"query": QUERY, "texts": DOCS}).status_code == 401
    ok = client.post("/v1/rerank", json={"model": "fake-reranker", "query": QUERY, "documents": DOCS},
                     headers={"Authorization": "Bearer k1"})
    assert ok.status_code == 200


def test_metrics_carry_the_kind(client):
    assert rerank(client).status_code == 200
    text = client.get("/metrics").text
    assert 'gateway_tokens_total{backend="local",kind="rerank",model="fake-reranker"}' in text
    assert 'gateway_request_duration_seconds_count{kind="rerank",model="fake-reranker"} 1.0' in text
    assert 'gateway_request_inputs_sum{kind="rerank",model="fake-reranker"} 4.0' in text


def test_upstream_down_is_a_503_and_no_reranker_is_a_404(make_client, backend):
    from triton_embeddings.gateway.backends.base import BackendUnavailable

    client = make_client(backend=backend)
    backend.fail = BackendUnavailable("down")
    down = rerank(client)
    assert down.status_code == 503 and down.headers["retry-after"]
    backend.fail = None
    assert rerank(client).status_code == 200
    plain = make_client(backend=FakeBackend())
    missing = plain.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_openapi_documents_both_shapes_and_every_reference_resolves(client):
    import json
    import re

    spec = client.get("/openapi.json").json()
    assert {"/v1/rerank", "/rerank"} <= set(spec["paths"])
    body = spec["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert body[0]["$ref"].endswith("/RerankRequest") and "texts" in body[1]["properties"]
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec)):
        assert ref in spec["components"]["schemas"], ref
