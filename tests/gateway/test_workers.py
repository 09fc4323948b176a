"""Gateway worker processes on one port (EMBEDDINGS_WORKERS) over the real Triton: one metrics view across
them, a killed worker replaced while the others serve, and a clean stop of all of them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.gw_helpers import DEFAULT_MODEL, running_gateway

pytestmark = pytest.mark.slow


def workers_of(parent: int) -> set[int]:
    """The live (not zombie) child processes of `parent`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == parent and state != "Z":
            found.add(int(entry.name))
    return found


def requests_total(url: str) -> float:
    """`gateway_requests_total` of 200 answers on /v1/embeddings, as one worker's /metrics tells it."""
    text = httpx.get(url + "/metrics", timeout=10, headers={"connection": "close"}).text
    prefix = f'gateway_requests_total{{model="{DEFAULT_MODEL}",route="/v1/embeddings",status="200"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def embed_on_new_connections(url: str, n: int) -> list[int]:
    codes = []
    for i in range(n):
        with httpx.Client(timeout=30) as c:  # a connection each: the kernel picks a worker each time
            codes.append(c.post(url + "/v1/embeddings", json={"model": DEFAULT_MODEL, "input": f"w{i} {time.time()}"})
                         .status_code)
    return codes


@pytest.fixture(scope="module")
def gateway2(triton, model_repository, tmp_path_factory):
    with running_gateway(tmp_path_factory.mktemp("workers"), triton_grpc_url=triton.grpc_url,
                         triton_metrics_url=triton.metrics_url, model_repository=model_repository, workers=2,
                         shutdown_delay_s=0) as gw:
        deadline = time.monotonic() + 120
        while len(workers_of(gw.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield gw


def test_metrics_are_one_view_across_the_workers(gateway2):
    assert len(workers_of(gateway2.proc.pid)) == 2
    before = requests_total(gateway2.url)
    assert embed_on_new_connections(gateway2.url, 30) == [200] * 30
    seen = {requests_total(gateway2.url) - before for _ in range(8)}  # any worker answers: the same sum
    assert seen == {30.0}
    text = httpx.get(gateway2.url + "/metrics", timeout=10).text
    assert "gateway_in_flight_requests 0.0" in text and "nv_inference_count" in text


def test_a_killed_worker_is_replaced_while_the_other_serves(gateway2):
    old = workers_of(gateway2.proc.pid)
    victim = min(old)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(workers_of(gateway2.proc.pid)) < 2 or victim in
                                           workers_of(gateway2.proc.pid)):
        time.sleep(0.1)
    now = workers_of(gateway2.proc.pid)
    assert len(now) == 2 and victim not in now
    assert embed_on_new_connections(gateway2.url, 20) == [200] * 20


def test_sigterm_stops_every_worker(triton, model_repository, tmp_path):
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="",
                         model_repository=model_repository, workers=2, shutdown_delay_s=0) as gw:
        deadline = time.monotonic() + 120
        while len(workers_of(gw.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        children = workers_of(gw.proc.pid)
        assert len(children) == 2
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(30) == 0
    assert not [p for p in children if Path(f"/proc/{p}").exists() and "Z" not in
                Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]]
