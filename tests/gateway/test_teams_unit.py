"""Teams (gateway/teams/): the header formatter, the bucket model, key files, estimates, and the app's auth,
quotas and usage over the fake backend. The same features against the real Redis, Triton and gateway processes:
test_teams_integration.py."""

from __future__ import annotations

import hashlib
import logging
import re

import pytest
from fastapi import Depends, Request
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gw_helpers import FakeBackend, free_port
from triton_embeddings.gateway.http.routes import check_api_key
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.teams import estimate
from triton_embeddings.gateway.teams.buckets import REQUESTS, RESERVE, TOKENS, Limits
from triton_embeddings.gateway.teams.headers import duration
from triton_embeddings.gateway.teams.keys import KeyFileError, KeyStore, describe_change, key_id, parse_keys
from triton_embeddings.gateway.teams.limiter import MemoryLimiter, RedisLimiter

M = "fake-model"
HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d{1,3})?)s)$|^(\d+)ms$")


def parse_duration(text: str) -> float:
    m = DURATION.match(text)
    assert m, text
    if m.group(4):
        return int(m.group(4)) / 1000
    return int(m.group(1) or 0) * 3600 + int(m.group(2) or 0) * 60 + float(m.group(3))


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


# ---- the header formatter ------------------------------------------------------------------------------


def test_duration_formats_as_openai_writes_them():
    assert [duration(s) for s in (0, 0.0001, 0.02, 0.999, 1, 1.5, 59.9994, 60, 360, 3723.25, 7200)] == [
        "0s", "1ms", "20ms", "999ms", "1s", "1.5s", "1m0s", "1m0s", "6m0s", "1h2m3.25s", "2h0m0s"]


@given(st.floats(min_value=0, max_value=10 * 86_400, allow_nan=False))
def test_duration_round_trips_rounded_up_to_the_millisecond(seconds):
    back = parse_duration(duration(seconds))
    assert seconds - 1e-9 <= back < seconds + 0.001 + 1e-9


# ---- the bucket model (MemoryLimiter runs buckets.step) ------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.integers(1, 120)), min_size=1, max_size=40))
async def test_admitted_tokens_never_exceed_the_bucket_plus_its_refill(ops):
    """Whatever the arrivals, what a key is admitted within any stretch of time is at most its limit plus what
    the elapsed time refilled; a refused step says how long to wait, and waiting that long admits it."""
    clock, limiter, limits = Clock(), None, Limits(requests_per_minute=10, tokens_per_minute=100)
    limiter = MemoryLimiter(clock)
    start, taken = clock.t, 0
    for gap, tokens in ops:
        clock.t += gap
        out = await limiter.step("k", limits, {REQUESTS: 1, TOKENS: tokens}, RESERVE)
        assert all(s.level <= s.capacity for s in out.snapshot.values())
        if out.refused is None:
            taken += tokens
            assert taken <= 100 + (clock.t - start) * 100 / 60 + 1e-6
        elif tokens <= 100:
            assert out.wait_s > 0
            clock.t += out.wait_s + 1e-6
            assert (await limiter.step("k", limits, {REQUESTS: 1, TOKENS: tokens}, RESERVE)).refused is None
            taken += tokens


async def test_a_refund_never_fills_a_bucket_past_its_limit_and_a_debt_is_paid_back_first():
    clock = Clock()
    limiter, limits = MemoryLimiter(clock), Limits(tokens_per_minute=60)
    out = await limiter.step("k", limits, {TOKENS: -50}, 2)
    assert out.snapshot[TOKENS].level == 60
    out = await limiter.step("k", limits, {TOKENS: 90}, 2)  # counted after the fact: a debt of 30
    assert out.snapshot[TOKENS].level == -30 and out.snapshot[TOKENS].remaining == 0
    refused = await limiter.step("k", limits, {TOKENS: 1}, RESERVE)
    assert refused.refused == TOKENS and refused.wait_s == pytest.approx(31)


# ---- key files -----------------------------------------------------------------------------------------


def test_key_entries_old_and_new_format():
    digest = key_id("sk-hidden")
    keys = parse_keys([("sk-legacy", "keys:1"), ("sk-a team=search rpm=60 tpm=1000 tpd=50000", "keys:2"),
                       (f"sha256:{digest} team=ads", "keys:3")], "default", Limits(requests_per_minute=5))
    assert keys[key_id("sk-legacy")].team == "default"
    assert keys[key_id("sk-legacy")].limits == Limits(requests_per_minute=5)
    assert keys[key_id("sk-a")].limits == Limits(60, 1000, 50000) and keys[key_id("sk-a")].team == "search"
    assert keys[digest].team == "ads" and key_id("sk-a") == hashlib.sha256(b"sk-a").hexdigest()
    for bad in ("sk-secret-1 team=", "sk-secret-1 rpm=ten", "sk-secret-1 color=blue", "sk-secret-1 team=a/b"):
        with pytest.raises(KeyFileError) as e:
            parse_keys([(bad, "keys:7")], "default", Limits())
        assert "keys:7" in str(e.value) and "sk-secret-1" not in str(e.value)
    with pytest.raises(KeyFileError, match="keys:2: this key is listed before"):
        parse_keys([("sk-b team=x", "keys:1"), ("sk-b team=y", "keys:2")], "default", Limits())
    assert len(parse_keys([("sk-b", "a"), ("sk-b", "b")], "default", Limits())) == 1


def test_change_is_described_by_team_only():
    old = parse_keys([("sk-1 team=a", "1"), ("sk-2 team=b", "2")], "default", Limits())
    new = parse_keys([("sk-2 team=b rpm=9", "1"), ("sk-3 team=c", "2"), ("sk-4 team=c", "3")], "default", Limits())
    assert describe_change(old, new) == "team c: 2 keys added; team a: 1 key revoked; team b: 1 key changed"
    assert describe_change(new, new) == "no change"


def test_key_store_reloads_a_changed_file_and_keeps_the_keys_when_it_breaks(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text("# team keys\nsk-first team=a\n")
    store = KeyStore(["sk-env"], path, "default", Limits())
    assert {k.team for k in store.keys.values()} == {"a", "default"} and not store.reload_if_changed()
    path.write_text("sk-first team=a\nsk-second team=b tpm=10\n")
    with caplog.at_level(logging.INFO, "gateway.teams"):
        assert store.reload_if_changed()
        assert store.get(key_id("sk-second")).team == "b"
        path.write_text("sk-first team=a\nsk-broken bogus\n")
        store.reload("SIGHUP")
    assert store.get(key_id("sk-second")) is not None, "a broken file keeps the keys in force"
    assert "API keys reloaded (file changed): team b: 1 key added; 3 keys in 3 teams" in caplog.text
    assert "API keys not reloaded (SIGHUP): keys:2" in caplog.text
    assert "sk-" not in caplog.text and key_id("sk-second") not in caplog.text


# ---- estimates -----------------------------------------------------------------------------------------


@given(st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=20), st.integers(0, 64))
def test_the_estimate_is_never_below_the_bound_and_truncation_caps_both(texts, cap):
    est = estimate.of_texts(texts, cap)
    assert est.lower <= est.estimate and est.estimate >= len(texts)
    if cap:
        assert est.estimate <= cap * len(texts) or est.estimate == len(texts)
    assert est.lower <= sum(len(t.split()) for t in texts)


def test_pairs_count_the_query_once_per_document():
    est = estimate.of_pairs("two words", ["one", "three more words"], 0)
    assert est.lower == 3 + 5 and est.estimate == 3 + 7  # max(words, ceil(chars / 4)) per pair: 12 and 25 chars


# ---- the app: auth, quotas, headers, usage -------------------------------------------------------------


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(reranker=True)


@pytest.fixture
def teams_client(make_client, backend):
    client = make_client(backend=backend, api_keys=["sk-search team=search rpm=3 tpm=200", "sk-ads team=ads tpm=10",
                                   "sk-legacy"])

    @client.app.get("/probe", dependencies=[Depends(check_api_key)])
    async def probe(request: Request):
        return {"key_id": request.state.key_id, "team": request.state.team}

    return client


def test_state_carries_the_keys_sha256_and_team(teams_client):
    assert teams_client.get("/probe", headers=bearer("sk-search")).json() == {
        "key_id": hashlib.sha256(b"sk-search").hexdigest(), "team": "search"}
    assert teams_client.get("/probe", headers=bearer("sk-legacy")).json()["team"] == "default"


def test_every_answer_to_a_limited_key_carries_the_six_headers(teams_client):
    h = bearer("sk-search")
    answers = [teams_client.post("/v1/embeddings", json={"model": M, "input": "one two three"}, headers=h),
               teams_client.get("/v1/models", headers=h),
               teams_client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=h),
               teams_client.post("/v1/embeddings", json={"model": M}, headers=h)]
    assert [r.status_code for r in answers] == [200, 200, 404, 400]
    for r in answers:
        assert all(name in r.headers for name in HEADERS), r.headers
    first = answers[0].headers
    assert first["x-ratelimit-limit-requests"] == "3" and first["x-ratelimit-remaining-requests"] == "2"
    assert first["x-ratelimit-remaining-tokens"] == str(200 - 5), "settled with the real count: 3 words + 2"
    assert 0 < parse_duration(first["x-ratelimit-reset-tokens"]) <= 5 * 60 / 200 + 0.001
    unauthorized = teams_client.get("/v1/models", headers=bearer("sk-wrong"))
    assert unauthorized.status_code == 401 and "x-ratelimit-limit-requests" not in unauthorized.headers
    assert "x-ratelimit-limit-requests" not in teams_client.get("/v1/models", headers=bearer("sk-legacy")).headers


def test_past_the_quota_429_with_retry_after_and_the_headers(teams_client):
    h = bearer("sk-search")
    for _ in range(3):
        assert teams_client.post("/v1/embeddings", json={"model": M, "input": "x"}, headers=h).status_code == 200
    r = teams_client.post("/v1/embeddings", json={"model": M, "input": "x"}, headers=h)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.json()["error"]["type"] == "requests" and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "requests per min (RPM): Limit 3" in r.json()["error"]["message"]
    wait_ms = int(r.headers["retry-after-ms"])
    assert 19_000 < wait_ms <= 20_000 and r.headers["retry-after"] == "20"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    other = teams_client.post("/v1/embeddings", json={"model": M, "input": "x"}, headers=bearer("sk-ads"))
    assert other.status_code == 200, "another key's quota is its own"
    metrics = teams_client.get("/metrics").text
    assert 'gateway_team_rate_limited_total{limit="requests",team="search"} 1.0' in metrics
    assert 'gateway_team_quota{limit="tokens",team="search"} 200.0' in metrics


def test_a_request_that_could_never_fit_is_a_400_and_rerank_counts_too(teams_client):
    h = bearer("sk-ads")
    r = teams_client.post("/v1/embeddings", json={"model": M, "input": ["a b c d e f", "g h i j k"]}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "tokens_exceed_quota", r.text
    assert "at least 11 tokens" in r.json()["error"]["message"] and "Retry-After" not in r.headers
    assert r.headers["x-ratelimit-remaining-tokens"] == "10", "a refused request takes nothing"
    ok = teams_client.post("/v1/rerank", json={"model": "fake-reranker", "query": "a", "documents": ["b"]}, headers=h)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-tokens"] == str(10 - 5)
    tei = teams_client.post("/rerank", json={"query": "a b c d e f", "texts": ["g"]}, headers=h)  # 7 > 5 left
    assert tei.status_code == 429 and tei.json()["error"]["type"] == "tokens"
    metrics = teams_client.get("/metrics").text
    assert 'gateway_team_tokens_total{backend="local",kind="rerank",model="fake-reranker",team="ads"} 5.0' in metrics


def test_a_failed_request_refunds_its_reserved_tokens(teams_client, backend):
    from triton_embeddings.gateway.backends.base import BackendUnavailable

    backend.fail = BackendUnavailable("down")
    r = teams_client.post("/v1/embeddings", json={"model": M, "input": "one two"}, headers=bearer("sk-search"))
    assert r.status_code == 503 and r.headers["x-ratelimit-remaining-tokens"] == "200"
    assert r.headers["x-ratelimit-remaining-requests"] == "2", "the request itself was made"


def test_abuse_affects_no_other_key_and_reaches_no_log_or_metric(teams_client, caplog):
    h = bearer("sk-search")
    before = teams_client.get("/v1/models", headers=h).headers["x-ratelimit-remaining-requests"]
    wrong = [f"sk-guess-{i:04d}" for i in range(200)]
    with caplog.at_level(logging.DEBUG):
        codes = {teams_client.get("/v1/models", headers=bearer(k)).status_code for k in wrong}
        in_url = teams_client.get("/v1/models?api_key=sk-search", headers=h)
        huge = teams_client.get("/v1/models", headers=bearer("sk-" + "x" * 100_000))
    assert codes == {401} and huge.status_code == 401 and in_url.status_code == 400
    assert in_url.json()["error"]["code"] == "api_key_in_url" and "sk-search" not in in_url.text
    assert teams_client.get("/v1/models", headers=h).headers["x-ratelimit-remaining-requests"] == before
    metrics = teams_client.get("/metrics").text
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("gateway", "uvicorn")))
    assert logged.count(" 401 ") == 201  # the access log ran; the test client's own log (httpx) is not ours
    for key in [*wrong, "sk-search"]:
        for form in (key, key_id(key)):
            assert form not in logged and form not in metrics
    assert "sk-" not in logged


def test_auth_off_counts_every_request_for_the_default_team(make_client):
    client = make_client(default_team="everyone")
    assert client.post("/v1/embeddings", json={"model": M, "input": "a b"}).status_code == 200
    metrics = client.get("/metrics").text
    assert 'gateway_team_requests_total{model="fake-model",status="200",team="everyone"} 1.0' in metrics
    assert 'gateway_team_tokens_total{backend="local",kind="embedding",model="fake-model",team="everyone"} 4.0' \
        in metrics


async def test_batch_jobs_are_charged_to_the_keys_quota_and_team():
    from triton_embeddings.gateway.settings import Settings
    from triton_embeddings.gateway.teams.quotas import Teams

    metrics = GatewayMetrics()
    teams = Teams(Settings(triton_metrics_url="", api_keys=["sk-batch team=etl tpm=600"]), metrics)
    assert await teams.charge(key_id("sk-batch"), 500, model=M) == 0.0
    wait = await teams.charge(key_id("sk-batch"), 160, model=M)
    assert wait == pytest.approx(60 / 600 * 60, rel=0.01), "a debt of 60 tokens at 10 tokens/s"
    assert await teams.charge(key_id("sk-revoked"), 100, model=M) == 0.0
    assert 'team="etl"} 660.0' in metrics.exposition().decode()
    await teams.close()


async def test_a_redis_that_does_not_answer_leaves_the_quotas_per_process(caplog):
    errors = []
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, retry_s=30,
                           on_error=lambda: errors.append(1))
    limits = Limits(requests_per_minute=1)
    first = await limiter.step("k", limits, {REQUESTS: 1}, RESERVE)
    second = await limiter.step("k", limits, {REQUESTS: 1}, RESERVE)
    assert first.refused is None and second.refused == REQUESTS and errors == [1]
    assert "quotas are enforced per process" in caplog.text
    await limiter.close()
