"""Helpers shared by the Triton Python-backend models (imported only inside the Python backend)."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils


class TokenCounters:
    """A `<name>{model, kind="real"|"padded"}` counter pair in Triton's /metrics."""

    def __init__(self, name: str, description: str, model: str):
        # Keep the family referenced: Triton drops its metrics once the family object is freed.
        self.family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
        self.real = self.family.Metric(labels={"model": model, "kind": "real"})
        self.padded = self.family.Metric(labels={"model": model, "kind": "padded"})

    def add(self, real: int, padded: int) -> None:
        self.real.increment(real)
        self.padded.increment(padded)
