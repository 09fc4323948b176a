"""The gateway's own connection handling, with real sockets against a real gateway over the real Triton:
silent connections are closed, a connection cap answers 503, graceful stop, bodies that are not UTF-8."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL
from tests.gw_helpers import running_gateway

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 2.0


def embed(client: httpx.Client, text: str) -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": [text]})


def open_silent(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
    return socks


def closed_at(sock: socket.socket, deadline: float) -> float | None:
    """When the server closed `sock` (EOF or reset), waiting at most until `deadline`."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return time.monotonic()
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
        except TimeoutError:
            return None
    return None


@pytest.fixture(scope="module")
def strict_gateway(triton, tmp_path_factory):
    with running_gateway(tmp_path_factory.mktemp("conn"), triton_grpc_url=triton.grpc_url,
                         triton_metrics_url="", request_read_timeout_s=READ_TIMEOUT_S, keep_alive_s=30) as gw:
        yield gw


def test_silent_and_stalled_connections_are_closed_while_others_are_served(strict_gateway):
    port = strict_gateway.port
    with httpx.Client(base_url=strict_gateway.url, timeout=30) as client:
        assert embed(client, "warm up").status_code == 200
        t0 = time.monotonic()
        silent = open_silent(port, 200)
        stalled = open_silent(port, 1)[0]
        stalled.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mod")
        statuses, i = [], 0
        while time.monotonic() - t0 < READ_TIMEOUT_S + 1:  # others keep being served meanwhile
            statuses.append(embed(client, f"served while 201 connections idle {i}").status_code)
            i += 1
        deadline = t0 + READ_TIMEOUT_S + 5
        closes = [closed_at(s, deadline) for s in [*silent, stalled]]
    for s in [*silent, stalled]:
        s.close()
    assert statuses and set(statuses) == {200}, statuses
    assert None not in closes, f"{closes.count(None)} of 201 connections still open after {READ_TIMEOUT_S + 5}s"
    assert min(closes) - t0 >= READ_TIMEOUT_S * 0.9, "closed by the read timeout, not before"


def test_keep_alive_connection_outlives_the_read_timeout(strict_gateway):
    """The read timeout bounds reading a request; an idle kept-alive connection follows keep_alive_s."""
    with httpx.Client(base_url=strict_gateway.url, timeout=30) as client:
        ports = []
        for text in ("first", "second after an idle pause"):
            r = client.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": [text]},
                            extensions={"trace": lambda name, info: ports.append(name)})
            assert r.status_code == 200
            if text == "first":
                time.sleep(READ_TIMEOUT_S + 1)
    assert ports.count("connection.connect_tcp.started") == 1, "the second request reused the connection"


def test_connection_cap_answers_openai_shaped_503(triton, tmp_path):
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="",
                         max_connections=20) as gw:
        held = open_silent(gw.port, 20)
        time.sleep(0.2)
        over = httpx.post(f"{gw.url}/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["x"]}, timeout=10)
        for s in held:
            s.close()
        assert over.status_code == 503 and over.headers["connection"] == "close"
        assert over.headers["retry-after"] == "1"
        assert over.json()["error"]["code"] == "service_unavailable"
        deadline, status = time.monotonic() + 5, None
        while time.monotonic() < deadline and status != 200:
            status = httpx.post(f"{gw.url}/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["y"]},
                                timeout=10).status_code
        assert status == 200, "served again once the held connections closed"


def test_sigterm_readiness_goes_false_first_then_listener_closes(triton, tmp_path):
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="",
                         shutdown_delay_s=1.5, drain_timeout_s=5) as gw:
        proc = gw.proc
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            assert client.get("/ready").status_code == 200
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            ready = client.get("/ready")
            served = embed(client, "still served during the shutdown delay")
        assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"]
        assert served.status_code == 200 and served.headers["connection"] == "close"
        refused = None
        while refused is None and time.monotonic() - t0 < 10:
            try:
                socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused = time.monotonic() - t0
        assert refused is not None and refused >= 1.4, f"listener closed after {refused}s (delay 1.5 s)"
        assert proc.wait(10) in (0, -signal.SIGTERM)


def test_sigterm_drains_an_in_flight_request(triton, tmp_path):
    """A request still being handled when the listener closes is answered, not cut."""
    slow = {"triton_timeout_s": 300, "request_timeout_s": 300, "drain_timeout_s": 300}  # a loaded CI machine
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="", cache="none",
                         shutdown_delay_s=0.2, **slow) as gw:
        texts = [f"a long input to keep the encoder busy, number {i}, " * 12 for i in range(192)]
        result: dict = {}

        def big() -> None:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": DEFAULT_MODEL, "input": texts}, timeout=300)
                result.update(status=r.status_code, body=r.content[:300], done=time.monotonic())
                result["n"] = len(r.json()["data"])

        t = threading.Thread(target=big)
        t.start()
        time.sleep(0.1)
        sigterm = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        t.join(300)
        assert (result.get("status"), result.get("n")) == (200, 192), result
        assert result["done"] - sigterm > 0.3, "the request was still in flight when the listener closed"
        assert gw.proc.wait(30) in (0, -signal.SIGTERM)


def test_invalid_utf8_body_names_the_byte_offset(gateway):
    body = b'{"model": "' + DEFAULT_MODEL.encode() + b'", "input": ["caf\xe9 au lait"]}'
    offset = body.index(b"\xe9")
    r = httpx.post(f"{gateway.url}/v1/embeddings", content=body, headers={"Content-Type": "application/json"},
                   timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "UTF-8" in err["message"]
    assert f"byte offset {offset}" in err["message"] and "0xe9" in err["message"]
    ok = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["café au lait"]},
                    timeout=10)
    assert ok.status_code == 200
