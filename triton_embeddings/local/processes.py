"""Child processes and loopback ports: start-up waits, clean stops, free ports.

Standard library only; the launcher, the benchmarks and the tests share these.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request


class ProcessExited(RuntimeError):
    """The process ended while we waited for it to answer."""

    def __init__(self, returncode: int | None, message: str):
        super().__init__(message)
        self.returncode = returncode


class NotReady(RuntimeError):
    """No 200 within the time allowed."""


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, interval: float = 0.1) -> None:
    """Return once `url` answers 200; raise ProcessExited if `proc` ends first, NotReady after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(proc.returncode, f"process exited with {proc.returncode} before {url} answered")
        if http_ok(url):
            return
        time.sleep(interval)
    raise NotReady(f"{url} did not answer 200 within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen, timeout: float = 20.0, sig: int = signal.SIGINT) -> int:
    """Send `sig` (Ctrl-C by default), wait up to `timeout` s, then kill its process group; the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if os.getpgid(proc.pid) == proc.pid:  # started with start_new_session: take its children too
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()
    return proc.returncode


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """An unused loopback port (for tests and ad-hoc servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
