"""Triton stops and comes back while the gateway runs; Redis stops while the gateway runs."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.gw_helpers import DEFAULT_MODEL, GatewayProcess, running_gateway, triton_error_counts

pytestmark = pytest.mark.slow

BODY = {"model": DEFAULT_MODEL, "input": "resilience check", "encoding_format": "float"}
# The upper bound on answers that must not wait: it catches a hang (e.g. one that waits out the 30 s Triton
# deadline), not a slow machine (a loaded 2-core CI runner can take seconds).
HANG_S = 10.0


@pytest.fixture
def own_triton(model_repository, tmp_path):
    """A Triton of this test's own (the session one must not be stopped)."""
    from triton_embeddings.local.launcher import TritonServer

    server = TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log")
    with server:
        yield server


def test_triton_stop_gives_503_fast_and_restart_recovers(own_triton, tmp_path):
    settings = dict(cache="none", triton_timeout_s="30", request_timeout_s="60")
    with (
        running_gateway(
            tmp_path, triton_grpc_url=own_triton.grpc_url, triton_metrics_url=own_triton.metrics_url, **settings
        ) as gw,
        httpx.Client(base_url=gw.url, timeout=60) as c,
    ):
        before = c.post("/v1/embeddings", json=BODY)
        assert before.status_code == 200
        gateway_pid = gw.proc.pid

        own_triton.stop()
        for i in range(3):
            t0 = time.monotonic()
            r = c.post("/v1/embeddings", json={**BODY, "input": f"while down {i}"})
            elapsed = time.monotonic() - t0
            assert r.status_code == 503, r.text
            assert elapsed < HANG_S, f"503 took {elapsed:.2f}s: it waited for Triton instead of failing fast"
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "service_unavailable"
        assert c.get("/ready").status_code == 503
        assert c.get("/health").status_code == 200
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "gateway_triton_metrics_up 0.0" in metrics.text

        own_triton.start()  # same ports; the gateway is not restarted
        deadline = time.monotonic() + 30
        while True:
            r = c.post("/v1/embeddings", json=BODY)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.status_code == 503, r.text
            time.sleep(0.2)
        assert r.status_code == 200, "the gateway did not recover after Triton came back"
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], before.json()["data"][0]["embedding"], atol=1e-6)
        assert c.get("/ready").status_code == 200
        assert gw.proc.pid == gateway_pid and gw.proc.poll() is None


def test_triton_hanging_gives_504_after_the_deadline(own_triton, tmp_path):
    with (
        running_gateway(
            tmp_path, triton_grpc_url=own_triton.grpc_url, triton_metrics_url="", cache="none", triton_timeout_s="1.0"
        ) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
    ):
        assert c.post("/v1/embeddings", json=BODY).status_code == 200
        os.kill(own_triton.process.pid, signal.SIGSTOP)  # alive but not answering
        try:
            t0 = time.monotonic()
            r = c.post("/v1/embeddings", json={**BODY, "input": "while frozen"})
            elapsed = time.monotonic() - t0
        finally:
            os.kill(own_triton.process.pid, signal.SIGCONT)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "timeout" and 0.9 < elapsed < HANG_S
        assert c.post("/v1/embeddings", json=BODY).status_code == 200
        assert triton_error_counts(c.get("/metrics").text) == {"timeout": 1.0}


def _in_flight(c: httpx.Client) -> float:
    line = next(ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("gateway_in_flight_requests "))
    return float(line.split()[-1])


def test_request_deadline_and_overload_on_a_frozen_triton(own_triton, tmp_path):
    """The whole-request deadline (shorter than the Triton call's) is its own kind; a full gateway answers 429."""
    settings = dict(cache="none", triton_timeout_s="30", request_timeout_s="1.5", max_in_flight="1")
    with (
        running_gateway(tmp_path, triton_grpc_url=own_triton.grpc_url, triton_metrics_url="", **settings) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
        httpx.Client(base_url=gw.url, timeout=10) as other,
        ThreadPoolExecutor(1) as pool,
    ):
        assert c.post("/v1/embeddings", json=BODY).status_code == 200
        os.kill(own_triton.process.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            first = pool.submit(other.post, "/v1/embeddings", json={**BODY, "input": "frozen 1"})
            while _in_flight(c) < 1 and not first.done():
                time.sleep(0.02)
            second = c.post("/v1/embeddings", json={**BODY, "input": "frozen 2"})
            r = first.result()
            elapsed = time.monotonic() - t0
        finally:
            os.kill(own_triton.process.pid, signal.SIGCONT)
        assert second.status_code == 429 and second.headers["retry-after"] == "1", second.text
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
        assert 1.4 < elapsed < HANG_S
        assert triton_error_counts(c.get("/metrics").text) == {"deadline": 1.0}
        assert c.post("/v1/embeddings", json=BODY).status_code == 200


def test_gateway_started_before_triton_serves_once_it_is_up(model_repository, tmp_path):
    from triton_embeddings.local.launcher import TritonServer

    server = TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log")
    gw = GatewayProcess(
        tmp_path / "gw2.log", triton_grpc_url=server.grpc_url, triton_metrics_url=server.metrics_url
    ).start(wait="/health")
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/v1/embeddings", json=BODY)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            with server:
                deadline = time.monotonic() + 30
                while c.post("/v1/embeddings", json=BODY).status_code != 200:
                    assert time.monotonic() < deadline, "never recovered"
                    time.sleep(0.2)
                ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
                assert DEFAULT_MODEL in ids
    finally:
        gw.stop()


# ---- Redis ---------------------------------------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def test_redis_cache_hits_are_identical_and_redis_down_still_serves(triton, redis_server, tmp_path):
    proc, port, r = redis_server
    texts = ["cached one", "cached two", "cached three"]
    with (
        running_gateway(
            tmp_path,
            triton_grpc_url=triton.grpc_url,
            triton_metrics_url="",
            cache="redis",
            redis_url=f"redis://127.0.0.1:{port}/0",
            redis_retry_s="0.5",
        ) as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
    ):
        body = {"model": DEFAULT_MODEL, "input": texts, "encoding_format": "base64"}
        miss = c.post("/v1/embeddings", json=body)
        assert miss.status_code == 200
        m1 = c.get("/metrics").text
        assert len(r.keys("emb:*")) == 3
        hit = c.post("/v1/embeddings", json=body)
        m2 = c.get("/metrics").text
        assert hit.json() == miss.json(), "cached answers must be identical to computed ones"
        assert _metric(m2, "gateway_cache_hits_total") - _metric(m1, "gateway_cache_hits_total") == 3
        assert _metric(m2, "gateway_cache_misses_total") == _metric(m1, "gateway_cache_misses_total")
        partly = c.post("/v1/embeddings", json={**body, "input": ["cached two", "new one"]})
        assert partly.json()["data"][0] == {**miss.json()["data"][1], "index": 0}
        assert len(r.keys("emb:*")) == 4

        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        for i in range(3):
            t0 = time.monotonic()
            down = c.post("/v1/embeddings", json={**body, "input": texts + [f"redis down {i}"]})
            assert down.status_code == 200 and time.monotonic() - t0 < HANG_S
            assert down.json()["data"][:3] == miss.json()["data"]
        assert _metric(c.get("/metrics").text, "gateway_cache_errors_total") >= 1
        assert "Redis" in gw.log_text()


def test_model_loaded_after_gateway_start_is_found(model_repository, tmp_path):
    import tritonclient.grpc as grpcclient

    from triton_embeddings.local.launcher import TritonServer

    server = TritonServer.on_free_ports(
        model_repository, log_file=tmp_path / "triton.log", extra_args=["--model-control-mode=explicit"]
    )
    with (
        server,
        running_gateway(tmp_path, "/health", triton_grpc_url=server.grpc_url, triton_metrics_url="") as gw,
        httpx.Client(base_url=gw.url, timeout=10) as c,
    ):
        assert c.get("/v1/models").json()["data"] == []
        assert c.get("/ready").status_code == 503
        assert c.post("/v1/embeddings", json=BODY).json()["error"]["code"] == "model_not_found"
        # The model-control API needs the launcher's key (local/supervisor.py); loading the ensemble loads its steps.
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.load_model(DEFAULT_MODEL, headers=server.control_headers(grpc=True))
        deadline = time.monotonic() + 15
        while (r := c.post("/v1/embeddings", json=BODY)).status_code != 200:
            assert r.status_code == 404 and time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert c.get("/ready").status_code == 200
