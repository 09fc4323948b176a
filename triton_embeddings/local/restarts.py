"""Keep child processes running: a child that exits is started again with Docker's restart backoff.

`embeddings-serve` runs Triton and each gateway under a `Supervised`, as compose's `restart:` policy and
Kubernetes restart containers: the first restart 100 ms after the exit, each next one twice as late, at most
60 s; a child that stayed up 10 s starts again from 100 ms (`Backoff`). A start that fails counts as an exit
after 0 s up, so a child that cannot start is tried ever later, never in a tight loop.

The children (`TritonChild`, `GatewayChild`) keep the process tree plain: serve -> tritonserver (-> its
Python-backend stubs, in tritonserver's process group) and serve -> each gateway process (its own process
group: Ctrl-C reaches serve alone, which passes it on once, so the gateways drain as they do under SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from triton_embeddings.local.launcher import TritonServer
from triton_embeddings.local.processes import NotReady, ProcessExited, port_in_use, stop_process, wait_http


class ChildFailed(RuntimeError):
    """A child exited, or did not answer in time, while it started."""


@dataclass
class Backoff:
    """Docker's restart delay: `initial_s` after the first exit, doubling up to `max_s`; a child that ran
    `reset_after_s` or longer before it exited is restarted after `initial_s` again."""

    initial_s: float = 0.1
    max_s: float = 60.0
    reset_after_s: float = 10.0
    _next: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.initial_s

    def delay(self, uptime_s: float) -> float:
        """The wait before the next start of a child that exited after `uptime_s` seconds up."""
        if uptime_s >= self.reset_after_s:
            self._next = self.initial_s
        delay, self._next = self._next, min(self._next * 2, self.max_s)
        return delay


class Child(Protocol):
    """One process a `Supervised` keeps running."""

    name: str

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    def start(self) -> None:
        """Start the process; return once it serves, raise if it cannot (leaving nothing running)."""

    def running(self) -> bool:
        """Whether the process started last still runs."""

    def kill(self) -> None:
        """SIGKILL what `start` started; called from another thread, it makes a start in progress fail."""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process with `sig` (killed past a timeout) and clean up what it left; also after it died."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Supervised:
    """One child: started by `start()`, restarted from a thread whenever it exits, until `halt()`."""

    def __init__(self, child: Child, backoff: Backoff | None = None, log: Callable[[str], None] = _log,
                 poll_s: float = 0.1):
        self.child = child
        self.backoff = backoff or Backoff()
        self.log = log
        self.poll_s = poll_s
        self.restarts = 0  # starts after the first that served
        self.failed_starts = 0
        self.started_at = 0.0
        self._halt = threading.Event()
        self._starting = False
        self._thread: threading.Thread | None = None

    def start(self) -> Supervised:
        """The first start, here (its failure is the caller's); then the watch, in a daemon thread."""
        self.child.start()
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name=f"restarts-{self.child.name}", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._halt.is_set():
            if self.child.running():
                self._halt.wait(self.poll_s)
                continue
            uptime, pid, code = time.monotonic() - self.started_at, self.child.pid, self.child.returncode
            self.child.stop()  # what the dead process left behind (Triton: its stubs, its ports)
            delay = self.backoff.delay(uptime)
            if pid is not None:
                self.log(f"serve: {self.child.name} (pid {pid}) exited with code {code} after {uptime:.1f} s; "
                         f"restarting in {delay:g} s")
            if self._halt.wait(delay):
                return
            self._restart()

    def _restart(self) -> None:
        self._starting = True
        try:
            self.child.start()
        except Exception as e:  # noqa: BLE001 - a failed start is an exit after 0 s: backed off, tried again
            self.failed_starts += 1
            if not self._halt.is_set():
                self.log(f"serve: {self.child.name} failed to start: {e}")
        else:
            self.restarts += 1
            self.log(f"serve: {self.child.name} restarted (pid {self.child.pid})")
        finally:
            self._starting = False
            self.started_at = time.monotonic()

    def halt(self) -> None:
        """Restart no more; a restart in progress is cut (its process killed). The child is left as it is."""
        self._halt.set()
        while self._thread is not None and self._thread.is_alive():
            if self._starting:
                self.child.kill()
            self._thread.join(0.2)


class _LastProcess:
    """The pid, exit code and liveness of the process a child started last (`process`)."""

    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class HttpChild(_LastProcess):
    """A process that serves HTTP: started when `health_url` answers 200; its own process group."""

    name: str
    command: list[str]
    env: dict[str, str] | None
    health_url: str
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 60.0
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> None:
        # A process group of its own: Ctrl-C at a terminal reaches serve alone, which passes it on once (a
        # second SIGINT would cut the gateway's drain).
        self.process = subprocess.Popen(self.command, env=self.env, process_group=0)
        try:
            wait_http(self.health_url, self.startup_timeout_s, self.process, interval=0.05)
        except BaseException as e:
            self.kill()
            self.stop()
            self.process = None
            if isinstance(e, (ProcessExited, NotReady)):
                raise ChildFailed(f"{self.name}: {e}") from None
            raise

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, self.stop_timeout_s, sig)


def gateway_child(host: str, port: int, env: dict[str, str]) -> HttpChild:
    """`python -m triton_embeddings.gateway` on `port`, configured by `env` (EMBEDDINGS_* variables); its stop
    waits past EMBEDDINGS_SHUTDOWN_DELAY_S + EMBEDDINGS_DRAIN_TIMEOUT_S (5 + 10 s by default)."""
    loopback = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return HttpChild(f"gateway :{port}", [sys.executable, "-m", "triton_embeddings.gateway"], env,
                     f"http://{loopback}:{port}/health")


@dataclass
class TritonChild(_LastProcess):
    """The embedded Triton (`TritonServer`, its stub watchdog included), restarted on the same ports."""

    server: TritonServer
    ports_timeout_s: float = 10.0
    name: str = "tritonserver"
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)  # once it served

    def start(self) -> None:
        self.process = None
        self.server.start()
        self.process = self.server.process

    def kill(self) -> None:
        process = self.server.process
        with contextlib.suppress(ProcessLookupError, AttributeError):
            os.killpg(process.pid, signal.SIGKILL)  # its group: tritonserver and its stubs

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Triton's own stop (SIGINT, then its stubs' process group killed); then wait for its ports to be free."""
        self.server.stop()
        ports = (self.server.http_port, self.server.grpc_port, self.server.metrics_port)
        deadline = time.monotonic() + self.ports_timeout_s
        while any(port_in_use(p, self.server.host) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.05)
