"""The embedded Triton launcher explains its failures and stops cleanly."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import DEFAULT_MODEL
from triton_embeddings.local.launcher import TritonLaunchError, TritonServer, free_port


def _ports():
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def test_missing_repository(tmp_path):
    with pytest.raises(TritonLaunchError, match="does not exist"):
        TritonServer(tmp_path / "nope", **_ports()).start()


def test_empty_repository(tmp_path):
    with pytest.raises(TritonLaunchError, match="holds no models"):
        TritonServer(tmp_path, **_ports()).start()


def test_port_in_use(model_repository):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TritonLaunchError, match=f"gRPC port {port} .* already in use"):
            TritonServer(model_repository, http_port=free_port(), grpc_port=port, metrics_port=free_port()).start()


def test_model_that_fails_to_load(model_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    (repo / f"{DEFAULT_MODEL}_encoder" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(TritonLaunchError, match=f"(?s)exited with code.*{DEFAULT_MODEL}_encoder"):
        TritonServer(repo, startup_timeout=120, **_ports()).start()


def test_cli_serves_and_stops_on_sigterm(model_repository):
    ports = _ports()
    proc = subprocess.Popen(
        [sys.executable, "-m", "triton_embeddings.local.launcher", "--model-repository", str(model_repository),
         "--http-port", str(ports["http_port"]), "--grpc-port", str(ports["grpc_port"]),
         "--metrics-port", str(ports["metrics_port"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Triton ready" in line for line in seen):
            seen.append(proc.stdout.readline())
        assert any("Triton ready" in line for line in seen), "".join(seen[-20:])
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics_port']}/metrics", timeout=5) as resp:
            assert b"nv_inference_count" in resp.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    with socket.socket() as probe:  # the server is gone, its port free again
        probe.bind(("127.0.0.1", ports["grpc_port"]))


def test_cli_defaults_are_the_servers():
    from triton_embeddings.local.launcher import build_parser

    args = build_parser().parse_args([])
    server = TritonServer(args.model_repository)
    assert args.startup_timeout == server.startup_timeout == 180
    assert (args.http_port, args.grpc_port, args.metrics_port, args.host) == (
        server.http_port, server.grpc_port, server.metrics_port, server.host)
