"""Teams against the real things: redis-server holding the quotas of two gateway processes over the real Triton,
the official openai client's retries, the key file reloaded on change and on SIGHUP, and every log line and the
whole `/metrics` of both gateways searched for every key, in clear and as its sha256."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gw_helpers import DEFAULT_MODEL, GatewayProcess, redis_process
from triton_embeddings.gateway.teams.buckets import ADJUST, PEEK, RESERVE, Limits, step
from triton_embeddings.gateway.teams.keys import key_id
from triton_embeddings.gateway.teams.limiter import STEP_LUA, specs_of

SIX = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
       "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
TPM = "tpm=1000000"  # every key has both per-minute limits, so every answer carries all six headers
KEYS = {"shared": "sk-int-shared-0001", "retry": "sk-int-retry-0002", "burst": "sk-int-burst-0003",
        "revoked": "sk-int-revoked-0004", "legacy": "sk-int-legacy-0005", "added": "sk-int-added-0006"}
KEY_FILE = f"""# team keys (tests/gateway/test_teams_integration.py)
{KEYS["shared"]} team=search rpm=4 {TPM}
{KEYS["retry"]} team=search rpm=60 {TPM}
{KEYS["burst"]} team=ads rpm=30 {TPM}
{KEYS["revoked"]} team=old
{KEYS["legacy"]}
"""
WRONG = [f"sk-int-wrong-{i:04d}" for i in range(100)]
TEXT = "the same text each time: served from the cache after the first"


def _post(url: str, key: str, text: str = TEXT) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json={"model": DEFAULT_MODEL, "input": text},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="module")
def redis_srv(redis_binary, tmp_path_factory):
    with redis_process(redis_binary, tmp_path_factory.mktemp("teams_redis")) as server:
        yield server


@pytest.fixture(scope="module")
def pair(triton, redis_srv, tmp_path_factory):
    """Two gateways sharing the quotas in Redis; the first re-reads the key file when it changes, the second
    only on SIGHUP."""
    d = tmp_path_factory.mktemp("teams")
    (d / "keys").write_text(KEY_FILE)
    common = dict(triton_grpc_url=triton.grpc_url, triton_metrics_url=triton.metrics_url, api_keys_file=d / "keys",
                  quota_store="redis", redis_url=f"redis://127.0.0.1:{redis_srv[1]}/0", log_level="debug",
                  shutdown_delay_s=0)
    gws = [GatewayProcess(d / "g1.log", api_keys_reload_s=0.2, **common),
           GatewayProcess(d / "g2.log", api_keys_reload_s=0, **common)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(GatewayProcess.start, gws))
    try:
        yield d / "keys", gws
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(GatewayProcess.stop, gws))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([PEEK, RESERVE, ADJUST]), st.floats(0, 20_000), st.integers(-50, 150)),
                min_size=1, max_size=15))
def test_the_lua_step_is_the_python_step(redis_srv, ops):
    """The script Redis runs and the model the in-process limiter runs agree, step by step, on Redis' own state."""
    r = redis_srv[2]
    script, limits = r.register_script(STEP_LUA), Limits(10, 100, 1000)
    r.delete(*[f"prop:{n}" for n in limits.buckets()])
    stored: list = [None, None, None]
    now = 1_000_000.0
    for mode, gap, tokens in ops:
        now += gap
        names, specs = specs_of(limits, {"requests": 1, "tokens": tokens, "tokens_per_day": tokens})
        refused, wait, levels = step(stored, now, specs, mode)
        raw = script(keys=[f"prop:{n}" for n in names], args=[mode, now] + [v for s in specs for v in s])
        assert (int(raw[0]), float(raw[1])) == (refused, pytest.approx(wait))
        assert [float(v) for v in raw[2:]] == pytest.approx(levels)
        if mode != PEEK and not refused:
            stored = [(level, now) for level in levels]


def test_two_gateways_share_one_quota_through_redis(pair, redis_srv):
    _, (g1, g2) = pair
    redis_srv[2].flushdb()  # every quota full (a repeated run of this test)
    t0 = time.monotonic()
    answers = [_post((g1, g2)[i % 2].url, KEYS["shared"]) for i in range(6)]
    elapsed = time.monotonic() - t0
    assert elapsed < 15, "rpm=4 refills one request per 15 s: the test needs to finish before"
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429, 429], [r.text for r in answers]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["3", "2", "1", "0", "0", "0"]
    for r in answers:
        assert all(h in r.headers for h in SIX)
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and refused.json()["error"]["type"] == "requests"
    assert 15 - elapsed - 1 <= int(refused.headers["retry-after-ms"]) / 1000 <= 15
    stored = [k.decode() for k in redis_srv[2].keys("quota:*")]
    assert any(key_id(KEYS["shared"]) in k for k in stored) and not any("sk-int" in k for k in stored)


class Recorder:
    """httpx event hooks: when each request left and what each response said (status, retry-after-ms)."""

    def __init__(self):
        self.events: list[tuple[str, float, int | None, str | None]] = []

    def request(self, request):
        self.events.append(("request", time.monotonic(), None, None))

    def response(self, response):
        self.events.append(("response", time.monotonic(), response.status_code,
                            response.headers.get("retry-after-ms")))
        assert all(h in response.headers for h in SIX), response.headers


def _client(url: str, key: str, recorder: Recorder, **kw) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(event_hooks={"request": [recorder.request], "response": [recorder.response]})
    return openai.OpenAI(base_url=url + "/v1", api_key=key, http_client=http, **kw)


def test_the_openai_client_waits_as_retry_after_says(pair, redis_srv):
    _, (g1, g2) = pair
    redis_srv[2].flushdb()
    with ThreadPoolExecutor(8) as pool:  # more than the minute's 60 requests, through the other gateway
        assert 429 in {r.status_code for r in pool.map(lambda _: _post(g2.url, KEYS["retry"]), range(80))}
    for _ in range(50):  # calls until one is refused first (a call may find the one request refilled since)
        recorder = Recorder()
        res = _client(g1.url, KEYS["retry"], recorder, max_retries=2).embeddings.create(model=DEFAULT_MODEL,
                                                                                        input=TEXT)
        assert len(res.data[0].embedding) == 384
        if len(recorder.events) > 2:
            break
    kinds = [(e[0], e[2]) for e in recorder.events]
    assert kinds[:2] == [("request", None), ("response", 429)] and kinds[-1] == ("response", 200), kinds
    for (_, at, status, wait_ms), (kind, sent, _, _) in zip(recorder.events[1::2], recorder.events[2::2]):
        assert status == 429 and kind == "request"
        assert sent - at >= int(wait_ms) / 1000 - 0.005, "the retry left before Retry-After said"
        assert int(wait_ms) <= 1000, "rpm=60 refills one request a second"


def test_a_burst_over_quota_is_answered_or_refused_with_429_and_nothing_else(pair, redis_srv):
    _, (g1, g2) = pair
    redis_srv[2].flushdb()
    recorder = Recorder()
    clients = [_client(g.url, KEYS["burst"], recorder) for g in (g1, g2)]  # the default 2 retries

    def call(i: int) -> str:
        try:
            clients[i % 2].embeddings.create(model=DEFAULT_MODEL, input=TEXT)
            return "ok"
        except openai.RateLimitError as e:
            assert e.status_code == 429 and e.code == "rate_limit_exceeded"
            return "429"

    t0 = time.monotonic()
    with ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(call, range(40)))
    refilled = (time.monotonic() - t0) / 2  # rpm=30: one request every 2 s
    statuses = [e[2] for e in recorder.events if e[0] == "response"]
    assert set(statuses) == {200, 429} and statuses.count(200) == outcomes.count("ok"), statuses
    assert set(outcomes) <= {"ok", "429"} and 30 <= outcomes.count("ok") <= 30 + refilled + 1, outcomes


def _works(gw: GatewayProcess, key: str) -> int:
    return httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10).status_code


def _until(what, expected, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while (got := what()) != expected:
        assert time.monotonic() < deadline, f"still {got}, not {expected}"
        time.sleep(0.1)


def test_the_key_file_is_reloaded_on_change_and_on_sighup(pair):
    path, (g1, g2) = pair
    assert (_works(g1, KEYS["revoked"]), _works(g1, KEYS["added"])) == (200, 401)
    tmp = path.with_suffix(".new")
    tmp.write_text(KEY_FILE.replace(f"{KEYS['revoked']} team=old\n", "") + f"{KEYS['added']} team=new rpm=5\n")
    os.replace(tmp, path)  # as a mounted secret is updated: a new file in its place
    _until(lambda: (_works(g1, KEYS["revoked"]), _works(g1, KEYS["added"])), (401, 200))
    assert (_works(g2, KEYS["revoked"]), _works(g2, KEYS["added"])) == (200, 401), "g2 reloads on SIGHUP only"
    os.kill(g2.proc.pid, signal.SIGHUP)
    _until(lambda: (_works(g2, KEYS["revoked"]), _works(g2, KEYS["added"])), (401, 200))
    assert g2.proc.poll() is None, "SIGHUP reloads, it does not stop the gateway"
    change = "team new: 1 key added; team old: 1 key revoked; 5 keys in 4 teams"
    assert f"API keys reloaded (file changed): {change}" in g1.log_text()
    assert f"API keys reloaded (SIGHUP): {change}" in g2.log_text()
    path.write_text(KEY_FILE)  # back as it was, for the tests after (and a repeated run of this one)
    os.kill(g2.proc.pid, signal.SIGHUP)
    for gw in (g1, g2):
        _until(lambda gw=gw: _works(gw, KEYS["revoked"]), 200)


def test_abuse_affects_no_key_and_no_key_reaches_a_log_or_metric(pair):
    """Run last in this module: it searches what every test before it logged too."""
    _, gws = pair
    legacy = {"authorization": f"Bearer {KEYS['legacy']}"}
    for gw in gws:
        assert _post(gw.url, KEYS["legacy"]).status_code == 200
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            assert {c.get("/v1/models", headers={"authorization": f"Bearer {k}"}).status_code for k in WRONG} == {401}
            assert c.get(f"/v1/models?api_key={KEYS['legacy']}", headers=legacy).status_code == 400
            assert c.get("/v1/models", headers={"authorization": "Bearer " + "k" * 200_000}).status_code == 401
            assert c.get("/v1/models", headers=legacy).status_code == 200, "no lockout of the client's address"
    texts = [gw.log_text() for gw in gws] + [httpx.get(gw.url + "/metrics", timeout=10).text for gw in gws]
    assert all(f'gateway_team_requests_total{{model="{DEFAULT_MODEL}",status="200",team="default"}}' in t
               for t in texts[2:])
    for key in [*KEYS.values(), *WRONG]:
        for form in (key, key_id(key)):
            assert not any(form in t for t in texts), f"{form[:12]}... found in a log or /metrics"
