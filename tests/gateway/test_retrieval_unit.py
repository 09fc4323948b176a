"""Retrieval options in the gateway, with the fake backend: what reaches Triton, cache keys, combining windows."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from triton_embeddings import contract
from triton_embeddings.gateway.http import wire
from triton_embeddings.gateway.pipeline import retrieval

M = "fake-model"


def test_plain_requests_send_no_optional_inputs(make_client, fake_backend):
    c = make_client()
    assert c.post("/v1/embeddings", json={"model": M, "input": ["a", "b"]}).status_code == 200
    assert fake_backend.options == [None]


def test_options_reach_triton_per_row_and_split_the_cache(make_client, fake_backend):
    c = make_client()
    body = {"model": M, "input": ["same text"]}
    assert c.post("/v1/embeddings", json={**body, "input_type": "query", "truncate": "START"}).status_code == 200
    assert fake_backend.options[-1] == {contract.PROMPT_NAME: ["query"], contract.TRUNCATE: ["START"]}
    assert c.post("/v1/embeddings", json=body).status_code == 200  # default options: not a cache hit
    assert fake_backend.options[-1] is None and len(fake_backend.calls) == 2
    assert c.post("/v1/embeddings", json={**body, "truncate": "END"}).status_code == 200  # END is the default
    assert len(fake_backend.calls) == 2


def test_roles_pass_for_a_model_without_prompts_and_other_names_do_not(make_client):
    c = make_client()
    for role in contract.ROLE_SYNONYMS:
        assert c.post("/v1/embeddings", json={"model": M, "input": "x", "input_type": role}).status_code == 200
    r = c.post("/v1/embeddings", json={"model": M, "input": "x", "input_type": "clustering"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_type"
    assert "search_document" in r.json()["error"]["message"]


def test_integer_types_need_calibrated_ranges(make_client):
    r = make_client().post("/v1/embeddings", json={"model": M, "input": "x", "embedding_type": "int8"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "embedding_type"


def test_binary_json_and_base64(make_client):
    c = make_client()
    for kind, dtype in (("binary", np.int8), ("ubinary", np.uint8)):
        ints = c.post("/v1/embeddings", json={"model": M, "input": "x", "embedding_type": kind}).json()
        raw = c.post("/v1/embeddings", json={"model": M, "input": "x", "embedding_type": kind,
                                             "encoding_format": "base64"}).json()
        assert len(ints["data"][0]["embedding"]) == 1  # 8 dims -> 1 byte
        assert np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype=dtype).tolist() == \
            ints["data"][0]["embedding"]


@pytest.mark.parametrize(("name", "expected"), [
    ("", "passage: "), ("query", "query: "), ("search_query", "query: "), ("document", "passage: "),
    ("search_document", "passage: "), ("passage", "passage: "),
])
def test_resolve_prompt(name, expected):
    assert contract.resolve_prompt(name, {"query": "query: ", "passage": "passage: "}, "passage") == expected


def test_resolve_prompt_prefers_the_models_own_names_and_refuses_others():
    prompts = {"document": "doc: ", "passage": "passage: ", "clustering": "cluster: "}
    assert contract.resolve_prompt("document", prompts) == "doc: "
    assert contract.resolve_prompt("clustering", prompts) == "cluster: "
    assert contract.resolve_prompt("query", prompts) == ""
    assert contract.resolve_prompt("", prompts) == ""
    with pytest.raises(contract.UnknownPromptError):
        contract.resolve_prompt("classification", prompts)


def test_combine_windows_is_token_weighted_and_normalized():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    combined = retrieval.combine_windows(vectors, np.array([3, 1]), normalize=True)
    assert np.allclose(combined, np.array([3.0, 1.0]) / np.sqrt(10))
    assert np.allclose(retrieval.combine_windows(vectors, np.array([3, 1]), normalize=False), [0.75, 0.25])


def test_chunked_long_input_is_the_token_weighted_mean_of_its_windows(make_client, fake_backend):
    from tests.gw_helpers import fake_vector

    c = make_client()
    text = " ".join(f"w{i}" for i in range(30))  # 30 words: over the fake's 16 tokens
    r = c.post("/v1/embeddings", json={"model": M, "input": [text, "short one"], "long_inputs": "chunk"})
    assert r.status_code == 200, r.text
    windows = [" ".join(f"w{i}" for i in range(a, min(a + 14, 30))) for a in (0, 13, 26)]
    weights = np.array([len(w.split()) + 2 for w in windows], dtype=np.float64)
    mean = (np.stack([fake_vector(w, 8) for w in windows]) * weights[:, None]).sum(0) / weights.sum()
    assert np.allclose(r.json()["data"][0]["embedding"], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.allclose(r.json()["data"][1]["embedding"], fake_vector("short one", 8), atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == weights.sum() + 4
    plain = c.post("/v1/embeddings", json={"model": M, "input": text}).json()
    assert plain["usage"]["prompt_tokens"] == 16  # truncated without chunking


def _upstream_model():
    from triton_embeddings.gateway.backends.base import ModelInfo

    return ModelInfo("cloud", 0, 8191, 2048, True, "mean", "cloud", "f", 0, backend="openai")


@pytest.mark.parametrize(("field", "value"), [("truncate", "START"), ("long_inputs", "chunk")])
def test_upstream_models_refuse_what_cannot_be_forwarded(field, value):
    from triton_embeddings.gateway.errors import APIError
    from triton_embeddings.gateway.http.protocol import EmbeddingRequest
    from triton_embeddings.gateway.settings import Settings

    req = EmbeddingRequest.model_validate({"model": "cloud", "input": "x", field: value})
    with pytest.raises(APIError) as caught:
        wire.options_of(req, _upstream_model(), Settings())
    assert caught.value.param == field and caught.value.status == 400


def test_upstream_models_ignore_the_chunk_setting_and_keep_their_length():
    from triton_embeddings.gateway.http.protocol import EmbeddingRequest
    from triton_embeddings.gateway.settings import Settings

    req = EmbeddingRequest.model_validate({"model": "cloud", "input": "x"})
    assert wire.options_of(req, _upstream_model(), Settings(long_inputs="chunk")).chunk is False
    rows = wire.encode_vectors(np.ones((1, 5), dtype=np.float32), req, _upstream_model())
    assert len(rows[0]) == 5  # dimension 0 (unconfigured upstream length): the vector as it came
