"""Properties of the parsers that take the client's bytes: token ids, base64 output, `dimensions`, the Cohere and
TEI rerank shapes, and any body at all. In-process over the fake backend where Triton adds nothing; the last
properties run against a real gateway process over the real Triton. (The batch JSONL parser's properties are in
test_batch_unit.py.)"""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DEFAULT_MODEL, RERANK_MODEL
from tests.gateway.test_gateway_unit import assert_error
from tests.gw_helpers import FakeBackend, fake_vector, running_gateway

M, R = "fake-model", "fake-reranker"
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
ROUTES = ("/v1/embeddings", "/v1/rerank", "/rerank")
TEXT = st.text(min_size=1, max_size=40)


def json_values(floats: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(st.none() | st.booleans() | st.integers() | floats | st.text(max_size=20),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4), max_leaves=12)


JSON = json_values(st.floats(allow_nan=False, allow_infinity=False))
# As Python's json writes them: NaN and Infinity included (not JSON, yet what many clients send).
BODIES = json_values(st.floats()).map(json.dumps).map(str.encode) | st.binary(max_size=64)


@pytest.fixture
def client(make_client):
    return make_client(backend=FakeBackend(reranker=True))


def answered_or_4xx(response: httpx.Response) -> None:
    """The one rule for a body of any shape: an answer, or an OpenAI-shaped 4xx (never a 5xx)."""
    if response.status_code != 200:
        assert 400 <= response.status_code < 500, response.text
        assert_error(response, response.status_code)


def assert_same_bits(floats: list[dict], packed: list[dict], dims: int) -> None:
    """Each base64 embedding decodes to the float32s of the float output, bit for bit."""
    assert len(floats) == len(packed)
    for f, b in zip(floats, packed, strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert len(decoded) == dims
        assert decoded.view("<u4").tolist() == np.float32(f["embedding"]).view("<u4").tolist()


def embed(client, **body) -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": M, **body})


# ---- token ids ------------------------------------------------------------------------------------------


def test_token_ids_embed_as_the_text_they_encode(client, cl100k):
    @PROPERTY
    @given(text=TEXT)
    def round_trip(text):
        ids = cl100k.encode(text, disallowed_special=())
        by_ids = embed(client, input=ids).json()["data"][0]["embedding"]
        np.testing.assert_array_equal(np.float32(by_ids), fake_vector(text, 8))

    round_trip()


def test_any_token_ids_are_embedded_or_a_400_naming_input(client, cl100k):
    top = cl100k.max_token_value
    # Anywhere in the range, near its top (the specials and the unassigned ids between them), far outside it.
    some_id = st.integers(-2, top + 2) | st.integers(top - 25, top + 2) | st.integers(-(2**70), 2**70)

    @PROPERTY
    @given(ids=st.lists(some_id, min_size=1, max_size=8))
    def any_ids(ids):
        response = embed(client, input=[ids, ids[:1]])
        if response.status_code == 200:
            assert all(0 <= t <= top and not _undecodable(cl100k, t) for t in ids)
            return
        err = assert_error(response, 400, param="input")
        outside = [t for t in ids if not 0 <= t <= top]  # named first; else the first id that is no token
        bad = outside[0] if outside else next(t for t in ids if _undecodable(cl100k, t))
        assert f"Invalid token id {bad} in input 0" in err["message"]

    any_ids()


def _undecodable(enc, tid: int) -> bool:
    try:
        enc.decode_single_token_bytes(tid)
        return False
    except KeyError:
        return True


# ---- output encodings and dimensions --------------------------------------------------------------------


def test_base64_is_the_float_output_bit_for_bit(client):
    @PROPERTY
    @given(texts=st.lists(TEXT, min_size=1, max_size=4), dims=st.none() | st.integers(1, 8))
    def same_bits(texts, dims):
        floats = embed(client, input=texts, dimensions=dims).json()["data"]
        packed = embed(client, input=texts, dimensions=dims, encoding_format="base64").json()["data"]
        assert_same_bits(floats, packed, dims or 8)

    same_bits()


def test_dimensions_truncate_and_renormalize_or_are_a_400(client):
    @PROPERTY
    @given(text=TEXT, dims=st.integers(-3, 12) | st.integers(-(2**70), 2**70))
    def truncated(text, dims):
        response = embed(client, input=text, dimensions=dims)
        if not 1 <= dims <= 8:
            assert_error(response, 400, param="dimensions")
            return
        got = np.float32(response.json()["data"][0]["embedding"])
        prefix = fake_vector(text, 8)[:dims]
        np.testing.assert_allclose(got, prefix / np.linalg.norm(prefix), rtol=1e-6, atol=1e-7)

    truncated()


# ---- rerank shapes --------------------------------------------------------------------------------------

DOCUMENT = TEXT | st.builds(lambda t, extra: {**extra, "text": t}, TEXT, st.dictionaries(st.text(max_size=5), JSON,
                                                                                          max_size=2))


def test_cohere_shape_ranks_every_document_once_best_first(client):
    @PROPERTY
    @given(query=TEXT, documents=st.lists(DOCUMENT, min_size=1, max_size=6), top_n=st.none() | st.integers(-2, 8),
           return_documents=st.booleans())
    def ranked(query, documents, top_n, return_documents):
        response = client.post("/v1/rerank", json={"model": R, "query": query, "documents": documents,
                                                   "top_n": top_n, "return_documents": return_documents})
        if top_n is not None and top_n < 1:
            assert_error(response, 400, param="top_n")
            return
        results = response.json()["results"]
        texts = [d if isinstance(d, str) else d["text"] for d in documents]
        assert len(results) == min(top_n or len(texts), len(texts))
        assert len({r["index"] for r in results}) == len(results)
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        for r in results:
            assert ("document" in r) is return_documents
            assert not return_documents or r["document"]["text"] == texts[r["index"]]

    ranked()


def test_tei_shape_scores_every_text_once_best_first(client):
    @PROPERTY
    @given(query=TEXT, texts=st.lists(TEXT, min_size=1, max_size=6), raw=st.booleans(), echo=st.booleans())
    def scored(query, texts, raw, echo):
        items = client.post("/rerank", json={"query": query, "texts": texts, "raw_scores": raw,
                                             "return_text": echo}).json()
        assert sorted(i["index"] for i in items) == list(range(len(texts)))
        assert all(raw or 0 <= i["score"] <= 1 for i in items)
        assert all(i.get("text") == (texts[i["index"]] if echo else None) for i in items)

    scored()


# ---- any body -------------------------------------------------------------------------------------------


def test_any_json_or_bytes_is_an_answer_or_an_openai_4xx(client):
    @PROPERTY
    @given(path=st.sampled_from(ROUTES), body=BODIES)
    def answered(path, body):
        answered_or_4xx(client.post(path, content=body, headers={"content-type": "application/json"}))

    answered()


def test_any_field_values_in_a_request_shape_are_an_answer_or_an_openai_4xx(client):
    @PROPERTY
    @given(path=st.sampled_from(ROUTES), fields=st.fixed_dictionaries({}, optional={
        k: JSON for k in ("input", "dimensions", "encoding_format", "query", "documents", "texts", "top_n")}),
           model=st.sampled_from([M, R, None]))
    def answered(path, fields, model):
        answered_or_4xx(client.post(path, json={**fields, **({"model": model} if model else {})}))

    answered()


# ---- against the real gateway over the real Triton -------------------------------------------------------


@pytest.fixture(scope="module")
def real(mixed_triton, tmp_path_factory):
    d = tmp_path_factory.mktemp("parser_properties")
    with running_gateway(d, triton_grpc_url=mixed_triton.grpc_url, triton_metrics_url=mixed_triton.metrics_url,
                         shutdown_delay_s=0, batch_enabled=False) as gw, httpx.Client(base_url=gw.url, timeout=60) as c:
        yield c


@pytest.mark.slow
def test_real_gateway_any_body_is_an_answer_or_an_openai_4xx(real):
    shaped = st.fixed_dictionaries({"model": st.sampled_from([DEFAULT_MODEL, RERANK_MODEL])}, optional={
        "input": JSON | st.lists(st.integers(-5, 200_000), max_size=4), "query": JSON, "documents": JSON,
        "texts": JSON, "dimensions": JSON, "encoding_format": JSON, "top_n": JSON}).map(json.dumps)

    @settings(PROPERTY, max_examples=100)
    @given(path=st.sampled_from(ROUTES), body=shaped.map(str.encode) | BODIES)
    def answered(path, body):
        answered_or_4xx(real.post(path, content=body, headers={"content-type": "application/json"}))

    answered()


@pytest.mark.slow
def test_real_gateway_base64_is_the_float_output_bit_for_bit(real):
    @settings(PROPERTY, max_examples=25)
    @given(texts=st.lists(TEXT, min_size=1, max_size=3), dims=st.none() | st.integers(1, 384))
    def same_bits(texts, dims):
        body = {"model": DEFAULT_MODEL, "input": texts, "dimensions": dims}
        floats = real.post("/v1/embeddings", json=body).json()["data"]
        packed = real.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()["data"]
        assert_same_bits(floats, packed, dims or 384)

    same_bits()
