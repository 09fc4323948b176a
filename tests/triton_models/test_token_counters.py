"""TokenCounters batches metric updates: each one is a round trip to Triton's core (a fake pb_utils here;
tests/triton_models/test_triton_server.py reads the real counters from Triton's /metrics)."""

from __future__ import annotations

import sys
import types

import pytest


class _Metric:
    def __init__(self, labels):
        self.labels, self.calls, self.value = labels, 0, 0

    def increment(self, n):
        self.calls += 1
        self.value += n


class _Family:
    COUNTER = "counter"

    def __init__(self, name, description, kind):
        self.metrics = []

    def Metric(self, labels):  # noqa: N802 - pb_utils' name
        self.metrics.append(_Metric(labels))
        return self.metrics[-1]


@pytest.fixture
def counters(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.SimpleNamespace(MetricFamily=_Family))
    monkeypatch.delitem(sys.modules, "triton_embeddings.triton_models.backend_utils", raising=False)
    from triton_embeddings.triton_models.backend_utils import TokenCounters

    return TokenCounters("t_total", "tokens", "m", flush_every_s=3600)


def test_updates_wait_for_the_interval_then_go_as_one(counters):
    for _ in range(50):
        counters.add(10, 16)
    assert counters.real.calls == counters.padded.calls == 0
    counters.flush()
    assert (counters.real.value, counters.padded.value) == (500, 800)
    assert counters.real.calls == counters.padded.calls == 1
    counters.flush()  # nothing pending: no round trip
    assert counters.real.calls == 1


def test_an_update_after_the_interval_is_sent_at_once(counters):
    counters.flush_every_s = 0.0
    counters.add(3, 4)
    assert (counters.real.value, counters.padded.value) == (3, 4)
