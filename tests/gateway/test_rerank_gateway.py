"""One real deployment (Triton + gateway process) serving MiniLM embeddings and a cross-encoder, called with
the clients people use: Cohere's SDK (v1 and v2 clients), LangChain's CohereRerank, openai, plain HTTP."""

from __future__ import annotations

import cohere
import httpx
import numpy as np
import openai
import pytest
from langchain_cohere import CohereRerank
from langchain_core.documents import Document

from tests.conftest import DEFAULT_MODEL, RERANK_MODEL
from tests.gw_helpers import concurrently_while_frozen, inference_count, running_gateway

QUERY = "How do I reset my password?"
DOCS = [
    "Click 'forgot password' on the login page and follow the e-mail.",
    "The quick brown fox jumps over the lazy dog.",
    "Passwörter lassen sich in den Einstellungen zurücksetzen.",
    "パスワードを忘れた場合は管理者に連絡してください。",
    "A very long document about passwords. " * 60,
]
KEY = "sk-rerank-test"


@pytest.fixture(scope="module")
def gateway(mixed_triton, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("rerank_gateway")
    with running_gateway(log_dir, triton_grpc_url=mixed_triton.grpc_url, triton_metrics_url=mixed_triton.metrics_url,
                         api_keys=f'["{KEY}"]') as gw:
        yield gw


@pytest.fixture(scope="module")
def expected(cross_encoder) -> np.ndarray:
    return np.asarray(cross_encoder.predict([(QUERY, d) for d in DOCS]))


def test_cohere_v2_client(gateway, expected):
    client = cohere.ClientV2(api_key=KEY, base_url=gateway.url)
    response = client.rerank(model=RERANK_MODEL, query=QUERY, documents=DOCS, top_n=3)
    best = np.argsort(-expected, kind="stable")[:3]
    assert [r.index for r in response.results] == list(best)
    np.testing.assert_allclose([r.relevance_score for r in response.results], expected[best], atol=1e-4)


def test_cohere_v1_client_with_documents_returned(gateway, expected):
    client = cohere.Client(api_key=KEY, base_url=gateway.url)
    response = client.rerank(model=RERANK_MODEL, query=QUERY, documents=DOCS, return_documents=True)
    assert sorted(r.index for r in response.results) == list(range(len(DOCS)))
    for r in response.results:
        assert r.document.text == DOCS[r.index]
        assert abs(r.relevance_score - expected[r.index]) < 1e-4


def test_langchain_cohere_rerank(gateway, expected):
    reranker = CohereRerank(model=RERANK_MODEL, cohere_api_key=KEY, base_url=gateway.url, top_n=2)
    docs = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)]
    kept = reranker.compress_documents(docs, QUERY)
    assert [d.metadata["i"] for d in kept] == list(np.argsort(-expected, kind="stable")[:2])
    assert abs(kept[0].metadata["relevance_score"] - expected.max()) < 1e-4


def test_tei_shape_and_embeddings_from_one_deployment(gateway, expected, cross_encoder):
    headers = {"Authorization": f"Bearer {KEY}"}
    tei = httpx.post(gateway.url + "/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True},
                     headers=headers, timeout=30).json()
    logits = np.log(expected / (1 - expected))
    for item in tei:
        assert abs(item["score"] - logits[item["index"]]) < 1e-3
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    vectors = client.embeddings.create(model=DEFAULT_MODEL, input=DOCS[:2]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 384
    kinds = {m.id: m.model_extra["kind"] for m in client.models.list().data}
    assert kinds[DEFAULT_MODEL] == "embedding" and kinds[RERANK_MODEL] == "rerank"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=RERANK_MODEL, input="x")
    assert err.value.body["param"] == "model"


def test_many_documents_are_split_and_bad_input_does_not_stop_the_service(gateway, cross_encoder):
    headers = {"Authorization": f"Bearer {KEY}"}
    docs = [f"document number {i} " + "about passwords " * (i % 13) for i in range(300)]  # > max_batch_size 64
    body = httpx.post(gateway.url + "/v1/rerank", json={"model": RERANK_MODEL, "query": QUERY, "documents": docs},
                      headers=headers, timeout=60).json()
    scores = np.zeros(len(docs))
    for r in body["results"]:
        scores[r["index"]] = r["relevance_score"]
    np.testing.assert_allclose(scores, cross_encoder.predict([(QUERY, d) for d in docs]), atol=1e-4)
    assert body["usage"]["total_tokens"] > len(docs) * 10
    for bad in ({"query": ""}, {"documents": []}, {"documents": [1]}, {"top_n": 0}, {"model": DEFAULT_MODEL}):
        r = httpx.post(gateway.url + "/v1/rerank",
                       json={"model": RERANK_MODEL, "query": QUERY, "documents": DOCS, **bad}, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"], r.text
    assert httpx.post(gateway.url + "/v1/rerank", json={"model": RERANK_MODEL, "query": QUERY, "documents": DOCS},
                      headers=headers).status_code == 200
    assert httpx.post(gateway.url + "/v1/rerank", json={"model": RERANK_MODEL, "query": QUERY, "documents": DOCS}
                      ).status_code == 401


def test_readme_embed_then_rerank_example_runs(gateway, capsys):
    """The README's Python example, pointed at this deployment, runs and prints the reranked hits."""
    from tests.gw_helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Reranking"):]
    code = section[section.index("```python") + len("```python"): section.index("```", section.index("```python") + 9)]
    code = (code.replace('BASE = "http://127.0.0.1:8080"', f'BASE = "{gateway.url}"')
            .replace('KEY = "unused"', f'KEY = "{KEY}"').replace('"ms-marco-MiniLM-L6-v2"', f'"{RERANK_MODEL}"'))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(float(line.split()[0]) > 0 for line in printed)


def test_cache_keys_on_query_and_document(gateway):
    headers = {"Authorization": f"Bearer {KEY}"}

    def hits() -> float:
        text = httpx.get(gateway.url + "/metrics", headers=headers).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("gateway_cache_hits_total"))

    docs = ["a first cached document", "a second cached document"]
    body = {"model": RERANK_MODEL, "query": "cache probe", "documents": docs}
    first = httpx.post(gateway.url + "/v1/rerank", json=body, headers=headers).json()
    before = hits()
    again = httpx.post(gateway.url + "/v1/rerank", json=body, headers=headers).json()
    assert hits() == before + 2 and again["results"] == first["results"]
    other = httpx.post(gateway.url + "/v1/rerank", json={**body, "query": "another probe"}, headers=headers).json()
    assert hits() == before + 2  # the same documents under another query are scored again
    assert other["results"] != first["results"]


@pytest.fixture
def own_mixed_triton(mixed_repository, tmp_path):
    """A Triton of this test's own over the mixed repository: it is frozen (SIGSTOP) for a while."""
    from triton_embeddings.local.launcher import TritonServer

    with TritonServer.on_free_ports(mixed_repository, log_file=tmp_path / "triton.log") as server:
        yield server


@pytest.mark.slow
def test_concurrent_identical_misses_are_scored_once(own_mixed_triton, tmp_path, cross_encoder):
    """Six requests missing the same (model, query, document) at once: one row through Triton, one score for all
    (Triton's `nv_inference_count` of the rerank ensemble counts its pairs)."""
    triton, n, doc = own_mixed_triton, 6, "the same document from six clients at once"
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="", cache="none") as gw:
        warm = httpx.post(gw.url + "/v1/rerank", json={"model": RERANK_MODEL, "query": "warm", "documents": ["up"]})
        assert warm.status_code == 200, warm.text
        before = inference_count(triton.metrics_url, RERANK_MODEL)
        body = {"model": RERANK_MODEL, "query": QUERY, "documents": [doc]}
        answers = concurrently_while_frozen(triton, gw.url, "/v1/rerank", body, n)
    assert [a.status_code for a in answers] == [200] * n
    scores = {a.json()["results"][0]["relevance_score"] for a in answers}
    assert len(scores) == 1
    np.testing.assert_allclose(scores.pop(), cross_encoder.predict([(QUERY, doc)])[0], atol=1e-4)
    assert inference_count(triton.metrics_url, RERANK_MODEL) - before == 1
