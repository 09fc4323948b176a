"""The process helpers the launcher, the benchmarks and the tests share, against real child processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from triton_embeddings.local.processes import NotReady, ProcessExited, free_port, stop_process, wait_http


def http_server(port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.parametrize("attempt", range(3))  # timing and processes: run it more than once
def test_wait_http_returns_once_the_server_answers_and_stop_ends_it(attempt, tmp_path):
    port = free_port()
    proc = http_server(port, "--directory", str(tmp_path))
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=30, proc=proc)
    finally:
        code = stop_process(proc, timeout=10)
    assert proc.poll() is not None and code is not None


def test_wait_http_reports_a_process_that_exits():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(ProcessExited) as exc:
        wait_http(f"http://127.0.0.1:{free_port()}/", timeout=30, proc=proc)
    assert exc.value.returncode == 3


def test_wait_http_gives_up_after_the_timeout():
    start = time.monotonic()
    with pytest.raises(NotReady, match="did not answer 200 within 1s"):
        wait_http(f"http://127.0.0.1:{free_port()}/", timeout=1)
    assert time.monotonic() - start < 5


def test_stop_process_kills_what_ignores_ctrl_c():
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline().strip() == b"up"
    start = time.monotonic()
    assert stop_process(proc, timeout=1) == -9
    assert time.monotonic() - start < 10
    proc.stdout.close()
