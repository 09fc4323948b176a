"""Retrieval options through the real Triton and gateway, judged by the official openai client (`extra_body`),
and the gateway's two paths (the direct path: it tokenizes; the ensembles) judged against each other.

One repository serves all-MiniLM-L6-v2 (no prompts, mean pooling) next to a tiny BERT made here (random
weights, CLS pooling, e5-style prompts `query: `/`passage: `, default `passage`, 32-token max length).
"""

from __future__ import annotations

import base64
import shutil

import httpx
import numpy as np
import openai
import pytest
import torch

from tests.gw_helpers import DEFAULT_MODEL, inference_count, running_gateway
from tests.tiny_models import TINY_MAX_LENGTH, TINY_PROMPTS, build_tiny_e5
from triton_embeddings import contract, quantize
from triton_embeddings.triton_models.tokenize import TextTokenizer

pytestmark = pytest.mark.slow

TINY = "tiny-e5"
LONG = " ".join(f"word{i} and more" for i in range(70))  # ~ 250 tokens: far over 32
TEXTS = ["Hello, world!", "Where is the nearest train station?", "Ünïcödé façade — 東京"]


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory, default_model_source) -> str:
    return str(build_tiny_e5(tmp_path_factory.mktemp("tiny"), default_model_source))


@pytest.fixture(scope="module")
def tiny_st(tiny_source):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_source, device="cpu")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_source, model_repository):
    """Triton over a repository with both models, and a gateway in front."""
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions
    from triton_embeddings.local.launcher import TritonServer

    repo = tmp_path_factory.mktemp("retrieval_repo")
    export_model(tiny_source, repo, ExportOptions(name=TINY), log=lambda _: None)
    for name in (DEFAULT_MODEL, *contract.step_names(DEFAULT_MODEL)):
        shutil.copytree(model_repository / name, repo / name)
    logs = tmp_path_factory.mktemp("retrieval_logs")
    with TritonServer.on_free_ports(repo, log_file=logs / "triton.log") as triton:
        # The gateway tokenizes itself (the direct path, what `make serve` runs); `ensemble_gateway` does not.
        with running_gateway(logs, triton_grpc_url=triton.grpc_url, triton_metrics_url="", model_repository=repo) as gw:
            yield repo, triton, gw


@pytest.fixture(scope="module")
def ensemble_gateway(stack, tmp_path_factory):
    """A second gateway over the same Triton that sends every request through the ensembles."""
    with running_gateway(tmp_path_factory.mktemp("ensemble_gw"), triton_grpc_url=stack[1].grpc_url,
                         triton_metrics_url="") as gw:
        yield gw


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack[2].url + "/v1", api_key="unused", max_retries=0)


def embed(client, model, texts, **extra):
    fmt = extra.pop("encoding_format", "float")
    res = client.embeddings.create(model=model, input=texts, encoding_format=fmt, extra_body=extra or None)
    return [d.embedding for d in res.data], res.usage.prompt_tokens


def st_forward(st, ids: list[int]) -> np.ndarray:
    """sentence-transformers' modules on exact token ids (the reference for START and for windows)."""
    t = torch.tensor([ids])
    with torch.no_grad():
        out = st({"input_ids": t, "attention_mask": torch.ones_like(t), "token_type_ids": torch.zeros_like(t)})
    return out["sentence_embedding"][0].numpy()


# ---- input_type (prompts) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_type", "prompt_name"),
    [(None, None), ("query", "query"), ("passage", "passage"), ("search_query", "query"),
     ("search_document", "passage"), ("document", "passage")],
)
def test_prompts_match_sentence_transformers(client, tiny_st, input_type, prompt_name):
    extra = {"input_type": input_type} if input_type else {}
    got, usage = embed(client, TINY, TEXTS, **extra)
    want = tiny_st.encode(TEXTS, prompt_name=prompt_name)
    assert cosines(got, want).min() >= 0.9999
    prompt = TINY_PROMPTS[prompt_name or "passage"]
    counts = tiny_st.tokenizer([prompt + t for t in TEXTS])["input_ids"]
    assert usage == sum(len(c) for c in counts)  # usage counts the prompt's tokens


def test_query_and_passage_differ_and_cache_keeps_them_apart(client):
    q1, _ = embed(client, TINY, TEXTS[:1], input_type="query")
    p1, _ = embed(client, TINY, TEXTS[:1], input_type="passage")
    q2, _ = embed(client, TINY, TEXTS[:1], input_type="query")
    assert cosines(q1, p1)[0] < 0.9999 and np.allclose(q1, q2)


def test_roles_change_nothing_for_a_model_without_prompts(client, st_model):
    plain, _ = embed(client, DEFAULT_MODEL, TEXTS)
    for role in ("query", "passage", "document", "search_query", "search_document"):
        got, _ = embed(client, DEFAULT_MODEL, TEXTS, input_type=role)
        assert np.allclose(got, plain, atol=1e-6)
    assert cosines(plain, st_model.encode(TEXTS)).min() >= 0.9999


@pytest.mark.parametrize("model", [TINY, DEFAULT_MODEL])
def test_unknown_input_type_is_a_400_listing_the_names(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        embed(client, model, ["x"], input_type="classification")
    err = e.value.body
    assert err["param"] == "input_type" and "query" in err["message"] and "search_document" in err["message"]
    assert embed(client, model, ["still fine"])[0]


def test_models_endpoint_lists_prompts(stack):
    with httpx.Client(base_url=stack[2].url) as c:
        tiny, minilm = c.get(f"/v1/models/{TINY}").json(), c.get(f"/v1/models/{DEFAULT_MODEL}").json()
    assert tiny["prompts"] == TINY_PROMPTS and tiny["default_prompt_name"] == "passage"
    assert minilm["prompts"] == {} and minilm["default_prompt_name"] is None


def test_direct_grpc_clients_choose_the_prompt(stack, tiny_st):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(stack[1].grpc_url)
    inputs = []
    for name, values in ((contract.TEXT, TEXTS), (contract.PROMPT_NAME, ["query"] * len(TEXTS))):
        tensor = grpcclient.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object).reshape(-1, 1))
        inputs.append(tensor)
    got = c.infer(TINY, inputs).as_numpy(contract.EMBEDDING)
    assert cosines(got, tiny_st.encode(TEXTS, prompt_name="query")).min() >= 0.9999


# ---- truncate ------------------------------------------------------------------------------------------


def test_truncate_end_start_none(client, tiny_st):
    end, used = embed(client, TINY, [LONG], input_type="query", truncate="END")
    default, _ = embed(client, TINY, [LONG], input_type="query")
    assert used == TINY_MAX_LENGTH and np.allclose(end, default)
    assert cosines(end, tiny_st.encode([LONG], prompt_name="query")).min() >= 0.9999

    start, used = embed(client, TINY, [LONG], input_type="query", truncate="START")
    ids = tiny_st.tokenizer("query: " + LONG)["input_ids"]
    n_prompt = len(tiny_st.tokenizer("query: ", add_special_tokens=False)["input_ids"])
    kept = ids[: 1 + n_prompt] + ids[-(TINY_MAX_LENGTH - 1 - n_prompt) :]
    assert used == len(kept) == TINY_MAX_LENGTH
    assert cosines(start, [st_forward(tiny_st, kept)]).min() >= 0.9999
    assert cosines(start, end)[0] < 0.999

    with pytest.raises(openai.BadRequestError) as e:
        embed(client, TINY, ["short", LONG], truncate="NONE")
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "input"
    assert embed(client, TINY, ["short"], truncate="NONE")[0]


def test_token_id_inputs_follow_the_truncation_side(client, cl100k):
    ids = cl100k.encode(LONG)
    for side in ("START", "END"):
        from_ids, _ = embed(client, TINY, [ids], truncate=side)
        from_text, _ = embed(client, TINY, [LONG], truncate=side)
        assert np.allclose(from_ids, from_text, atol=1e-6)
    with pytest.raises(openai.BadRequestError):
        embed(client, TINY, [ids], truncate="NONE")


def test_server_default_truncate_false_still_refuses(stack, tmp_path):
    with running_gateway(tmp_path, triton_grpc_url=stack[1].grpc_url, triton_metrics_url="", truncate="false") as gw:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            r = c.post("/v1/embeddings", json={"model": TINY, "input": LONG})
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
            r = c.post("/v1/embeddings", json={"model": TINY, "input": LONG, "truncate": "START"})
            assert r.status_code == 200


# ---- embedding_type ------------------------------------------------------------------------------------


def _ranges(stack, model):
    import tritonclient.grpc as grpcclient

    config = grpcclient.InferenceServerClient(stack[1].grpc_url).get_model_config(model, as_json=True)["config"]
    return contract.EnsembleParams.from_config(config).quantization_ranges


@pytest.mark.parametrize("dims", [None, 100])
@pytest.mark.parametrize("kind", ["int8", "uint8", "binary", "ubinary"])
def test_embedding_types_json_and_base64(stack, client, kind, dims):
    extra = {"dimensions": dims} if dims else {}
    floats, _ = embed(client, DEFAULT_MODEL, TEXTS, **extra)
    from_client, _ = embed(client, DEFAULT_MODEL, TEXTS, embedding_type=kind, **extra)
    raw, _ = embed(client, DEFAULT_MODEL, TEXTS, embedding_type=kind, encoding_format="base64", **extra)
    body = {"model": DEFAULT_MODEL, "input": TEXTS, "embedding_type": kind, **extra}
    ints = [d["embedding"] for d in httpx.post(stack[2].url + "/v1/embeddings", json=body).json()["data"]]
    d = dims or 384
    dtype = np.dtype(quantize.DTYPES[kind])
    assert all(type(v) is int for row in ints for v in row)  # JSON integers (the client turns them to floats)
    assert np.array_equal(np.asarray(from_client), np.asarray(ints))
    assert all(len(row) == quantize.packed_length(d, kind) for row in ints)
    decoded = np.stack([np.frombuffer(base64.b64decode(r), dtype=dtype) for r in raw])
    assert np.array_equal(decoded, np.asarray(ints))  # base64: the same values as raw bytes
    calibration = _ranges(stack, DEFAULT_MODEL)
    ranges = quantize.ranges_for(calibration, d, dims is not None) if kind in ("int8", "uint8") else None
    assert np.array_equal(quantize.quantize(np.asarray(floats, dtype=np.float32), kind, ranges), decoded)


def test_int8_same_text_same_bytes_whatever_the_batch(client):
    alone, _ = embed(client, DEFAULT_MODEL, [TEXTS[1]], embedding_type="int8")
    batched, _ = embed(client, DEFAULT_MODEL, [LONG, TEXTS[1], "another text"], embedding_type="int8")
    assert alone[0] == batched[1]


# ---- long inputs ---------------------------------------------------------------------------------------


def chunk_reference(st, tokenizer_json: str, text: str, prompt_name: str) -> tuple[np.ndarray, int]:
    """sentence-transformers over the same windows, combined by a token-weighted mean, normalized."""
    prompt = TINY_PROMPTS[prompt_name]
    (rows,) = TextTokenizer(tokenizer_json, TINY_MAX_LENGTH).windows([text], [prompt])
    vectors = st.encode([text[a:b] for a, b, _ in rows], prompt_name=prompt_name)
    weights = np.array([k for _, _, k in rows], dtype=np.float64)
    mean = (vectors * weights[:, None]).sum(0) / weights.sum()
    return mean / np.linalg.norm(mean), int(weights.sum())


def test_long_inputs_chunk_matches_the_windowed_reference(stack, client, tiny_st):
    tokenizer_json = str(stack[0] / f"{TINY}_tokenizer" / "1" / "tokenizer.json")
    want, tokens = chunk_reference(tiny_st, tokenizer_json, LONG, "query")
    got, used = embed(client, TINY, [LONG, TEXTS[0]], input_type="query", long_inputs="chunk")
    assert cosines(got[:1], [want])[0] >= 0.9999
    assert cosines(got[1:], tiny_st.encode(TEXTS[:1], prompt_name="query"))[0] >= 0.9999
    short_tokens = len(tiny_st.tokenizer("query: " + TEXTS[0])["input_ids"])
    assert used == tokens + short_tokens > 2 * TINY_MAX_LENGTH  # every window's tokens are counted
    truncated, _ = embed(client, TINY, [LONG], input_type="query")
    assert cosines(got[:1], truncated)[0] < 0.999


def test_long_inputs_server_setting_and_token_cap(stack, tmp_path, tiny_st):
    tokenizer_json = str(stack[0] / f"{TINY}_tokenizer" / "1" / "tokenizer.json")
    want, tokens = chunk_reference(tiny_st, tokenizer_json, LONG, "passage")
    settings = {"triton_grpc_url": stack[1].grpc_url, "triton_metrics_url": "", "long_inputs": "chunk"}
    with running_gateway(tmp_path, max_tokens_per_request=tokens + 5, **settings) as gw:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            r = c.post("/v1/embeddings", json={"model": TINY, "input": LONG})
            assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == tokens
            assert cosines([r.json()["data"][0]["embedding"]], [want])[0] >= 0.9999
            r = c.post("/v1/embeddings", json={"model": TINY, "input": [LONG, LONG + " tail"]})
            assert r.status_code == 400 and r.json()["error"]["code"] == "max_tokens_per_request"
            r = c.post("/v1/embeddings", json={"model": TINY, "input": LONG, "long_inputs": "truncate"})
            assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == TINY_MAX_LENGTH


# ---- bad input -----------------------------------------------------------------------------------------

BAD = [
    ("input_type", {"input_type": "classification"}),
    ("input_type", {"input_type": 3}),
    ("truncate", {"truncate": "MIDDLE"}),
    ("truncate", {"truncate": "end"}),
    ("embedding_type", {"embedding_type": "int4"}),
    ("long_inputs", {"long_inputs": "split"}),
    ("input", {"truncate": "NONE", "input": LONG}),
    ("encoding_format", {"embedding_type": "int8", "encoding_format": "hex"}),
]


@pytest.mark.parametrize(("param", "fields"), BAD, ids=[f"{p}-{list(f.values())[0]}" for p, f in BAD])
def test_bad_retrieval_fields(stack, param, fields):
    with httpx.Client(base_url=stack[2].url, timeout=30) as c:
        r = c.post("/v1/embeddings", json={"model": TINY, "input": "x", **fields})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error"
        assert c.post("/v1/embeddings", json={"model": TINY, "input": "fine"}).status_code == 200


def test_concurrent_mixed_options_keep_each_requests_prompt(client, tiny_st):
    """Plain, query and START requests at once share Triton's batches; each keeps its own options."""
    from concurrent.futures import ThreadPoolExecutor

    kinds = [{}, {"input_type": "query"}, {"input_type": "passage", "truncate": "START"}]
    want = {0: tiny_st.encode(TEXTS), 1: tiny_st.encode(TEXTS, prompt_name="query"),
            2: tiny_st.encode(TEXTS, prompt_name="passage")}
    jobs = [(i % 3, [f"{t} {i}" if i >= 3 else t for t in TEXTS]) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: embed(client, TINY, job[1], **kinds[job[0]])[0], jobs))
    for (kind, texts), got in zip(jobs, results):
        if texts == TEXTS:
            assert cosines(got, want[kind]).min() >= 0.9999
        else:
            ref = tiny_st.encode(texts, prompt_name=[None, "query", "passage"][kind])
            assert cosines(got, ref).min() >= 0.9999


# ---- the direct path against the ensemble --------------------------------------------------------------

PATH_CASES = [
    ({}, TEXTS + [LONG]),
    ({"input_type": "query"}, TEXTS + [LONG]),
    ({"input_type": "passage", "truncate": "START"}, [LONG, *TEXTS]),
    ({"truncate": "END", "long_inputs": "chunk"}, [LONG, TEXTS[0]]),
    ({"dimensions": 16}, TEXTS),
]


@pytest.mark.parametrize("model", [TINY, DEFAULT_MODEL])
@pytest.mark.parametrize(("extra", "texts"), PATH_CASES)
def test_direct_path_gives_the_ensembles_vectors_and_tokens(stack, ensemble_gateway, model, extra, texts):
    """Same vectors (cosine >= 0.99999) and the same token counts, prompts, truncation and windows included."""
    direct_client = openai.OpenAI(base_url=stack[2].url + "/v1", api_key="unused", max_retries=0)
    ensemble = openai.OpenAI(base_url=ensemble_gateway.url + "/v1", api_key="unused", max_retries=0)
    for i, text in enumerate(texts):  # one text per request, and all together: per-text usage and batching
        got, got_tokens = embed(direct_client, model, [text], **extra)
        want, want_tokens = embed(ensemble, model, [text], **extra)
        assert cosines(got, want).min() >= 0.99999 and got_tokens == want_tokens, (i, got_tokens, want_tokens)
    got, got_tokens = embed(direct_client, model, texts, **extra)
    want, want_tokens = embed(ensemble, model, texts, **extra)
    assert cosines(got, want).min() >= 0.99999 and got_tokens == want_tokens


def test_direct_path_skips_the_ensemble(stack):
    """Requests through the direct gateway run the encoder alone: the ensemble's count does not move."""
    metrics = stack[1].metrics_url
    before = inference_count(metrics, TINY), inference_count(metrics, f"{TINY}_encoder")
    texts = [f"direct path text {i}" for i in range(5)]
    httpx.post(stack[2].url + "/v1/embeddings", json={"model": TINY, "input": texts}, timeout=30).raise_for_status()
    after = inference_count(metrics, TINY), inference_count(metrics, f"{TINY}_encoder")
    assert after[0] == before[0] and after[1] - before[1] == len(texts)


@pytest.mark.parametrize(
    "body",
    [
        {"input": LONG, "truncate": "NONE"},
        {"input": [[-1, 5]]},
        {"input": [[2**40]]},
        {"input": ["ok", ""]},
        {"input": "x", "input_type": "classification"},
    ],
)
def test_direct_path_errors_match_the_ensembles(stack, ensemble_gateway, body):
    with httpx.Client(timeout=30) as c:
        got = c.post(stack[2].url + "/v1/embeddings", json={"model": TINY, **body})
        want = c.post(ensemble_gateway.url + "/v1/embeddings", json={"model": TINY, **body})
    assert got.status_code == want.status_code and got.status_code in (400, 200)
    assert got.json().get("error") == want.json().get("error")
