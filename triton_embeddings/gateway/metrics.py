"""Gateway metrics (explicit buckets) and a collector that merges Triton's metrics into `/metrics`."""

from __future__ import annotations

import logging
import os
import re
import urllib.request

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("gateway.metrics")

disable_created_metrics()  # no `_created` series: half the exposition, and nothing dashboards use

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TRITON_ERROR_KINDS = ("unavailable", "stub_unhealthy", "timeout", "deadline", "error")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by gateway/workers.py for worker processes
INPUT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class GatewayMetrics:
    """The gateway's own metrics, in a registry of their own (one per app)."""

    def __init__(self, triton_metrics_url: str | None = None, triton_timeout_s: float = 0.5):
        self.registry = r = CollectorRegistry()
        self.requests = self._counter("gateway_requests", "HTTP requests answered, by route, model and status code.",
                                      "route", "model", "status")
        self.latency = self._histogram(
            "gateway_request_duration_seconds",
            "Time to answer an embeddings or rerank request, by model and kind (embedding, rerank).", "model", "kind")
        self.inputs = self._histogram(
            "gateway_request_inputs", "Inputs per embeddings request, documents per rerank request; by model and kind.",
            "model", "kind", buckets=INPUT_BUCKETS)
        self.cache_hits = self._counter("gateway_cache_hits", "Inputs answered from the cache.")
        self.cache_misses = self._counter("gateway_cache_misses", "Inputs not in the cache.")
        self.cache_errors = self._counter("gateway_cache_errors", "Failed cache (Redis) calls.")
        self.in_flight = Gauge("gateway_in_flight_requests", "Embedding and rerank requests in progress.", registry=r,
                               multiprocess_mode="livesum")
        self.triton_latency = self._histogram(
            "gateway_triton_request_duration_seconds", "Time of one Triton inference call (one chunk).", "model")
        self.triton_errors = self._counter(
            "gateway_triton_errors",
            "Failed Triton calls by kind (unavailable, stub_unhealthy: a crashed Triton worker, timeout, error); "
            "deadline: requests past their own deadline.", "kind")
        for kind in TRITON_ERROR_KINDS:  # exposed at 0, so that increase() sees the first error
            self.triton_errors.labels(kind)
        self._backend_metrics()
        self._batch_metrics()
        self._team_metrics()
        # Worker processes (EMBEDDINGS_WORKERS): every worker's values, summed, from the multiprocess directory;
        # process_* metrics are per process and left out there.
        self.exposed = r
        if MULTIPROC_ENV in os.environ:
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed)
        else:
            ProcessCollector(registry=r)
        if triton_metrics_url:
            self.exposed.register(TritonMetricsCollector(triton_metrics_url, triton_timeout_s))

    def register(self, collector) -> None:
        """A collector read at each scrape (its values are this process's view, the same in every worker)."""
        self.exposed.register(collector)

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _histogram(self, name: str, documentation: str, *labels: str, buckets=LATENCY_BUCKETS) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def _backend_metrics(self) -> None:
        """Tokens by backend, and the metrics of upstream APIs (EMBEDDINGS_UPSTREAMS) and shadow copies."""
        self.tokens = self._counter(
            "gateway_tokens",
            "Tokens answered (usage, cache hits included), by model, kind (embedding, rerank) and backend "
            "(local or an upstream).", "model", "kind", "backend")
        self.upstream_tokens = self._counter(
            "gateway_upstream_tokens",
            "Tokens an upstream API billed (its usage for the texts not in the cache), by upstream and model.",
            "backend", "model")
        self.upstream_latency = self._histogram(
            "gateway_upstream_request_duration_seconds", "Time of one call to an upstream API.", "backend")
        self.upstream_errors = self._counter(
            "gateway_upstream_errors",
            "Failed upstream calls by kind (unavailable, timeout, rejected: the upstream refused the input, error).",
            "backend", "kind")
        self.shadow_requests = self._counter(
            "gateway_shadow_requests",
            "Shadow copies of upstream requests sent to a local model, by outcome (ok, dropped, or an error code).",
            "model", "target", "outcome")
        self.shadow_duration = self._histogram(
            "gateway_shadow_duration_seconds",
            "Time the local model took for a shadow copy (the client did not wait for it).", "target")

    def _team_metrics(self) -> None:
        """Usage per team (named keys, gateway/teams/): labelled with the team's name, never with a key."""
        self.team_requests = self._counter(
            "gateway_team_requests", "Requests of a team's keys answered, by team, model and status code.",
            "team", "model", "status")
        self.team_tokens = self._counter(
            "gateway_team_tokens",
            "Input tokens (usage, cache hits included) of a team's requests and batch jobs, by team, model, kind "
            "(embedding, rerank) and backend (local or an upstream).", "team", "model", "kind", "backend")
        self.team_rate_limited = self._counter(
            "gateway_team_rate_limited",
            "Requests refused with 429 by a key's quota, by team and limit (requests, tokens, tokens_per_day).",
            "team", "limit")
        self.quota_errors = self._counter(
            "gateway_quota_store_errors", "Failed Redis calls of the shared quotas (then enforced per process).")
    def _batch_metrics(self) -> None:
        """The Batch API's jobs (as the store holds them, the same from every gateway) and this gateway's runner."""
        r = self.registry
        self.batch_jobs = Gauge("gateway_batch_jobs", "Batch jobs in the store by status.", ["status"], registry=r)
        self.batch_queue = Gauge("gateway_batch_queue_lines",
                                 "Lines not run yet of the unfinished batch jobs in the store.", registry=r)
        self.batch_lines = self._counter("gateway_batch_lines",
                                         "Batch lines this gateway ran, by outcome (completed, failed).", "outcome")
        for outcome in ("completed", "failed"):
            self.batch_lines.labels(outcome)
        self.batch_tokens = self._counter("gateway_batch_tokens", "Tokens of the batch lines this gateway ran.",
                                          "model")
        self.batch_progress = Gauge("gateway_batch_last_progress_timestamp_seconds",
                                    "When this gateway's runner last wrote a batch line (Unix time).", registry=r)

    def exposition(self) -> bytes:
        """The text exposition of everything (blocking: Triton is scraped; run it in a thread)."""
        return generate_latest(self.exposed)


# Triton names that break Prometheus naming rules, renamed explicitly; the rest follow the rules below.
_RENAMES = {"nv_inference_pending_request_count": "nv_inference_pending_requests"}
_UNIT_SCALE = {"us": 1e-6, "ms": 1e-3, "ns": 1e-9}
_UNIT_RE = re.compile(r"_(us|ms|ns)(?=_|$)")


def _clean_name(name: str) -> tuple[str, float]:
    """Lint-clean name and value scale: time units become seconds (`_us` -> `_seconds`, value / 1e6), and the
    type is not part of the name (`_histogram`, `_summary` dropped)."""
    name = _RENAMES.get(name, name).replace("_histogram", "").replace("_summary", "")
    scale = 1.0
    m = _UNIT_RE.search(name)
    if m:
        scale = _UNIT_SCALE[m.group(1)]
        name = name[: m.start()] + "_seconds" + name[m.end() :]
    return name, scale


def translate_family(fam: Metric) -> Metric | None:
    """Re-express one parsed Triton family so `promtool check metrics` accepts it (see docs/gateway.md)."""
    name, scale = _clean_name(fam.name)
    doc = fam.documentation or name
    if fam.type == "counter":
        if name.endswith("_total"):
            name = name[: -len("_total")]
        out: Metric = CounterMetricFamily(name, doc)
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out.samples.append(s._replace(name=name + "_total", value=s.value * scale))
        return out
    if fam.type == "gauge":
        if name.endswith("_count"):
            name = name[: -len("_count")]
        out = GaugeMetricFamily(name, doc)
        out.samples.extend(s._replace(name=name, value=s.value * scale) for s in fam.samples)
        return out
    if fam.type in ("histogram", "summary"):
        out = (HistogramMetricFamily if fam.type == "histogram" else SummaryMetricFamily)(name, doc)
        for s in fam.samples:
            suffix = s.name[len(fam.name) :]
            labels = dict(s.labels)
            value = s.value
            if suffix == "_bucket" and "le" in labels and labels["le"] != "+Inf":
                labels["le"] = repr(float(labels["le"]) * scale)
            if suffix == "_sum" or (fam.type == "summary" and suffix == ""):
                value = value * scale
            out.samples.append(s._replace(name=name + suffix, labels=labels, value=value))
        return out
    return None  # untyped or info families: not merged


class TritonMetricsCollector:
    """Scrapes Triton's `/metrics` with a short timeout at each collection; Triton down yields nothing."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s

    def collect(self):
        up = GaugeMetricFamily("gateway_triton_metrics_up", "1 when Triton's metrics were scraped just now.")
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:  # noqa: S310 (config URL)
                text = resp.read().decode("utf-8", errors="replace")
            families = list(text_string_to_metric_families(text))
        except Exception as e:
            log.debug("Triton metrics not scraped: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        seen: set[str] = set()
        for fam in families:
            out = translate_family(fam)
            if out is None or out.name.startswith(("gateway_", "process_")) or out.name in seen:
                continue  # never let Triton's families collide with ours or with each other
            seen.add(out.name)
            yield out
