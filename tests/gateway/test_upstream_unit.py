"""Units of upstream routing: config validation, usage split, answer decoding, grouping, routing, shadow sampling.
The real-process tests are in test_gateway_upstreams.py."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from pydantic import ValidationError

from tests.gw_helpers import FakeBackend
from triton_embeddings.gateway.backends.routing import RoutedBackend
from triton_embeddings.gateway.backends.upstream import UpstreamBackend, decode_vectors, make_upstreams, split_tokens
from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.pipeline.shadow import Shadow
from triton_embeddings.gateway.settings import Settings, UpstreamConfig


def test_config_validation_and_key_sources(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="local"):
        UpstreamConfig(base_url="http://x/v1", name="local")
    with pytest.raises(ValidationError):
        UpstreamConfig(base_url="http://x/v1", shadow={"model": "m", "share": 1.5})
    with pytest.raises(ValidationError):
        UpstreamConfig(base_url="http://x/v1", api_key_var="typo")  # unknown fields are refused
    assert UpstreamConfig(base_url="https://api.openai.com/v1").backend_name == "api.openai.com"
    monkeypatch.delenv("NO_KEY_HERE", raising=False)
    with pytest.raises(ValueError, match="NO_KEY_HERE"):
        UpstreamConfig(base_url="http://x/v1", api_key_env="NO_KEY_HERE").api_key()
    (tmp_path / "key").write_text("sk-file\n")
    assert UpstreamConfig(base_url="http://x/v1", api_key_file=tmp_path / "key").api_key() == "sk-file"


def test_settings_read_upstreams_from_json(monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_UPSTREAMS", '{"a": {"base_url": "http://x/v1", "name": "cloud"}}')
    assert Settings().upstreams["a"].backend_name == "cloud"


@pytest.mark.parametrize("total", [0, 1, 7, 100, 1234])
def test_split_tokens_sums_exactly(total):
    texts = ["a", "bb bb", "ccc ccc ccc", "é"]
    counts = split_tokens(total, texts)
    assert counts.sum() == total and (counts >= 0).all()
    if total >= 100:
        assert counts[2] > counts[0]


def test_decode_vectors_base64_floats_order_and_count():
    v = np.arange(6, dtype="<f4").reshape(2, 3)
    body = {"data": [{"index": 1, "embedding": base64.b64encode(v[1].tobytes()).decode()},
                     {"index": 0, "embedding": v[0].tolist()}]}
    assert (decode_vectors(body, 2) == v).all()
    with pytest.raises(ValueError, match="2 embeddings for 3"):
        decode_vectors(body, 3)


def test_make_upstreams_groups_by_name_and_refuses_mixed_keys(monkeypatch):
    metrics = GatewayMetrics()
    monkeypatch.setenv("K1", "one")
    monkeypatch.setenv("K2", "two")
    same = {m: UpstreamConfig(base_url="http://x/v1", api_key_env="K1", name="cloud") for m in ("a", "b")}
    backends = make_upstreams(same, metrics)
    assert [(b.name, sorted(b.models)) for b in backends] == [("cloud", ["a", "b"])]
    assert backends[0].models["a"].backend == "cloud"
    mixed = {**same, "c": UpstreamConfig(base_url="http://x/v1", api_key_env="K2", name="cloud")}
    with pytest.raises(ValueError, match="cloud"):
        make_upstreams(mixed, metrics)


def test_routed_backend_routes_by_name_and_upstream_wins():
    local = FakeBackend()
    cloud = UpstreamBackend("cloud", "http://x/v1", "", {
        "fake-model": UpstreamConfig(base_url="http://x/v1"), "up": UpstreamConfig(base_url="http://x/v1")})
    routed = RoutedBackend(local, [cloud])
    assert routed.models["fake-model"].backend == "cloud" and routed.models["up"].backend == "cloud"
    assert routed.backend_for("up") is cloud and routed.backend_for("other") is local
    local.models = None
    assert routed.models is not None and not routed.local_known
    assert RoutedBackend(local, []).models is None
    assert asyncio.run(RoutedBackend(FakeBackend(), [cloud]).ready(["up"])) == (True, "ready")


def test_shadow_samples_by_share_and_drops_past_the_cap():
    from triton_embeddings.gateway.settings import ShadowConfig

    metrics = GatewayMetrics()
    draws = iter([0.05, 0.5])
    calls = []

    async def embed(info, texts):
        calls.append(texts)
        await asyncio.sleep(0.01)

    shadow = Shadow(lambda name: name, embed, metrics, max_in_flight=1, sample=lambda: next(draws))
    config = ShadowConfig(model="local", share=0.1)
    assert shadow.sampled(config)  # 0.05 < 0.1
    assert not shadow.sampled(config)  # 0.5 >= 0.1
    assert not shadow.sampled(None)

    async def two_at_once():
        await asyncio.gather(shadow.run("up", "local", ["a"]), shadow.run("up", "local", ["b"]))
    asyncio.run(two_at_once())
    assert calls == [["a"]]
    assert metrics.shadow_requests.labels("up", "local", "dropped")._value.get() == 1
    assert metrics.shadow_requests.labels("up", "local", "ok")._value.get() == 1


@pytest.mark.parametrize("make", [
    lambda: UpstreamBackend("cloud", "http://x/v1", "", {"m": UpstreamConfig(base_url="http://x/v1")}),
    lambda: RoutedBackend(FakeBackend(), []),
], ids=["upstream", "routed"])
def test_upstream_and_routed_backends_satisfy_the_protocol(make):
    import inspect

    from triton_embeddings.gateway.backends.base import Backend

    backend = make()
    assert isinstance(backend, Backend)
    for name in ("start", "close", "ready", "embed", "unknown_model_seen"):
        want, got = inspect.signature(getattr(Backend, name)), inspect.signature(getattr(type(backend), name))
        assert list(got.parameters) == list(want.parameters), name
        assert inspect.iscoroutinefunction(getattr(Backend, name)) == inspect.iscoroutinefunction(
            getattr(type(backend), name)), name
