"""EMBEDDINGS_UNAVAILABLE_HOLD_S: while Triton is unreachable a request waits for it (its call made again every
0.5 s) up to the hold, then is answered 503 with Retry-After; 0 answers 503 at once. `/ready` says not ready
meanwhile, so a load balancer routes away."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.gw_helpers import DEFAULT_MODEL, running_gateway
from triton_embeddings.gateway.backends.base import BackendTimeout, BackendUnavailable, WorkerDown
from triton_embeddings.gateway.backends.triton import HOLD_RETRY_S, TritonBackend


def calls_failing(times: int, error: Exception):
    """A call that raises `error` its first `times` times, then answers "ok"; `made` counts the calls."""
    made = []

    async def call():
        made.append(time.monotonic())
        if len(made) <= times:
            raise error
        return "ok"

    return call, made


def run(coro):
    return asyncio.run(coro)


def test_an_unreachable_triton_is_called_again_every_half_second_until_it_answers():
    backend = TritonBackend("127.0.0.1:1", unavailable_hold_s=5)
    call, made = calls_failing(3, BackendUnavailable("connection refused"))
    assert run(backend._guarded("m", call)) == "ok"
    gaps = [b - a for a, b in zip(made, made[1:])]
    assert len(made) == 4 and all(gap >= HOLD_RETRY_S for gap in gaps)


def test_past_the_hold_the_last_failure_is_raised():
    backend = TritonBackend("127.0.0.1:1", unavailable_hold_s=1.2)
    call, made = calls_failing(100, BackendUnavailable("connection refused"))
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable):
        run(backend._guarded("m", call))
    assert 1.0 <= time.monotonic() - t0 < 3 and len(made) == 3  # at 0, 0.5 and 1.0 s; 1.5 s is past the hold


def test_hold_0_raises_at_once_and_other_failures_are_never_held():
    call, made = calls_failing(1, BackendUnavailable("connection refused"))
    with pytest.raises(BackendUnavailable):
        run(TritonBackend("127.0.0.1:1")._guarded("m", call))
    call, made = calls_failing(1, BackendTimeout("deadline exceeded"))
    with pytest.raises(BackendTimeout):
        run(TritonBackend("127.0.0.1:1", unavailable_hold_s=60)._guarded("m", call))
    assert len(made) == 1


def test_a_crashed_stub_is_held_while_its_model_reloads_and_the_mark_is_cleared():
    backend = TritonBackend("127.0.0.1:1", unavailable_hold_s=5)
    call, made = calls_failing(2, WorkerDown("Stub process is not healthy"))
    assert run(backend._guarded("m", call)) == "ok" and len(made) == 3
    assert "m" not in backend.broken


@pytest.fixture
def own_triton(model_repository, tmp_path):
    """A Triton of this test's own (the session one must not be stopped)."""
    from triton_embeddings.local.launcher import TritonServer

    with TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log") as server:
        yield server


@pytest.mark.slow
def test_a_request_sent_while_triton_is_down_is_answered_once_it_is_back(own_triton, tmp_path):
    urls = dict(triton_grpc_url=own_triton.grpc_url, triton_metrics_url=own_triton.metrics_url, cache="none")
    with (running_gateway(tmp_path, unavailable_hold_s="60", **urls) as held,
          running_gateway(tmp_path, **urls) as at_once):
        body = {"model": DEFAULT_MODEL, "input": "held while Triton restarts"}
        assert httpx.post(held.url + "/v1/embeddings", json=body, timeout=30).status_code == 200
        own_triton.stop()

        t0 = time.monotonic()
        fast = httpx.post(at_once.url + "/v1/embeddings", json=body, timeout=30)
        assert fast.status_code == 503 and time.monotonic() - t0 < 10  # hold 0: today's fast 503
        assert fast.headers["retry-after"] == "1" and fast.json()["error"]["code"] == "service_unavailable"
        assert httpx.get(held.url + "/ready", timeout=10).status_code == 503  # the hold does not hide the outage

        answers: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: answers.append(
            httpx.post(held.url + "/v1/embeddings", json=body, timeout=120)))
        waiting.start()
        time.sleep(2)
        assert not answers, "the request was answered while Triton was down"
        own_triton.start()  # the same ports
        waiting.join(120)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert len(answers[0].json()["data"][0]["embedding"]) == 384
        assert time.monotonic() - t0 >= 2
