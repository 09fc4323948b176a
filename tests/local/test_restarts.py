"""The restart policy of embeddings-serve's children: Docker's backoff, a killed process restarted, a crash loop
backed off, the backoff reset once a child stayed up, a failed start tried again; a real process killed and
brought back on its port."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from tests.gw_helpers import free_port
from triton_embeddings.local.processes import http_ok, port_in_use
from triton_embeddings.local.restarts import Backoff, ChildFailed, HttpChild, Supervised


def test_backoff_doubles_from_100_ms_up_to_a_minute_like_docker():
    b = Backoff()
    delays = [b.delay(uptime_s=0.5) for _ in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == 60.0 and max(delays) == 60.0
    assert all(later >= earlier for earlier, later in zip(delays, delays[1:]))


def test_backoff_starts_over_after_a_child_stayed_up_10_s():
    b = Backoff()
    assert [b.delay(1.0), b.delay(1.0), b.delay(1.0)] == [0.1, 0.2, 0.4]
    assert b.delay(10.0) == 0.1  # it ran 10 s: a fresh failure, not the next of a loop
    assert b.delay(9.9) == 0.2


class FakeChild:
    """A child whose runs last `uptimes` seconds each (then 'exits'); starts listed in `fail` raise."""

    name = "fake"

    def __init__(self, uptimes: list[float], fail: tuple[int, ...] = (), start_s: float = 0.0):
        self.uptimes, self.fail, self.start_s = list(uptimes), fail, start_s
        self.starts: list[float] = []
        self.until = 0.0
        self.stops = self.kills = 0
        self.killed = threading.Event()

    pid = property(lambda self: len(self.starts))
    returncode = property(lambda self: None if self.running() else -9)

    def start(self) -> None:
        self.starts.append(time.monotonic())
        if self.start_s and self.killed.wait(self.start_s):
            raise ChildFailed("killed while starting")
        if len(self.starts) - 1 in self.fail:
            raise ChildFailed("could not start")
        self.until = time.monotonic() + (self.uptimes.pop(0) if self.uptimes else 3600)

    def running(self) -> bool:
        return time.monotonic() < self.until

    def kill(self) -> None:
        self.kills += 1
        self.killed.set()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.stops += 1


def supervise(child, backoff: Backoff, wait_for_starts: int, timeout: float = 30.0) -> tuple[Supervised, list[str]]:
    logs: list[str] = []
    supervised = Supervised(child, backoff, log=logs.append, poll_s=0.01).start()
    deadline = time.monotonic() + timeout
    while len(child.starts) < wait_for_starts:
        assert time.monotonic() < deadline, logs
        time.sleep(0.01)
    supervised.halt()
    return supervised, logs


def delays_logged(logs: list[str]) -> list[float]:
    return [float(line.split("restarting in ")[1].split()[0]) for line in logs if "restarting in" in line]


def test_a_child_that_exits_is_restarted_and_cleaned_up_after():
    child = FakeChild([0.05])
    supervised, logs = supervise(child, Backoff(initial_s=0.05), wait_for_starts=2)
    assert supervised.restarts == 1 and child.stops == 1  # what the dead process left, cleaned up once
    assert "fake (pid 1) exited with code -9" in logs[0] and "restarted (pid 2)" in logs[1]
    assert child.starts[1] - child.starts[0] >= 0.1  # it ran 0.05 s, then the 0.05 s delay


def test_a_crash_loop_backs_off_ever_later():
    child = FakeChild([0.0] * 5)
    _, logs = supervise(child, Backoff(initial_s=0.02, max_s=0.1, reset_after_s=5), wait_for_starts=6)
    assert delays_logged(logs) == [0.02, 0.04, 0.08, 0.1, 0.1]
    gaps = [b - a for a, b in zip(child.starts, child.starts[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, delays_logged(logs)))


def test_the_backoff_starts_over_once_the_child_stayed_up():
    child = FakeChild([0.0, 0.0, 0.0, 0.6, 0.0])
    _, logs = supervise(child, Backoff(initial_s=0.02, max_s=1, reset_after_s=0.5), wait_for_starts=6)
    assert delays_logged(logs) == [0.02, 0.04, 0.08, 0.02, 0.04]


def test_a_failed_start_is_backed_off_and_tried_again():
    child = FakeChild([0.0, 0.0], fail=(2, 3))  # the first restart runs and exits; the next two starts fail
    supervised, logs = supervise(child, Backoff(initial_s=0.02, reset_after_s=5), wait_for_starts=5)
    assert supervised.failed_starts == 2 and supervised.restarts == 2
    assert sum("failed to start: could not start" in line for line in logs) == 2
    gaps = [b - a for a, b in zip(child.starts, child.starts[1:])]
    assert gaps[2] >= 0.08 and gaps[3] >= 0.16  # after each failure: the next, doubled delay


def test_the_first_start_failing_is_the_callers_error():
    with pytest.raises(ChildFailed):
        Supervised(FakeChild([], fail=(0,))).start()


def test_halt_cuts_a_restart_in_progress():
    child = FakeChild([0.0], start_s=0.0)
    supervised = Supervised(child, Backoff(initial_s=0.01), log=lambda _: None, poll_s=0.01).start()
    child.start_s = 60.0  # the restart hangs until killed
    while len(child.starts) < 2:
        time.sleep(0.01)
    t0 = time.monotonic()
    supervised.halt()
    assert time.monotonic() - t0 < 5 and child.kills >= 1 and supervised.restarts == 0


def http_child(folder) -> HttpChild:
    """A real HTTP server (python -m http.server) whose /health is a file."""
    (folder / "health").write_text("ok")
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    return HttpChild("http", command, None, f"http://127.0.0.1:{port}/health", stop_timeout_s=10)


@pytest.mark.parametrize("attempt", range(2))  # processes and timing: more than once
def test_a_killed_process_serves_again_on_its_port_within_5_s(attempt, tmp_path):
    child = http_child(tmp_path)
    supervised = Supervised(child, log=lambda _: None).start()
    try:
        first = child.pid
        assert os.getpgid(first) == first  # its own process group: Ctrl-C at a terminal reaches serve alone
        os.kill(first, signal.SIGKILL)
        t0 = time.monotonic()
        while not (supervised.restarts == 1 and http_ok(child.health_url, 0.5)):
            assert time.monotonic() - t0 < 5, "not serving again within 5 s"
            time.sleep(0.02)
        assert child.pid != first
    finally:
        supervised.halt()
        child.stop(signal.SIGINT)
    assert child.returncode is not None and not port_in_use(int(child.health_url.split(":")[2].split("/")[0]))


def test_a_process_that_cannot_start_is_reported(tmp_path):
    child = HttpChild("broken", [sys.executable, "-c", "raise SystemExit(3)"], None,
                      f"http://127.0.0.1:{free_port()}/health")
    with pytest.raises(ChildFailed, match="broken: process exited with 3"):
        child.start()
    assert child.process is None and not child.running()
