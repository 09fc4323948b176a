"""Per-model routing to an upstream API, judged against real processes: a second real gateway (over the
real Triton, with its own API key) acts as the upstream OpenAI-compatible API; no mocks, no internet."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gw_helpers import DEFAULT_MODEL, free_port, running_gateway

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
CLOUD = "text-embedding-3-small"  # also a default alias of the local model: the upstream route must win
LONG = " ".join(f"token{i} and some more filler words" for i in range(60))


def upstreams(url: str, **extra) -> str:
    config = {"base_url": url, "api_key_env": "TEAMCLOUD_KEY", "name": "teamcloud", "model": DEFAULT_MODEL,
              "dimension": 384, **extra}
    return json.dumps({CLOUD: config})


def samples(url: str, name: str) -> dict[tuple, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith(name)}


def value(url: str, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples(url, name).items() if n == name and labels.items() <= dict(ls).items())


@pytest.fixture(scope="module")
def upstream(triton, tmp_path_factory):
    """The 'cloud': a real gateway that demands its own key."""
    with running_gateway(tmp_path_factory.mktemp("upstream"), triton_grpc_url=triton.grpc_url,
                         triton_metrics_url="", api_keys=json.dumps([UPSTREAM_KEY]), max_inputs=8) as gw:
        yield gw


@pytest.fixture(scope="module")
def front(triton, upstream, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("TEAMCLOUD_KEY", UPSTREAM_KEY)
    with running_gateway(tmp_path_factory.mktemp("front"), triton_grpc_url=triton.grpc_url,
                         triton_metrics_url="", upstreams=upstreams(upstream.url + "/v1")) as gw:
        yield gw


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def test_models_list_upstream_models_as_such(front):
    cards = {m.id: m.owned_by for m in client(front).models.list().data}
    assert cards[CLOUD] == "teamcloud" and cards[DEFAULT_MODEL] == "triton-embeddings"
    assert client(front).models.retrieve(CLOUD).owned_by == "teamcloud"


def test_upstream_answers_pass_through_and_are_cached(front, upstream):
    texts = ["routing through one base URL", "the old index keeps its model", "ünïcödé ✓"]
    direct = openai.OpenAI(base_url=upstream.url + "/v1", api_key=UPSTREAM_KEY, max_retries=0)
    want = direct.embeddings.create(model=DEFAULT_MODEL, input=texts)
    before = value(upstream.url, "gateway_requests_total", route="/v1/embeddings", status="200")
    got = client(front).embeddings.create(model=CLOUD, input=texts)
    assert got.model == CLOUD and got.usage.total_tokens == want.usage.total_tokens
    for g, w in zip(got.data, want.data):
        assert np.allclose(g.embedding, w.embedding, atol=1e-6)
    assert value(upstream.url, "gateway_requests_total", route="/v1/embeddings", status="200") == before + 1
    billed = value(front.url, "gateway_upstream_tokens_total", backend="teamcloud", model=CLOUD)
    again = client(front).embeddings.create(model=CLOUD, input=texts, dimensions=64)
    assert value(upstream.url, "gateway_requests_total", route="/v1/embeddings", status="200") == before + 1
    assert value(front.url, "gateway_upstream_tokens_total", backend="teamcloud", model=CLOUD) == billed
    assert again.usage.total_tokens == want.usage.total_tokens and len(again.data[0].embedding) == 64
    assert value(front.url, "gateway_tokens_total", backend="teamcloud", model=CLOUD) >= 2 * want.usage.total_tokens
    assert value(front.url, "gateway_upstream_request_duration_seconds_count", backend="teamcloud") >= 1


def test_local_models_still_served_locally(front):
    res = client(front).embeddings.create(model=DEFAULT_MODEL, input=["served by the local Triton"])
    assert len(res.data[0].embedding) == 384
    assert value(front.url, "gateway_tokens_total", backend="local", model=DEFAULT_MODEL) > 0


def test_upstream_rejecting_the_input_is_a_400(front):
    with pytest.raises(openai.BadRequestError) as e:  # the upstream accepts at most 8 inputs
        client(front).embeddings.create(model=CLOUD, input=[f"text {i}" for i in range(9)])
    assert "upstream" in e.value.message and e.value.body["param"] == "input"


def test_dimensions_checked_against_the_configured_dimension(front):
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client(front).embeddings.create(model=CLOUD, input=["x"], dimensions=385)


@pytest.mark.parametrize("case", ["bad key", "down", "timeout", "not an API"])
def test_upstream_failures_are_openai_errors_without_secrets(triton, upstream, tmp_path, monkeypatch, case):
    url, extra = upstream.url + "/v1", {}
    monkeypatch.setenv("TEAMCLOUD_KEY", "sk-wrong-key-that-must-not-leak" if case == "bad key" else UPSTREAM_KEY)
    if case == "down":
        url = f"http://127.0.0.1:{free_port()}/v1"
    if case == "timeout":
        extra = {"timeout_s": 0.001}
    if case == "not an API":  # answers 404 to POST /nope/v1/embeddings
        url = upstream.url + "/nope/v1"
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="",
                         upstreams=upstreams(url, **extra)) as gw:
        r = httpx.post(gw.url + "/v1/embeddings", json={"model": CLOUD, "input": [f"fails {case}"]}, timeout=30)
        assert r.status_code == (504 if case == "timeout" else 503), r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
        ok = httpx.post(gw.url + "/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["local"]}, timeout=30)
        assert ok.status_code == 200, "the local models keep serving"
        kind = "timeout" if case == "timeout" else "unavailable"
        assert value(gw.url, "gateway_upstream_errors_total", backend="teamcloud", kind=kind) >= 1
        log = gw.log_text()
    for secret in ("sk-wrong-key-that-must-not-leak", UPSTREAM_KEY):
        assert secret not in r.text and secret not in log
    assert "Incorrect API key" not in r.text, "the upstream's own error text is not passed on"


def test_shadow_runs_after_the_answer_and_records_metrics(triton, upstream, tmp_path, monkeypatch):
    """share=1: every upstream request is shadowed to the local model. The upstream answers long texts from
    its cache (warmed first), the shadow embeds them on the local Triton (cache bypassed): the client's
    time stays far below the shadow's, measured side by side."""
    monkeypatch.setenv("TEAMCLOUD_KEY", UPSTREAM_KEY)
    texts = [f"{i} {LONG}" for i in range(48)]
    direct = openai.OpenAI(base_url=upstream.url + "/v1", api_key=UPSTREAM_KEY, max_retries=0)
    for start in range(0, len(texts), 8):
        direct.embeddings.create(model=DEFAULT_MODEL, input=texts[start:start + 8])  # warm the upstream cache
    shadow = {"model": DEFAULT_MODEL, "share": 1.0}
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="",
                         upstreams=upstreams(upstream.url + "/v1", shadow=shadow, max_batch_size=8)) as gw:
        t0 = time.perf_counter()
        res = client(gw).embeddings.create(model=CLOUD, input=texts)
        answered = time.perf_counter() - t0
        assert len(res.data) == len(texts)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not value(gw.url, "gateway_shadow_requests_total", outcome="ok"):
            time.sleep(0.1)
        assert value(gw.url, "gateway_shadow_requests_total", model=CLOUD, target=DEFAULT_MODEL, outcome="ok") == 1
        shadow_s = value(gw.url, "gateway_shadow_duration_seconds_sum", target=DEFAULT_MODEL)
        assert shadow_s > 2 * answered, (shadow_s, answered)
        # The shadow did real local work: Triton was called for 48 texts not in the front gateway's cache.
        assert value(gw.url, "gateway_triton_request_duration_seconds_count", model=DEFAULT_MODEL) >= 1


def test_shadow_to_an_unknown_model_is_counted_not_answered(triton, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("TEAMCLOUD_KEY", UPSTREAM_KEY)
    shadow = {"model": "no-such-local-model", "share": 1.0}
    with running_gateway(tmp_path, triton_grpc_url=triton.grpc_url, triton_metrics_url="",
                         upstreams=upstreams(upstream.url + "/v1", shadow=shadow)) as gw:
        assert client(gw).embeddings.create(model=CLOUD, input=["still answered"]).data
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not value(gw.url, "gateway_shadow_requests_total"):
            time.sleep(0.1)
        assert value(gw.url, "gateway_shadow_requests_total", outcome="model_not_found") == 1
