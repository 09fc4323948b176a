"""A crashed Python-backend stub, through the gateway: 503s with Retry-After meanwhile, 200s again within 30 s."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.gw_helpers import DEFAULT_MODEL, running_gateway
from triton_embeddings.local.supervisor import live_stubs

pytestmark = pytest.mark.slow

STEPS = ("tokenizer", "encoder", "pooler")


def _kill_stub(triton_pid: int, step: str) -> None:
    (stub,) = [s for s in live_stubs(triton_pid).values() if s.model == f"{DEFAULT_MODEL}_{step}"]
    os.kill(stub.pid, signal.SIGKILL)


def _body(text: str) -> dict:
    return {"model": DEFAULT_MODEL, "input": text, "encoding_format": "base64"}


def _assert_retryable_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "service_unavailable"
    assert "Stub" not in error["message"] and "stub" not in error["message"], "internal text leaked"


def _stub_errors(c: httpx.Client) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith('gateway_triton_errors_total{kind="stub_unhealthy"}'):
            return float(line.split()[-1])
    raise AssertionError("gateway_triton_errors_total{kind=\"stub_unhealthy\"} is not exposed")


def test_dead_stub_without_supervisor_is_a_counted_503_and_not_ready(model_repository, tmp_path):
    from triton_embeddings.local.launcher import TritonServer

    server = TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log", supervise=False)
    with (
        server,
        running_gateway(tmp_path, triton_grpc_url=server.grpc_url, triton_metrics_url="", cache="none") as gw,
        httpx.Client(base_url=gw.url, timeout=30) as c,
    ):
        assert c.post("/v1/embeddings", json=_body("before")).status_code == 200
        assert _stub_errors(c) == 0
        _kill_stub(server.process.pid, "encoder")
        for i in range(3):
            _assert_retryable_503(c.post("/v1/embeddings", json=_body(f"dead stub {i}")))
        assert _stub_errors(c) == 3
        ready = c.get("/ready")
        assert ready.status_code == 503 and "crashed" in ready.json()["error"]["message"], ready.text
        assert c.get("/health").status_code == 200
        assert "Stub process" in gw.log_text(), "the log names Triton's reason"


def test_each_crashed_step_gives_503s_then_200s_within_30s(model_repository, tmp_path):
    from triton_embeddings.local.launcher import TritonServer

    server = TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log")
    with (
        server,
        running_gateway(tmp_path, triton_grpc_url=server.grpc_url, triton_metrics_url="", cache="none") as gw,
        httpx.Client(base_url=gw.url, timeout=30) as c,
    ):
        assert c.post("/v1/embeddings", json=_body("before")).status_code == 200
        for step in STEPS:
            _kill_stub(server.process.pid, step)
            t0, failed, not_ready = time.monotonic(), 0, False
            while (r := c.post("/v1/embeddings", json=_body(f"{step} {time.monotonic()}"))).status_code != 200:
                _assert_retryable_503(r)
                failed += 1
                not_ready |= c.get("/ready").status_code == 503
                assert time.monotonic() - t0 < 30, f"{step}: no 200 within 30 s of the crash"
                time.sleep(0.05)
            assert failed >= 1, f"{step}: no 503 between the crash and the recovery"
            assert not_ready, f"{step}: /ready never reported the model unable to serve"
            assert time.monotonic() - t0 < 30
            assert server.supervisor.restarts[f"{DEFAULT_MODEL}_{step}"] == 1
            deadline = time.monotonic() + 10
            while c.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, f"{step}: /ready did not come back"
                time.sleep(0.1)
        assert gw.proc.poll() is None
