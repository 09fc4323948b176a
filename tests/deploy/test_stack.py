"""The deployment run for real on loopback: the embedded Triton, gateway processes, nginx with the shipped
config and Prometheus with the shipped scrape config and rules (both rendered by `deploy.render`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import httpx2
import openai
import pytest
import yaml

from ..conftest import DEFAULT_MODEL
from .stack import ROOT, gateway, nginx, prometheus, wait_until

pytestmark = pytest.mark.slow

DIMENSION = 384
GRAFANA_VARS = {"$__rate_interval": "1m", "${model:regex}": ".*", "$model": ".*", "$team": ".*"}
# Series Triton exports only when it runs on a GPU (its DCGM-based metrics); this stack runs on CPU.
GPU_ONLY = {
    "nv_gpu_utilization": "GPU metric: exported by Triton only with a GPU present",
    "nv_gpu_memory_used_bytes": "GPU metric: exported by Triton only with a GPU present",
    "nv_gpu_memory_total_bytes": "GPU metric: exported by Triton only with a GPU present",
}
# Series that exist only once a gateway forwarded a model to an upstream API (EMBEDDINGS_UPSTREAMS), and the
# recording rules built on them; this stack serves local models only.
UPSTREAM_ONLY = {
    "gateway_upstream_tokens_total": "counted only for models forwarded upstream",
    "gateway_upstream_request_duration_seconds_bucket": "observed only for models forwarded upstream",
    "gateway_upstream_errors_total": "counted only for models forwarded upstream",
    "gateway_shadow_requests_total": "counted only with shadow traffic configured",
    "gateway_shadow_duration_seconds_bucket": "observed only with shadow traffic configured",
    "backend_model:upstream_cost_usd_per_hour": "recorded from gateway_upstream_tokens_total",
    "backend:upstream_cost_per_1m_tokens_usd": "recorded from gateway_upstream_tokens_total",
    "team_model:upstream_cost_usd_per_hour": "recorded from gateway_team_tokens_total{backend!=\"local\"}",
}
# Series that exist only with keys that have quotas (gateway/teams/) or once a batch job ran; this stack has neither.
QUOTA_ONLY = {
    "gateway_team_quota": "exposed only for keys with rpm=/tpm=/tpd= quotas",
    "gateway_team_rate_limited_total": "counted only when a key's quota refused a request",
    "gateway_batch_tokens_total": "counted (by model) once a batch line ran; this stack runs no batch job",
}


def embed_body(text: str) -> dict:
    return {"model": DEFAULT_MODEL, "input": [text]}


# --- PromQL metric names --------------------------------------------------------------------------------

_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords, label
    matchers, strings, durations or grouping labels."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(_GROUPING, " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if m.group(0) in _KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


def test_metric_names_extraction():
    expr = ('sum by (le, model) (rate(gateway_request_duration_seconds_bucket{model=~"a|b"}[5m])) / '
            'on(instance) group_left(gpu) max without (x) (nv_gpu_memory_used_bytes) > 95e9 '
            'or absent(up{job="triton"}) unless count(nv_inference_count offset 5m)')
    assert metric_names(expr) == {"gateway_request_duration_seconds_bucket", "nv_gpu_memory_used_bytes", "up",
                                  "nv_inference_count"}


def grafana_exprs() -> list[str]:
    dash = json.loads((ROOT / "monitoring/grafana/dashboards/embeddings.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]
    out = []
    for e in exprs:
        for var, value in GRAFANA_VARS.items():
            e = e.replace(var, value)
        assert "$" not in e, f"unsubstituted Grafana variable in {e}"
        out.append(e)
    return out


def alert_exprs() -> list[str]:
    groups = yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def recording_rules() -> dict[str, str]:
    """Recorded name -> expression, from monitoring/cost.yml (a name may be recorded by several rules)."""
    groups = yaml.safe_load((ROOT / "monitoring/cost.yml").read_text())["groups"]
    rules: dict[str, str] = {}
    for r in (r for g in groups for r in g["rules"]):
        rules[r["record"]] = f"{rules[r['record']]} or {r['expr']}" if r["record"] in rules else r["expr"]
    return rules


def adapter_queries() -> list[str]:
    """prometheus-adapter's metricsQuery with its template filled as the adapter fills it for one pod."""
    values = yaml.safe_load((ROOT / "deploy/kubernetes/prometheus-adapter/values.yaml").read_text())
    return [r["metricsQuery"].replace("<<.LabelMatchers>>", 'job="triton"').replace("<<.GroupBy>>", "instance")
            for r in values["rules"]["custom"]]


# --- the stack ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(triton, tmp_path_factory):
    """Two gateways behind nginx, plus a third with a 1 ms Triton deadline (so Triton-error series exist),
    all scraped by Prometheus together with Triton."""
    logdir = tmp_path_factory.mktemp("deploy-stack")
    with contextlib.ExitStack() as es:
        g1 = es.enter_context(gateway(triton, logdir))
        g2 = es.enter_context(gateway(triton, logdir))
        impatient = es.enter_context(gateway(triton, logdir, triton_timeout_s="0.001"))
        proxy = es.enter_context(nginx([g1.address, g2.address]))
        prom = es.enter_context(prometheus(
            {"triton": [f"127.0.0.1:{triton.metrics_port}"],
             "gateway": [g1.address, g2.address, impatient.address]},
            logdir / "prometheus",
        ))
        yield SimpleNamespace(gateways=[g1, g2], impatient=impatient, nginx=proxy, prometheus=prom,
                              triton=triton)


@pytest.fixture(scope="module")
def traffic(stack):
    """Real requests through nginx (successes and a client error) and to the impatient gateway (504s)."""
    with httpx.Client(base_url=stack.nginx.url, timeout=30) as client:
        for i in range(20):
            r = client.post("/v1/embeddings", json=embed_body(f"scrape test sentence number {i}"))
            assert r.status_code == 200, r.text
        assert client.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": [""]}).status_code == 400
    with httpx.Client(base_url=stack.impatient.url, timeout=30) as client:
        for i in range(3):
            assert client.post("/v1/embeddings", json=embed_body(f"too slow {i}")).status_code == 504
    return stack


def keep_counting(stack) -> None:
    """One more request: rates (and the cost rules over them) need counters that move while scraped; the
    traffic fixture's requests may all land before Prometheus's first scrape of the new series."""
    r = httpx.post(stack.nginx.url + "/v1/embeddings", json=embed_body("keep the counters moving"), timeout=30)
    assert r.status_code == 200, r.text


def test_prometheus_scrapes_the_stack(traffic):
    prom = traffic.prometheus

    def scraped() -> bool:
        requests = prom.value('sum(gateway_requests_total{job="gateway", route="/v1/embeddings", status="200"})')
        inferences = prom.value('sum(nv_inference_count{job="triton", model=~".+_encoder"})')
        return bool(requests) and bool(inferences) and requests >= 20
    wait_until(scraped, 30, "gateway and Triton counters in Prometheus")

    def targets() -> dict:
        return {(t["labels"]["job"], t["scrapeUrl"]): t["health"] for t in prom.api("targets")["activeTargets"]}
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: set(targets().values()) == {"up"}, 10, "every target up")
    assert sorted(job for job, _ in targets()) == ["gateway"] * 3 + ["prometheus", "triton"]
    assert set(targets().values()) == {"up"}, targets()
    assert prom.value('sum(nv_inference_request_success{job="triton"})') > 0
    # The gateways' merged copy of Triton's metrics is dropped at scrape: Triton is counted once.
    assert prom.query('count({job="gateway", __name__=~"nv_.*"})') == []
    assert prom.value('sum(gateway_triton_errors_total{kind="timeout"})') >= 3


def test_every_dashboard_and_alert_metric_appears_in_a_real_scrape(traffic):
    prom = traffic.prometheus
    recorded = recording_rules()
    exprs = grafana_exprs() + alert_exprs() + adapter_queries() + list(recorded.values())
    used = set().union(*(metric_names(e) for e in exprs))
    assert set(GPU_ONLY) <= used, "GPU-only allow-list names a metric nothing uses"
    assert set(UPSTREAM_ONLY) <= used, "upstream-only allow-list names a metric nothing uses"
    assert set(QUOTA_ONLY) <= used, "quota-only allow-list names a metric nothing uses"

    def missing() -> set[str]:
        keep_counting(traffic)
        return used - set(prom.api("label/__name__/values")) - set(GPU_ONLY) - set(UPSTREAM_ONLY) - set(QUOTA_ONLY)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not missing(), 20, "metric names")
    assert missing() == set(), f"used by the dashboard/alerts but never scraped: {sorted(missing())}"


def test_dashboard_and_adapter_queries_return_data(traffic):
    """Every panel query parses in the real Prometheus, and each one not GPU-only shows data here."""
    prom = traffic.prometheus
    queries = grafana_exprs() + adapter_queries()
    for expr in queries:
        prom.query(expr)  # raises on a PromQL error
    # This stack serves no reranker: rerank panels are checked by tests/gateway/test_rerank_gateway.py.
    rerank = [e for e in queries if 'kind="rerank"' in e]
    assert rerank, "the dashboard has a rerank panel"
    absent_here = set(GPU_ONLY) | set(UPSTREAM_ONLY) | set(QUOTA_ONLY)
    expected = [e for e in queries if not metric_names(e) & absent_here and e not in rerank]

    def empty() -> list[str]:
        keep_counting(traffic)
        return [e for e in expected if not prom.query(e)]
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not empty(), 20, "dashboard data")
    assert empty() == []
    queue_ms = adapter_queries()[0]
    assert float(prom.query(queue_ms)[0]["value"][1]) >= 0


def test_alert_rules_load_and_stay_quiet_on_a_healthy_stack(traffic):
    quiet = ("TritonDown", "EmbeddingsGatewayDown", "TritonModelNotReady", "EmbeddingsCacheErrors")

    def loaded() -> dict:
        return {r["name"]: r for g in traffic.prometheus.api("rules")["groups"] for r in g["rules"]}

    def settled() -> bool:  # health is "unknown" until evaluated; TritonDown is pending until Triton's first scrape
        rules = loaded()
        return all(r["health"] == "ok" for r in rules.values()) and all(rules[n]["state"] == "inactive" for n in quiet)
    with contextlib.suppress(TimeoutError):
        wait_until(settled, 15, "rule evaluation")
    rules = loaded()
    assert len(rules) == len(alert_exprs()) + len(recording_rules()), sorted(rules)
    assert all(r["health"] == "ok" for r in rules.values()), rules
    for name in quiet:
        assert rules[name]["state"] == "inactive", (name, rules[name])


# --- nginx in front of the gateways --------------------------------------------------------------------


def test_nginx_passes_and_generates_request_ids(stack):
    with httpx.Client(base_url=stack.nginx.url, timeout=30) as client:
        mine = client.post("/v1/embeddings", json=embed_body("request id"), headers={"X-Request-ID": "deploy-abc"})
        generated = client.get("/v1/models")
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "deploy-abc"
    rid = generated.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), "nginx's $request_id, passed to the gateway and returned"
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: rid in {e["request_id"] for e in stack.nginx.access_entries()}, 5, "access log")
    logged = {e["request_id"]: e for e in stack.nginx.access_entries()}
    assert logged["deploy-abc"]["status"] == 200 and logged[rid]["uri"] == "/v1/models"


def test_nginx_errors_keep_openai_shape(stack):
    with httpx.Client(base_url=stack.nginx.url, timeout=30) as client:
        too_big = client.post("/v1/embeddings", content=b"x" * (9 * 1024 * 1024),
                              headers={"Content-Type": "application/json"})
        metrics = client.get("/metrics")
        after = client.post("/v1/embeddings", json=embed_body("still fine"))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert metrics.status_code == 404 and metrics.json()["error"]["type"] == "invalid_request_error"
    assert after.status_code == 200 and len(after.json()["data"][0]["embedding"]) == DIMENSION


def test_nginx_tls_and_per_key_rate_limit(stack):
    g1, g2 = stack.gateways
    with nginx([g1.address, g2.address], tls=True, rate_limit="1r/s") as proxy:
        crt = proxy.conf.parent / "tls.crt"
        with httpx.Client(base_url=f"https://127.0.0.1:{proxy.tls_port}", verify=str(crt), timeout=10) as tls:
            r = tls.post("/v1/embeddings", json=embed_body("over TLS"))
            assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == DIMENSION
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            noisy = [client.get("/health", headers={"Authorization": "Bearer noisy"}) for _ in range(130)]
            other = client.get("/health", headers={"Authorization": "Bearer quiet"})
    limited = [r for r in noisy if r.status_code == 429]
    assert limited and all(r.status_code in (200, 429) for r in noisy)
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded" and limited[0].headers["retry-after"]
    assert other.status_code == 200, "the limit is per key"


# --- failover -------------------------------------------------------------------------------------------
# Each failover test runs FAILOVER_ROUNDS times (default 1): `FAILOVER_ROUNDS=20 pytest -k failover` loops it.

ROUNDS = range(int(os.environ.get("FAILOVER_ROUNDS", "1")))


@dataclass
class Result:
    index: int
    started: float = 0.0
    error: str | None = None


def run_load(call, on_warm, *, warm: int = 60, after_s: float = 3.0, workers: int = 8, cap_s: float = 180.0):
    """`call(i)` from `workers` threads (it returns an error text or None). After `warm` calls have finished,
    `on_warm()` runs once (it returns a time); calls keep going until `after_s` past that time."""
    results: list[Result] = []
    lock = threading.Lock()
    marks: list[float] = []
    t0 = time.monotonic()

    def worker() -> None:
        while time.monotonic() - t0 < cap_s and not (marks and time.monotonic() > marks[0] + after_s):
            with lock:
                res = Result(len(results), time.monotonic())
                results.append(res)
            try:
                res.error = call(res.index)
            except Exception as e:  # noqa: BLE001 - every failure is reported, whatever its type
                res.error = repr(e)
            with lock:
                if len(results) >= warm and not marks:
                    marks.append(on_warm())

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(cap_s + 60)
    assert marks, "the load ended before the event"
    return results, marks[0]


def served_by(proxy, prefix: str, expected: int) -> dict[str, list[str]]:
    """Request id -> upstream addresses nginx tried, from its access log (last entry per id)."""
    def entries() -> dict[str, list[str]]:
        return {e["request_id"]: e["upstream_addr"].split(", ") for e in proxy.access_entries()
                if e["request_id"].startswith(prefix)}
    with contextlib.suppress(TimeoutError):  # nginx logs a request just after sending its response
        wait_until(lambda: len(entries()) >= expected, 5, "access log")
    return entries()


class ReadyWatch(threading.Thread):
    """Polls a gateway's /ready: when it first answered 503, and when its port first refused connections."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.not_ready, self.refused = url, None, None

    def run(self) -> None:
        while self.refused is None:
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 503 and self.not_ready is None:
                    self.not_ready = time.monotonic()
            except httpx.ConnectError:
                self.refused = time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.02)


def check_embedding(r: httpx.Response) -> str | None:
    if r.status_code != 200:
        return f"{r.status_code}: {r.text[:200]}"
    return None if len(r.json()["data"][0]["embedding"]) == DIMENSION else "bad embedding"


@pytest.mark.parametrize("round_", ROUNDS)
def test_failover_graceful_stop_fails_nothing_without_retries(triton, tmp_path, round_):
    """SIGTERM one of two gateways behind nginx under load: readiness goes false first, the listener closes
    after the shutdown delay, in-flight requests finish, and a client without retries sees no failure."""
    # A delay long enough for a /ready poll on a loaded 2-core machine to land inside it.
    drain = {"shutdown_delay_s": "3", "drain_timeout_s": "30"}
    with gateway(triton, tmp_path, **drain) as a, gateway(triton, tmp_path, **drain) as b, \
            nginx([a.address, b.address]) as proxy, contextlib.ExitStack() as clients:
        watch = ReadyWatch(a.url)
        # One client per thread: a pool shared by threads once failed a read with EBADF inside the client.
        local = threading.local()

        def call(i: int) -> str | None:
            if not hasattr(local, "client"):
                local.client = clients.enter_context(httpx.Client(
                    base_url=proxy.url, timeout=60, transport=httpx.HTTPTransport(retries=0)))
            return check_embedding(local.client.post("/v1/embeddings", json=embed_body(f"graceful {round_} {i}"),
                                                     headers={"X-Request-ID": f"graceful-{i}"}))

        def stop_a() -> float:
            a.proc.send_signal(signal.SIGTERM)
            watch.start()
            return time.monotonic()

        results, termed = run_load(call, stop_a, after_s=6.0)
        assert a.proc.wait(30) in (0, -signal.SIGTERM)
        watch.join(5)
        failures = [(r.index, r.error) for r in results if r.error]
        assert failures == [], f"{len(failures)} of {len(results)} failed: {failures[:5]}"
        assert watch.not_ready is not None and watch.refused is not None
        assert watch.not_ready < watch.refused, "readiness went false before the listener closed"
        served = served_by(proxy, "graceful-", len(results))
        late = [r for r in results if r.started > watch.refused + 0.1]
        assert late and all(served[f"graceful-{r.index}"][-1] == b.address for r in late)
        assert any(tried[-1] == a.address for tried in served.values()), "both replicas were in rotation"
        print(f"graceful stop: {len(results)} requests, 0 failed, {len(late)} after the listener closed; "
              f"not ready {watch.not_ready - termed:.2f}s and closed {watch.refused - termed:.2f}s after SIGTERM")


class CountingTransport(httpx2.HTTPTransport):
    """Counts each attempt and each transport failure (connecting, sending, or reading the body)."""

    def __init__(self):
        super().__init__()
        self.attempts, self.failures, self.statuses = 0, [], []

    def handle_request(self, request):
        self.attempts += 1
        try:
            response = super().handle_request(request)
        except httpx2.TransportError as e:
            self.failures.append(repr(e))
            raise
        self.statuses.append(response.status_code)
        response.stream = _CountedStream(response.stream, self.failures)
        return response


class _CountedStream(httpx2.SyncByteStream):
    def __init__(self, inner, failures: list[str]):
        self.inner, self.failures = inner, failures

    def __iter__(self):
        try:
            yield from self.inner
        except httpx2.TransportError as e:
            self.failures.append(repr(e))
            raise

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("round_", ROUNDS)
def test_failover_crash_fails_no_call_of_a_retrying_openai_client(triton, tmp_path, round_):
    """SIGKILL one of two gateways behind nginx under load. The official openai client with its default
    retries (2) sees no failed call; raw transport failures and 5xx answers are counted and printed."""
    with gateway(triton, tmp_path) as a, gateway(triton, tmp_path) as b, nginx([a.address, b.address]) as proxy:
        transport = CountingTransport()
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", timeout=60,
                               http_client=httpx2.Client(transport=transport))
        assert client.max_retries == 2, "the openai client's default"

        def call(i: int) -> str | None:
            out = client.embeddings.create(model=DEFAULT_MODEL, input=[f"crash {round_} {i}"],
                                           extra_headers={"X-Request-ID": f"crash-{i}"})
            return None if len(out.data[0].embedding) == DIMENSION else "bad embedding"

        def kill_a() -> float:
            a.proc.send_signal(signal.SIGKILL)
            return time.monotonic()

        results, killed = run_load(call, kill_a, after_s=3.0)
        assert a.proc.wait(5) == -signal.SIGKILL
        failures = [(r.index, r.error) for r in results if r.error]
        assert failures == [], f"{len(failures)} of {len(results)} calls failed: {failures[:5]}"
        served = served_by(proxy, "crash-", len(results))
        late = [r for r in results if r.started > killed + 0.1]
        assert late and all(served[f"crash-{r.index}"][-1] == b.address for r in late), "the survivor serves"
        assert any(tried[-1] == a.address for tried in served.values()), "both replicas were in rotation"
        errors_5xx = sum(1 for s in transport.statuses if s >= 500)
        print(f"crash: {len(results)} calls, 0 failed; {transport.attempts} attempts, "
              f"{len(transport.failures)} raw transport failures {transport.failures[:3]}, {errors_5xx} 5xx answers, "
              f"{sum(len(t) > 1 for t in served.values())} requests retried by nginx")

        # With no replica left, nginx answers by itself, still in OpenAI's error shape.
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(5)
        down = httpx.post(f"{proxy.url}/v1/embeddings", json=embed_body("nobody home"), timeout=30)
        assert down.status_code == 503 and down.json()["error"]["code"] == "service_unavailable"
        assert down.headers["retry-after"] == "1"


def test_stack_helpers_point_at_this_checkout():
    assert (ROOT / "nginx.conf").exists() and Path(__file__).is_relative_to(ROOT)
