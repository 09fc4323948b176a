"""The gateway's rooms: the Backend protocol, the registry, and responses rendered from protocol.py's types."""

from __future__ import annotations

import inspect
import json
import typing

import pytest
from pydantic import TypeAdapter

from tests.gw_helpers import FakeBackend
from triton_embeddings.gateway.backends.base import Backend
from triton_embeddings.gateway.backends.triton import TritonBackend
from triton_embeddings.gateway.http.protocol import EmbeddingResponse, ErrorResponse, ModelList, ModelWithPrompts

M = "fake-model"


def _protocol_methods() -> list[str]:
    return [n for n, v in vars(Backend).items() if inspect.isfunction(v) and not n.startswith("_")]


@pytest.mark.parametrize("impl", [FakeBackend, lambda: TritonBackend("127.0.0.1:1")], ids=["fake", "triton"])
def test_backends_satisfy_the_protocol(impl):
    backend = impl()
    assert isinstance(backend, Backend)
    for name in _protocol_methods():
        want, got = inspect.signature(getattr(Backend, name)), inspect.signature(getattr(type(backend), name))
        assert list(got.parameters) == list(want.parameters), name
        assert inspect.iscoroutinefunction(getattr(Backend, name)) == inspect.iscoroutinefunction(
            getattr(type(backend), name)
        ), name


def test_an_incomplete_backend_is_not_one():
    class NoEmbed:
        models = None

        async def start(self): ...

        async def close(self): ...

        async def ready(self, names): ...

        def unknown_model_seen(self): ...

    assert {"embed", "ready", "start", "close", "unknown_model_seen"} <= set(_protocol_methods())
    assert not isinstance(NoEmbed(), Backend)


def assert_shape(body, td) -> None:
    """`body` has exactly the keys of the TypedDict `td`, in its order, recursively, and validates as it."""
    TypeAdapter(td).validate_python(body, strict=True)
    hints = typing.get_type_hints(td)
    assert list(body) == list(hints), (td.__name__, list(body))
    for key, hint in hints.items():
        if typing.is_typeddict(hint):
            assert_shape(body[key], hint)
        elif typing.get_origin(hint) is list and typing.is_typeddict(typing.get_args(hint)[0]):
            for item in body[key]:
                assert_shape(item, typing.get_args(hint)[0])


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_body_is_the_protocol_type(make_client, encoding):
    r = make_client().post("/v1/embeddings", json={"model": M, "input": ["a b", "c"], "encoding_format": encoding})
    assert r.status_code == 200
    assert_shape(json.loads(r.content), EmbeddingResponse)


def test_models_bodies_are_the_protocol_types(make_client):
    c = make_client()
    assert_shape(c.get("/v1/models").json(), ModelList)
    assert_shape(c.get(f"/v1/models/{M}").json(), ModelWithPrompts)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/embeddings", {"model": "ghost", "input": "x"}),
        ("post", "/v1/embeddings", {"model": M, "input": []}),
        ("post", "/v1/embeddings", {"model": M}),
        ("get", "/v1/nothing", None),
        ("delete", "/v1/models", None),
    ],
)
def test_error_bodies_are_the_protocol_type(make_client, method, path, body):
    c = make_client()
    r = c.request(method, path, json=body)
    assert r.status_code >= 400
    assert_shape(json.loads(r.content), ErrorResponse)
    assert r.content.startswith(b'{"error":{"message":"')


def test_resolve_runs_once_per_embeddings_request(make_client):
    c = make_client()
    registry = c.app.state.registry
    calls = []
    resolve = registry.resolve
    registry.resolve = lambda name, kind=None: calls.append(name) or resolve(name, kind)
    assert c.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a", "b"]}).status_code == 200
    assert calls == ["text-embedding-3-small"]


def test_registry_resolves_names_and_aliases_without_the_service(make_client):
    backend = FakeBackend()
    registry = make_client(backend=backend, default_model=M, model_aliases={"mine": "default"}).app.state.registry
    assert registry.resolve("mine").name == M and registry.resolve(M).name == M
    assert [m["id"] for m in registry.list()["data"]] == [M, "mine"]
    before = backend.unknown_seen
    with pytest.raises(Exception, match="does not exist"):
        registry.resolve("ghost")
    assert backend.unknown_seen == before + 1  # an unknown name asks the backend to look again
