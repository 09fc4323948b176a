"""The stub supervisor: a crashed Python-backend stub's model is reloaded, and Triton still stops promptly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEFAULT_MODEL
from triton_embeddings.local.launcher import TritonServer
from triton_embeddings.local.supervisor import StubSupervisor, live_stubs

STEPS = ("tokenizer", "encoder", "pooler")


# ---- the process table, as /proc shows it (unit) ------------------------------------------------------


def _proc(root: Path, pid: int, ppid: int, argv: list[str], state: str = "S") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (triton_python_b) {state} {ppid} 1 1 0 -1\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def _stub_argv(model: str, instance: str) -> list[str]:
    return ["/b/triton_python_backend_stub", f"/repo/{model}/1/model.py", "shm", "1048576", "1048576", "100",
            "/b", "336", instance, "DEFAULT"]


def test_live_stubs_reads_model_and_instance_and_skips_the_rest(tmp_path):
    _proc(tmp_path, 201, 100, _stub_argv("m_encoder", "m_encoder_0_0"))
    _proc(tmp_path, 202, 100, _stub_argv("m_pooler", "m_pooler_0_0"), state="Z")  # crashed, not yet reaped
    _proc(tmp_path, 203, 100, _stub_argv("m_tokenizer", "m_tokenizer"))  # config auto-complete while loading
    _proc(tmp_path, 204, 999, _stub_argv("m_other", "m_other_0_0"))  # another server's stub
    _proc(tmp_path, 205, 100, ["/usr/bin/python3", "x.py"])
    (tmp_path / "self").mkdir()
    stubs = live_stubs(100, tmp_path)
    assert list(stubs) == ["m_encoder_0_0"]
    assert (stubs["m_encoder_0_0"].pid, stubs["m_encoder_0_0"].model) == (201, "m_encoder")


class FakeControl:
    def __init__(self, ready: set[str]):
        self.ready = ready
        self.reloads: list[str] = []
        self.fail = False

    def ready_models(self) -> set[str]:
        return set(self.ready)

    def reload(self, model: str) -> None:
        self.reloads.append(model)
        if self.fail:
            raise urllib.error.URLError("load failed")


def test_check_reloads_only_ready_models_whose_stub_vanished(tmp_path, monkeypatch):
    _proc(tmp_path, 201, 100, _stub_argv("m_encoder", "m_encoder_0_0"))
    _proc(tmp_path, 202, 100, _stub_argv("m_pooler", "m_pooler_0_0"))
    control = FakeControl({"m_encoder", "m"})  # the pooler is being unloaded on purpose
    sup = StubSupervisor(100, control, log=lambda _: None, proc=tmp_path)
    sup.start_thread(interval_s=3600)[1].set()  # learns the stubs, never checks on its own
    assert sup.check() == [] and control.reloads == []
    for pid in (201, 202):
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (t) Z 100 1 1 0 -1\n")
    assert sup.check() == ["m_encoder"] and control.reloads == ["m_encoder"]
    assert sup.check() == [], "a stub is reported once"

    _proc(tmp_path, 301, 100, _stub_argv("m_encoder", "m_encoder_0_0"))
    sup.check()
    (tmp_path / "301" / "stat").write_text("301 (t) Z 100 1 1 0 -1\n")
    control.fail = True
    monkeypatch.setattr("triton_embeddings.local.supervisor.RETRY_FAILED_LOAD_S", 0.0)
    assert sup.check() == ["m_encoder"]
    control.fail = False
    assert sup.check() == ["m_encoder"], "a failed reload is tried again"
    assert sup.check() == [] and sup.restarts["m_encoder"] == 3


def test_entry_point_needs_explicit_mode_and_finds_the_http_port(capsys):
    from triton_embeddings.local.supervisor import _http_url, main

    assert main(["--", "tritonserver", "--model-repository=/models", "--model-control-mode=none"]) == 2
    assert "--model-control-mode=explicit" in capsys.readouterr().err
    assert _http_url(["tritonserver", "--http-port", "9000", "--http-address=0.0.0.0"]) == "http://127.0.0.1:9000"
    assert _http_url(["tritonserver", "--http-address=10.0.0.1", "--http-port=81"]) == "http://10.0.0.1:81"
    assert _http_url(["tritonserver"]) == "http://127.0.0.1:8000"


# ---- the real Triton ----------------------------------------------------------------------------------


def _infer(grpc_url: str, text: str) -> str:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    try:
        client.infer(DEFAULT_MODEL, [inp])
        return "ok"
    except grpcclient.InferenceServerException as e:
        return e.message() or str(e.status())
    finally:
        client.close()


def _kill_stub(triton_pid: int, step: str) -> None:
    (stub,) = [s for s in live_stubs(triton_pid).values() if s.model == f"{DEFAULT_MODEL}_{step}"]
    os.kill(stub.pid, signal.SIGKILL)


def _until_ok(grpc_url: str, timeout: float = 30.0) -> tuple[float, list[str]]:
    t0, errors = time.monotonic(), []
    while (r := _infer(grpc_url, f"probe {time.monotonic()}")) != "ok":
        errors.append(r)
        assert time.monotonic() - t0 < timeout, f"no recovery within {timeout:.0f} s: {errors[-3:]}"
        time.sleep(0.1)
    return time.monotonic() - t0, errors


@pytest.mark.slow
def test_launcher_reloads_each_crashed_step_and_stops_promptly(model_repository, tmp_path):
    server = TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log")
    with server:
        for step in STEPS:
            _kill_stub(server.process.pid, step)
            elapsed, errors = _until_ok(server.grpc_url)
            assert any("is not healthy" in e or "no available versions" in e for e in errors), errors
            assert elapsed < 30
            assert server.supervisor.restarts[f"{DEFAULT_MODEL}_{step}"] == 1
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10, "stopping after stub crashes took too long"


@pytest.mark.slow
def test_launcher_stops_promptly_after_a_request_failed_on_a_dead_stub(model_repository, tmp_path):
    """The Python backend never releases a request that failed on a dead stub, and Triton would wait out
    its 30 s exit timeout for it ("Found 1 live models"); the launcher kills it once no stub runs."""
    server = TritonServer.on_free_ports(model_repository, log_file=tmp_path / "triton.log", supervise=False)
    with server:
        _kill_stub(server.process.pid, "encoder")
        assert "is not healthy" in _infer(server.grpc_url, "fails on the dead stub")
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10, "stopping after a stub crash took too long"


@pytest.mark.slow
def test_model_repository_api_needs_the_key(triton):
    url = f"{triton.http_url}/v2/repository/index"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=5)
    assert denied.value.code == 403
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=triton.control_headers())
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200 and DEFAULT_MODEL.encode() in resp.read()


@pytest.mark.slow
def test_container_entry_point_supervises_and_stops_on_sigterm(model_repository, tmp_path):
    """`python -m triton_embeddings.local.supervisor -- tritonserver ...`, as the production image runs it."""
    server = TritonServer.on_free_ports(model_repository, supervise=False)
    command = [a for a in server.command() if "restricted" not in a]  # the entry point adds its own key
    log = open(tmp_path / "supervisor.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "triton_embeddings.local.supervisor", "--", *command],
                            env=server.environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        server.process = proc  # reuse the launcher's readiness wait on the same ports
        server.wait_ready()
        (triton_pid,) = _children(proc.pid)
        _kill_stub(triton_pid, "encoder")
        assert _until_ok(server.grpc_url)[0] < 30
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 15
        text = (tmp_path / "supervisor.log").read_text(errors="replace")
        assert f"reloading {DEFAULT_MODEL}_encoder" in text and "reloaded in" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out
