"""Triton's "stub not healthy" answer is an upstream-unavailable 503 of its own kind (unit, fake backend)."""

from __future__ import annotations

from tritonclient.grpc import InferenceServerException

from triton_embeddings.gateway.backends.base import BackendUnavailable, ModelNotFound, WorkerDown
from triton_embeddings.gateway.backends.triton import _classify

STUB_DOWN = "in ensemble 'm', Stub process 'm_encoder_0_0' is not healthy."


def test_stub_not_healthy_is_a_worker_down():
    err = _classify(InferenceServerException(STUB_DOWN, status="StatusCode.INTERNAL"), "inference on m")
    assert isinstance(err, WorkerDown) and isinstance(err, BackendUnavailable)
    assert err.kind == "stub_unhealthy"
    other = _classify(InferenceServerException("boom", status="StatusCode.INTERNAL"), "inference on m")
    assert type(other).__name__ == "BackendError" and other.kind == "error"
    gone = _classify(InferenceServerException("Request for unknown model: 'm' has no available versions",
                                               status="StatusCode.NOT_FOUND"), "inference on m")
    assert type(gone) is ModelNotFound and isinstance(gone, BackendUnavailable) and gone.kind == "unavailable"


def test_worker_down_answers_503_with_retry_after_and_is_counted(make_client, fake_backend):
    fake_backend.fail = WorkerDown(f"inference on fake-model: {STUB_DOWN}")
    client = make_client(cache="none")
    assert 'gateway_triton_errors_total{kind="stub_unhealthy"} 0.0' in client.get("/metrics").text
    r = client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "service_unavailable" and "Stub" not in r.json()["error"]["message"]
    assert 'gateway_triton_errors_total{kind="stub_unhealthy"} 1.0' in client.get("/metrics").text
