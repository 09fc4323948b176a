"""Unit tests of the Batch API: the input-file check (property tests), the SQLite store's idempotent writes and
lease, and the runner (retries, expiry, online traffic first) over the fake backend. The real thing:
tests/gateway/test_batch.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_embeddings.gateway.backends.base import BackendUnavailable
from triton_embeddings.gateway.batch import jsonl
from triton_embeddings.gateway.batch.redis_store import RedisStore
from triton_embeddings.gateway.batch.routes import file_content
from triton_embeddings.gateway.batch.runner import Runner
from triton_embeddings.gateway.batch.sqlite_store import SQLiteStore
from triton_embeddings.gateway.batch.store import FAILED, OK, Line
from triton_embeddings.gateway.pipeline.batcher import BATCH, ONLINE, row_priority
from triton_embeddings.gateway.settings import Settings

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)
requests = st.lists(st.fixed_dictionaries({"method": st.sampled_from(["POST", "post"]),
                                           "url": st.sampled_from(jsonl.ENDPOINTS),
                                           "body": st.dictionaries(st.text(max_size=5), json_values, max_size=3)}),
                    min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(requests, st.lists(st.sampled_from(["", "   ", "\t"]), max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_parse_keeps_every_request_and_its_line(rows, blanks, newline):
    lines, expected = [], []
    for i, row in enumerate(rows):
        if i < len(blanks):
            lines.append(blanks[i])
        lines.append(json.dumps({**row, "custom_id": f"id-{i}"}))
        expected.append((len(lines) - 1, f"id-{i}", row["url"], row["body"]))
    got = jsonl.parse(newline.join(lines).encode(), max_requests=len(rows))
    assert [(r.index, r.custom_id, r.url, r.body) for r in got] == expected
    with pytest.raises(jsonl.TooManyRequests):
        jsonl.parse(newline.join(lines).encode(), max_requests=len(rows) - 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_parse_any_bytes_is_requests_or_problems_with_line_numbers(content):
    try:
        got = jsonl.parse(content, max_requests=1000)
    except jsonl.FileProblems as e:
        n = len(content.splitlines())
        assert e.problems and all(p.line is None or 1 <= p.line <= n for p in e.problems)
        assert all(p.message for p in e.problems)
    else:
        assert all(isinstance(r.body, dict) and r.url in jsonl.ENDPOINTS for r in got)


def _line(custom_id: str, **kw) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": "m", "input": "x"}} | kw)


@pytest.mark.parametrize("bad, code, param", [
    ("{not json", "invalid_json_line", None),
    ("[1, 2]", "invalid_json_line", None),
    (json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {}}), "missing_required_parameter", "custom_id"),
    (_line("b", method="GET"), "invalid_method", "method"),
    (_line("b", url="/v1/chat/completions"), "invalid_url", "url"),
    (_line("b", body="text"), "missing_required_parameter", "body"),
    (_line("a"), "duplicate_custom_id", "custom_id"),
])
def test_bad_lines_are_named(bad, code, param):
    with pytest.raises(jsonl.FileProblems) as e:
        jsonl.parse(f"{_line('a')}\n\n{bad}\n".encode(), 10)
    (problem,) = e.value.problems
    assert (problem.code, problem.line, problem.param) == (code, 3, param)


def test_endpoint_and_mixed_models():
    reqs = jsonl.parse("\n".join([_line("a"), _line("b", url="/v1/rerank", body={"model": "r"})]).encode(), 10)
    with pytest.raises(jsonl.FileProblems) as e:
        jsonl.check_endpoint(reqs, "/v1/embeddings")
    assert [(p.code, p.line) for p in e.value.problems] == [("mismatched_endpoint", 2)]
    assert [(p.code, p.line, p.param) for p in jsonl.mixed_models(reqs)] == [("mixed_models", 2, "body.model")]
    with pytest.raises(jsonl.FileProblems, match="no requests"):
        jsonl.parse(b"\n \n", 10)


async def test_sqlite_lines_are_written_once_and_the_lease_is_exclusive(tmp_path):
    store = SQLiteStore(str(tmp_path / "b.db"))
    batch = {"id": "batch_1", "status": "in_progress", "request_counts": {"total": 2, "completed": 0, "failed": 0}}
    await store.put_batch(batch, "owner")
    assert await store.put_line("batch_1", 0, OK, b"first")
    assert not await store.put_line("batch_1", 0, FAILED, b"second")  # the first write wins
    assert await store.put_line("batch_1", 1, FAILED, b"error")
    assert await store.line_page("batch_1", False, -1, 10) == [Line(0, b"first")]
    assert await store.line_page("batch_1", True, -1, 10) == [Line(1, b"error")]
    got, owner = await store.get_batch("batch_1")
    assert got["request_counts"] == {"total": 2, "completed": 1, "failed": 1} and owner == "owner"
    assert await store.acquire("batch_1", "a", 0.3) and await store.acquire("batch_1", "a", 0.3)
    assert not await store.acquire("batch_1", "b", 0.3)
    await asyncio.sleep(0.35)
    assert await store.acquire("batch_1", "b", 10)  # expired: taken over
    assert not await store.acquire("batch_1", "a", 10)
    await store.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    """Each store, the real thing: SQLite in a file, a real redis-server (the test closes it)."""
    if request.param == "sqlite":
        return SQLiteStore(str(tmp_path / "b.db"))
    return RedisStore(f"redis://127.0.0.1:{request.getfixturevalue('redis_server')[1]}/0")


def _out(i: int) -> bytes:
    return json.dumps({"custom_id": f"c{i}", "response": "x" * (i % 7)}).encode()


async def _stored(store, n: int, batch_id: str = "batch_s") -> dict[bool, bytes]:
    """n lines, every third failed, the last quarter never run, written out of order: each file's expected bytes."""
    batch = {"id": batch_id, "status": "in_progress", "request_counts": {"total": n, "completed": 0, "failed": 0}}
    await store.put_batch(batch, "k")
    ran = n - n // 4
    for i in reversed(range(ran)):
        assert await store.put_line(batch_id, i, FAILED if i % 3 == 0 else OK, _out(i))
    await store.put_unrun(batch_id, [(i, _out(i)) for i in range(ran - 2, n)])  # those that ran are kept
    assert not await store.put_line(batch_id, n - 1, OK, b"late")
    errors = [i for i in range(n) if i % 3 == 0 or i >= ran]
    return {e: b"".join(_out(i) + b"\n" for i in range(n) if (i in errors) == e) for e in (False, True)}


async def test_output_files_are_the_stored_lines_streamed_a_page_at_a_time(store):
    expected = await _stored(store, 40)
    got, _ = await store.get_batch("batch_s")
    assert got["request_counts"] == {"total": 40, "completed": 20, "failed": 10}  # the unrun counted in neither
    for errors, kind in ((False, "output"), (True, "error")):
        lines, size = await store.line_stats("batch_s", errors)
        assert (lines, size) == (expected[errors].count(b"\n"), len(expected[errors]))
        await store.put_output_file({"id": f"file_{kind}", "bytes": size}, "k", "batch_s", errors)
        pages = [p async for p in store.file_pages(f"file_{kind}", 3)]
        assert b"".join(pages) == expected[errors] and {p.count(b"\n") for p in pages[:-1]} == {3}
        assert await store.get_file(f"file_{kind}") == ({"id": f"file_{kind}", "bytes": size}, "k")
    await store.put_file({"id": "file_in"}, "k", b"uploaded\n")
    assert [p async for p in store.file_pages("file_in", 3)] == [b"uploaded\n"]
    assert await store.delete_file("file_output") and await store.get_file("file_output") is None
    assert await store.file_source("file_output") is None and await store.file_source("file_error") is not None
    await store.close()


async def test_the_content_route_reads_one_page_before_each_it_sends(tmp_path):
    """The route streams: when its first chunk is out, the store was asked for one page, of the setting's size."""
    store = SQLiteStore(str(tmp_path / "b.db"))
    expected = (await _stored(store, 400))[False]
    await store.put_output_file({"id": "file_o", "bytes": len(expected), "purpose": "batch_output"}, None,
                                "batch_s", False)
    asked, read = [], store.line_page

    async def line_page(batch_id, errors, after, limit):
        asked.append(limit)
        return await read(batch_id, errors, after, limit)

    store.line_page = line_page
    app = SimpleNamespace(state=SimpleNamespace(batch_store=store, settings=Settings(batch_page_lines=8)))
    response = await file_content("file_o", SimpleNamespace(app=app, state=SimpleNamespace()))
    chunks = response.body_iterator
    first = await anext(chunks)
    assert asked == [8] and first.count(b"\n") == 8
    rest = [c async for c in chunks]
    assert first + b"".join(rest) == expected and int(response.headers["content-length"]) == len(expected)
    assert asked == [8] * len(asked) and len(asked) == expected.count(b"\n") // 8 + 1
    await store.close()


async def test_sqlite_pages_newest_first(tmp_path):
    store = SQLiteStore(str(tmp_path / "b.db"))
    for i in range(5):
        await store.put_file({"id": f"file_{i}"}, None if i % 2 else "k", b"x")
    page = await store.list_files(None, 2, None)
    assert [f["id"] for f in page.data] == ["file_4", "file_3"] and page.has_more
    page = await store.list_files(None, 10, "file_3")
    assert [f["id"] for f in page.data] == ["file_2", "file_1", "file_0"] and not page.has_more
    assert [f["id"] for f in (await store.list_files("k", 10, None)).data] == ["file_4", "file_2", "file_0"]
    await store.close()


def _upload(client, lines: list[str], endpoint: str = "/v1/embeddings", headers=None) -> dict:
    r = client.post("/v1/files", files={"file": ("in.jsonl", "\n".join(lines).encode())}, data={"purpose": "batch"},
                    headers=headers)
    assert r.status_code == 200, r.text
    r = client.post("/v1/batches", json={"input_file_id": r.json()["id"], "endpoint": endpoint,
                                         "completion_window": "24h"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(client, batch_id: str, status: str, headers=None) -> dict:
    deadline = time.monotonic() + 20
    while (b := client.get(f"/v1/batches/{batch_id}", headers=headers).json())["status"] != status:
        assert time.monotonic() < deadline, b
        time.sleep(0.02)
    return b


def _rows(client, file_id: str) -> list[dict]:
    return [json.loads(x) for x in client.get(f"/v1/files/{file_id}/content").text.splitlines()]


def _fake_lines(n: int) -> list[str]:
    return [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings",
                        "body": {"model": "fake-model", "input": f"text {i}"}}) for i in range(n)]


@pytest.fixture
def batch_client(make_client, tmp_path):
    return lambda **kw: make_client(batch_store=f"sqlite:///{tmp_path}/b.db", batch_poll_s=0.02, **kw)


def test_a_line_answered_503_is_retried_then_kept(batch_client, fake_backend):
    fake_backend.fail = BackendUnavailable("down")
    client = batch_client(batch_retries=1)
    batch = _wait(client, _upload(client, _fake_lines(1))["id"], "completed")
    (row,) = _rows(client, batch["error_file_id"])
    assert row["response"]["status_code"] == 503 and row["response"]["body"]["error"]["code"] == "service_unavailable"
    assert len(fake_backend.calls) == 2  # tried twice
    fake_backend.fail = None
    batch = _wait(client, _upload(client, _fake_lines(1))["id"], "completed")
    assert batch["request_counts"] == {"total": 1, "completed": 1, "failed": 0}


def test_batch_lines_reach_the_batcher_as_batch_rows_and_online_requests_do_not(batch_client):
    client = batch_client()
    batcher = client.app.state.embeddings.batcher
    seen, submit = [], batcher.submit

    async def spy(info, rows, *args, **kwargs):
        seen.append((rows[0].text, row_priority.get()))
        return await submit(info, rows, *args, **kwargs)

    batcher.submit = spy
    _wait(client, _upload(client, _fake_lines(2))["id"], "completed")
    assert client.post("/v1/embeddings", json={"model": "fake-model", "input": "online"}).status_code == 200
    assert sorted(seen) == [("online", ONLINE), ("text 0", BATCH), ("text 1", BATCH)]


def test_past_its_window_a_batch_expires_and_keeps_what_ran(batch_client, fake_backend):
    client = batch_client(batch_chunk_lines=1)
    fake_backend.delay = 0.05
    created = _upload(client, _fake_lines(40))
    store = client.app.state.batch_store
    deadline = time.monotonic() + 10
    while client.get(f"/v1/batches/{created['id']}").json()["request_counts"]["completed"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    client.portal.call(store.update_batch, created["id"], lambda b: {**b, "expires_at": 0})
    batch = _wait(client, created["id"], "expired")
    done = _rows(client, batch["output_file_id"])
    unrun = _rows(client, batch["error_file_id"])
    assert len(done) >= 2 and len(done) + len(unrun) == 40 and batch["expired_at"]
    assert {r["error"]["code"] for r in unrun} == {"batch_expired"}
    for file_id in (batch["output_file_id"], batch["error_file_id"]):  # bytes: exactly what the download sends
        content = client.get(f"/v1/files/{file_id}/content").content
        assert client.get(f"/v1/files/{file_id}").json()["bytes"] == len(content)
    r = client.post("/v1/batches", json={"input_file_id": batch["output_file_id"], "endpoint": "/v1/embeddings",
                                         "completion_window": "24h"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_id"  # an output file is no input
    assert client.delete(f"/v1/files/{batch['output_file_id']}").json()["deleted"]
    assert client.get(f"/v1/files/{batch['output_file_id']}/content").status_code == 404
    assert client.get(f"/v1/batches/{created['id']}").json()["request_counts"] == batch["request_counts"]


def test_keys_own_their_jobs(batch_client):
    client = batch_client(api_keys=["k1", "k2"])
    one, two = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2"))
    batch = _upload(client, _fake_lines(1), headers=one)
    assert client.get(f"/v1/batches/{batch['id']}", headers=two).status_code == 404
    assert client.get(f"/v1/files/{batch['input_file_id']}", headers=two).json()["error"]["param"] == "id"
    assert client.get("/v1/batches", headers=two).json()["data"] == []
    assert client.delete(f"/v1/files/{batch['input_file_id']}", headers=two).status_code == 404
    owner = client.portal.call(client.app.state.batch_store.get_batch, batch["id"])[1]
    assert owner == hashlib.sha256(b"k1").hexdigest()


def test_a_store_that_is_down_is_a_503(make_client, free_tcp_port):
    client = make_client(batch_store=f"redis://127.0.0.1:{free_tcp_port}/0")
    r = client.get("/v1/batches")
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "service_unavailable"


@pytest.fixture
def free_tcp_port() -> int:
    from tests.gw_helpers import free_port

    return free_port()


async def test_the_runner_waits_for_online_requests_at_most_max_wait():
    gate = SimpleNamespace(in_flight=1)
    state = SimpleNamespace(embeddings=SimpleNamespace(admission=gate), rerank=SimpleNamespace(admission=gate))
    runner = Runner(state, None, Settings(batch_max_wait_s=0.2, batch_yield_in_flight=1), None)
    t0 = time.monotonic()
    await runner.wait_for_room()  # online requests throughout: one chunk goes anyway after max_wait
    assert 0.2 <= time.monotonic() - t0 < 1.0
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, setattr, gate, "in_flight", 0)
    t0 = time.monotonic()
    await runner.wait_for_room()
    assert 0.04 <= time.monotonic() - t0 < 0.15  # the online requests done: at once
