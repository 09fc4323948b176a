"""OpenAI's Batch API on the real gateway over the real Triton, judged by the official `openai` client: vectors
equal the online endpoint's, bad files get OpenAI-shaped 4xx, keys see only their own jobs, a SIGKILLed
gateway's job resumes with every line exactly once, and two gateways share one real Redis store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import httpx
import numpy as np
import openai
import pytest

from tests.gw_helpers import DEFAULT_MODEL, GatewayProcess, running_gateway

pytestmark = pytest.mark.slow

KEY_A, KEY_B = "sk-batch-a", "sk-batch-b"


def jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def embedding_lines(n: int, texts_per_line: int = 1, tag: str = "") -> list[dict]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": DEFAULT_MODEL, "input": [f"{tag} line {i} text {j} about batches" for j in
                                                        range(texts_per_line)]}} for i in range(n)]


def wait_status(client: openai.OpenAI, batch_id: str, statuses=("completed",), timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}: {batch.request_counts}"
        time.sleep(0.1)


def output_rows(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def submit(client: openai.OpenAI, rows: list[dict], endpoint: str = "/v1/embeddings"):
    file = client.files.create(file=("input.jsonl", jsonl(rows)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h")


@pytest.fixture(scope="module")
def batch_gateway(triton, tmp_path_factory):
    """Keys on, no cache (every vector comes from Triton), one line at a time (as a lone online request), output
    files streamed 4 lines per page (so the client reads several)."""
    d = tmp_path_factory.mktemp("batch_gateway")
    with running_gateway(d, triton_grpc_url=triton.grpc_url, triton_metrics_url=triton.metrics_url,
                         api_keys=json.dumps([KEY_A, KEY_B]), cache="none", shutdown_delay_s=0, batch_store=f"sqlite:///{d}/b.db",
                         batch_poll_s=0.1, batch_chunk_lines=1, batch_page_lines=4, batch_max_requests=50,
                         batch_max_upload_bytes=64 * 1024) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(batch_gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=KEY_A, max_retries=0)


def test_openai_client_batch_vectors_equal_the_online_endpoint(client, batch_gateway):
    rows = embedding_lines(6, texts_per_line=2)
    rows.append({"custom_id": "bad-input", "method": "POST", "url": "/v1/embeddings",
                 "body": {"model": DEFAULT_MODEL, "input": []}})
    created = submit(client, rows)
    assert created.status == "validating" and created.request_counts.total == 7
    batch = wait_status(client, created.id)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (6, 1)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert created.id in [b.id for b in client.batches.list(limit=100)]
    out = output_rows(client, batch.output_file_id)
    assert [r["custom_id"] for r in out] == [f"req-{i}" for i in range(6)]
    for row, line in zip(out, rows):  # the client asks for base64: float32 rows, as the JSON's shortest reprs
        direct = client.embeddings.create(model=DEFAULT_MODEL, input=line["body"]["input"])
        assert row["response"]["status_code"] == 200 and row["error"] is None
        got = np.array([d["embedding"] for d in row["response"]["body"]["data"]], dtype=np.float32)
        assert np.array_equal(got, np.array([d.embedding for d in direct.data], dtype=np.float32))  # bit for bit
        assert row["response"]["body"]["usage"]["total_tokens"] == direct.usage.total_tokens
    (err,) = output_rows(client, batch.error_file_id)
    online = httpx.post(batch_gateway.url + "/v1/embeddings", json=rows[-1]["body"],
                        headers={"Authorization": f"Bearer {KEY_A}"})
    assert err["custom_id"] == "bad-input"
    assert (err["response"]["status_code"], err["response"]["body"]) == (online.status_code, online.json())
    with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status 'completed'"):
        client.batches.cancel(batch.id)


def test_another_key_sees_nothing(client, batch_gateway):
    created = submit(client, embedding_lines(1, tag="private"))
    other = openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=KEY_B, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(created.input_file_id)
    assert created.id not in [b.id for b in other.batches.list()]
    assert created.input_file_id not in [f.id for f in other.files.list()]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key="wrong", max_retries=0).batches.list()
    wait_status(client, created.id)


def test_cancel_keeps_what_ran(client, triton):
    os.kill(triton.process.pid, signal.SIGSTOP)  # frozen: the job cannot finish before it is cancelled
    try:
        created = submit(client, embedding_lines(20, texts_per_line=4, tag="cancel"))
        cancelling = client.batches.cancel(created.id)
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = wait_status(client, created.id, ("cancelled",))
    ran = batch.request_counts.completed + batch.request_counts.failed
    unrun = [r for r in output_rows(client, batch.error_file_id) if r["response"] is None]
    assert ran < 20 and ran + len(unrun) == 20 and {r["error"]["code"] for r in unrun} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_files_get_openai_shaped_4xx(client, batch_gateway):
    auth = {"Authorization": f"Bearer {KEY_A}"}
    upload = lambda content: httpx.post(batch_gateway.url + "/v1/files", headers=auth,  # noqa: E731
                                        files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    good = json.dumps(embedding_lines(1)[0])
    r = upload(f"{good}\n{{not json\n".encode())
    assert r.status_code == 400 and _error(r)["code"] == "invalid_json_line" and "Line 2" in _error(r)["message"]
    r = upload(jsonl(embedding_lines(51)))
    assert r.status_code == 413 and _error(r)["code"] == "too_many_requests"
    r = upload(b"x" * (64 * 1024 + 1))
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"
    with pytest.raises(openai.NotFoundError, match="No such File"):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")

    rerank_line = {"custom_id": "r", "method": "POST", "url": "/v1/rerank",
                   "body": {"model": "m", "query": "q", "documents": ["d"]}}
    with pytest.raises(openai.BadRequestError) as e:
        submit(client, [embedding_lines(1)[0], rerank_line])
    assert e.value.code == "mismatched_endpoint" and "Line 2" in e.value.message
    failed = next(b for b in client.batches.list() if b.status == "failed")
    assert [(x.code, x.line) for x in failed.errors.data] == [("mismatched_endpoint", 2)]

    other_model = {**embedding_lines(2)[1], "body": {"model": "not-served", "input": "x"}}
    mixed = submit(client, [embedding_lines(1)[0], other_model])
    assert [(x.code, x.line) for x in mixed.errors.data] == [("mixed_models", 2)]
    batch = wait_status(client, mixed.id)
    (err,) = output_rows(client, batch.error_file_id)
    assert err["response"]["status_code"] == 404 and err["response"]["body"]["error"]["code"] == "model_not_found"
    assert len(output_rows(client, batch.output_file_id)) == 1


def _counts(db: str, batch_id: str) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM lines WHERE batch_id = ?", (batch_id,)).fetchone()[0]


def _lines_total(gw: GatewayProcess) -> float:
    text = httpx.get(gw.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("gateway_batch_lines_total"))


def _check_exactly_once(client: openai.OpenAI, batch_id: str, n: int) -> None:
    batch = wait_status(client, batch_id)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (n, 0)
    ids = [r["custom_id"] for r in output_rows(client, batch.output_file_id)]
    assert ids == [f"req-{i}" for i in range(n)]  # every line, once, in input order


def _freeze_and_kill(triton, gateways: list[GatewayProcess], done, holder=None) -> int:
    """SIGKILL the gateway running the job (the only one, or the one whose runner id `holder()` names; each logs
    its id) mid-job: Triton frozen first, so no line is written meanwhile; the lines written by then."""
    deadline = time.monotonic() + 60
    while done() < 3:
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.02)
    os.kill(triton.process.pid, signal.SIGSTOP)
    try:
        runner = holder().decode() if holder else ""
        gw = next(g for g in gateways if runner in g.log_text())
        written = done()
        gw.proc.kill()
        gw.proc.wait(10)
        gw.stop()
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    return written


def test_sigkill_mid_job_then_restart_completes_every_line_once(triton, tmp_path):
    n, db = 40, str(tmp_path / "b.db")
    settings = dict(triton_grpc_url=triton.grpc_url, triton_metrics_url="", shutdown_delay_s=0, batch_store=f"sqlite:///{db}",
                    batch_poll_s=0.1, batch_lease_s=2, batch_chunk_lines=2)
    gw = GatewayProcess(tmp_path / "gw1.log", **settings).start()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="-", max_retries=0)
    created = submit(client, embedding_lines(n, texts_per_line=8, tag="kill"))
    written = _freeze_and_kill(triton, [gw], lambda: _counts(db, created.id))
    assert 0 < written < n
    with running_gateway(tmp_path, **settings) as again:
        client = openai.OpenAI(base_url=again.url + "/v1", api_key="-", max_retries=0)
        _check_exactly_once(client, created.id, n)
        assert _lines_total(again) == n - written  # the restarted gateway ran only the lines not written


def test_two_gateways_share_one_redis_store(triton, redis_server, tmp_path):
    _, port, r = redis_server
    n = 40
    settings = dict(triton_grpc_url=triton.grpc_url, triton_metrics_url="", shutdown_delay_s=0, batch_poll_s=0.1,
                    batch_lease_s=2, batch_chunk_lines=2, batch_page_lines=8, batch_store=f"redis://127.0.0.1:{port}/0")
    gateways = [GatewayProcess(tmp_path / f"gw{i}.log", **settings).start() for i in range(2)]
    try:
        clients = [openai.OpenAI(base_url=g.url + "/v1", api_key="-", max_retries=0) for g in gateways]
        created = submit(clients[0], embedding_lines(n, texts_per_line=8, tag="redis"))
        assert clients[1].batches.retrieve(created.id).input_file_id == created.input_file_id
        runs = lambda: r.hlen(f"embeddings:batch:lines:{created.id}")  # noqa: E731
        written = _freeze_and_kill(triton, gateways, runs, lambda: r.get(f"embeddings:batch:lease:{created.id}"))
        survivor = next(i for i, g in enumerate(gateways) if g.proc is not None)
        _check_exactly_once(clients[survivor], created.id, n)
        assert _lines_total(gateways[survivor]) == n - written  # it took the job over where the other stopped
    finally:
        for g in gateways:
            g.stop()
